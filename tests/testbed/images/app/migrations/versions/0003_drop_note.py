"""v3: the note is dropped (v2's code reads it: rolling v2 back over this schema breaks it)."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    op.drop_column("records", "note")


def downgrade():
    # The column comes back empty: what v3 dropped is gone (a restore point has it).
    op.add_column("records", sa.Column("note", sa.Text, nullable=True))
