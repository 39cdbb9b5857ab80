"""v2: records get a nullable note (v1's code ignores it, and its inserts still work)."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.add_column("records", sa.Column("note", sa.Text, nullable=True))


def downgrade():
    op.drop_column("records", "note")
