# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # The `databases` declaration (plugins/module_utils/_database.py's DATABASE_OPTIONS), shared by
    # compose_release (schemas recorded at each deploy, restore points), compose_schema (the verdict)
    # and database_backup (online dumps).
    DOCUMENTATION = r"""
options:
  databases:
    description:
      - The project's databases. Each is reached in its compose service's own running container,
        with the engine's own client, so client and server versions match.
      - For the schema, V(postgres) dumps with C(pg_dump --schema-only --no-owner --no-privileges) (and a fixed
        C(--restrict-key) where the client has it); V(mariadb) and V(mysql) with C(mariadb-dump) or
        C(mysqldump) C(--no-data --skip-dump-date --skip-comments), AUTO_INCREMENT counters stripped;
        V(command) runs O(databases[].command), whose output is the schema (compared as text only, the
        random C(restrict) lines of a plain C(pg_dump) aside).
      - For the data (M(stackops.rollback.database_backup), restore points), V(postgres) dumps with
        C(pg_dump --format=plain), owners and grants kept, and loads with C(psql); V(mariadb) and
        V(mysql) with C(mariadb-dump) or C(mysqldump) C(--single-transaction) and load with C(mariadb)
        or C(mysql). V(command) has no online dump.
      - Migration tables are found by name and columns and their rows recorded - Alembic, Django,
        Rails / dbmate / Ecto and golang-migrate C(schema_migrations), Flyway, Liquibase, Prisma, Knex, goose.
    type: list
    elements: dict
    default: []
    suboptions:
      service:
        description:
          - The compose service the database runs in.
        type: str
        required: true
      engine:
        description:
          - The database engine, which decides the client.
        type: str
        required: true
        choices: [postgres, mariadb, mysql, command]
      database:
        description:
          - The database's name. Required unless O(databases[].engine=command).
        type: str
      user:
        description:
          - The user the client logs in as. Defaults to C(postgres) for PostgreSQL, C(root) for MariaDB and MySQL.
        type: str
      password:
        description:
          - The user's password, given to the client in its environment (C(PGPASSWORD), C(MYSQL_PWD)),
            never on a command line and never in output. With a password, PostgreSQL is reached over
            127.0.0.1 inside the container; without one, through its socket.
        type: str
      command:
        description:
          - For O(databases[].engine=command), the argv run in the service's container that prints the schema.
        type: list
        elements: str
"""
