"""The test app's migrations (Alembic, from Debian's packages), as many compose apps run them.

    python3 /opt/app/migrate.py upgrade            # to this release's head (what the app runs at start)
    python3 /opt/app/migrate.py downgrade REVISION # the down-migrations live in the newer image
    python3 /opt/app/migrate.py current

Each image holds only the migrations of its own version: v1 knows 0001, v2 0001-0002, v3 0001-0003.
"""

import os
import sys

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

HERE = os.path.dirname(os.path.abspath(__file__))


def config(url):
    cfg = Config()
    cfg.set_main_option("script_location", os.path.join(HERE, "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def current_revisions(url):
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def upgrade(url):
    """Upgrade to this release's head, unless the database is at a revision this release does not know.

    A database migrated by a newer release is left as it is (and said so): the code decides whether it
    can run on it, the way a careful app does instead of refusing to start.
    """
    cfg = config(url)
    known = {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}
    unknown = sorted(current_revisions(url) - known)
    if unknown:
        print("database schema at revision %s, newer than this release knows: not migrating" % ", ".join(unknown))
        return
    command.upgrade(cfg, "head")


def main(argv):
    url = os.environ["DATABASE_URL"]
    if argv[:1] == ["upgrade"]:
        upgrade(url)
    elif argv[:1] == ["downgrade"] and len(argv) == 2:
        command.downgrade(config(url), argv[1])
    elif argv[:1] == ["current"]:
        print(" ".join(sorted(current_revisions(url))) or "(none)")
    else:
        sys.exit("usage: migrate.py upgrade | downgrade REVISION | current")


if __name__ == "__main__":
    main(sys.argv[1:])
