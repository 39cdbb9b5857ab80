#!/usr/bin/python
# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: database_backup
short_description: Online, verified dumps of a compose project's databases, and their restore
version_added: 1.1.0
description:
  - Backs up each declared database with the engine's own consistent online dump while it serves
    (C(pg_dump --format=plain), one repeatable-read snapshot; C(mariadb-dump --single-transaction)),
    restores a database from such a dump, or verifies a dump against its manifest. The database is
    never stopped.
  - "Backup: the dump streams from the database's container through a row counter into a temporary
    file (zstd or gzip), which is fsynced, read back and checked, then renamed into place beside its
    JSON manifest: the rows of every table as the dump holds them, the schema's sha256 and migration
    state, the engine and image. A dump that fails or stops before its last line leaves no file.
    Archives and manifests are 0600."
  - "Restore: the archive's sha256 is checked and the dump read through, its rows counted again,
    before the database is touched; a safety dump of the current data is written; the database is
    emptied and the dump loaded. PostgreSQL loads in one transaction that checks every table's row
    count before it commits - on any failure nothing is committed. MariaDB and MySQL count each
    table under the write lock of its load; on any failure the safety dump is loaded back."
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.docker
  - stackops.rollback.ledger
  - stackops.rollback.ledger.lease
  - stackops.rollback.databases
attributes:
  check_mode:
    support: full
    details: Checks the declarations, the containers and (restore) the archive; writes and loads nothing.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - O(state=backup) always writes new dumps (a backup is a point in time), so it always reports a change.
      - O(state=restore) always loads the dump it is given (equal row counts do not prove equal data).
      - O(state=verify) never changes anything.
options:
  project:
    description:
      - The compose project whose services run the databases.
      - Required with O(state=backup) and O(state=restore).
    type: str
  state:
    description:
      - V(backup) dumps every database of O(databases) into O(dest); V(restore) loads O(archive) into
        the database its manifest names; V(verify) checks O(archive) against its manifest.
    type: str
    choices: [backup, restore, verify]
    default: backup
  dest:
    description:
      - Directory for the dumps, with O(state=backup). Created (0700) when missing.
    type: path
  archive:
    description:
      - The dump, with O(state=restore) and O(state=verify). Its manifest is C(<archive>.manifest.json).
    type: path
  compression:
    description:
      - V(zstd) (the default where the C(zstd) binary exists), V(gzip), or V(none).
    type: str
    choices: [zstd, gzip, none]
  keep:
    description:
      - After a backup, keep this many dumps of each database in O(dest) and delete older ones. Only
        dumps with a manifest written by this collection are counted and deleted; V(0) keeps all.
    type: int
    default: 0
  safety_dir:
    description:
      - Where O(state=restore) writes the safety dump of the data it replaces. Defaults to the
        directory of O(archive).
    type: path
requirements:
  - Docker SDK for Python on the managed host
  - the database's own client in its container - C(pg_dump) and C(psql); C(mariadb-dump) and C(mariadb);
    or C(mysqldump) and C(mysql)
  - the C(zstd) binary for zstd compression (optional)
"""

EXAMPLES = r"""
- name: Dump the shop's database while it serves, keeping the last 7 dumps
  stackops.rollback.database_backup:
    project: shop
    databases:
      - service: db
        engine: postgres
        database: shop
    dest: /var/backups/shop
    keep: 7
  register: shop_dump

- name: Check a dump against its manifest
  stackops.rollback.database_backup:
    archive: "{{ shop_dump.backups[0].archive }}"
    state: verify

- name: Restore it (a safety dump of the current data is written first)
  stackops.rollback.database_backup:
    project: shop
    databases:
      - service: db
        engine: postgres
        database: shop
    archive: "{{ shop_dump.backups[0].archive }}"
    state: restore
"""

RETURN = r"""
backups:
  description:
    - One result per database, with O(state=backup) - database, archive, manifest, sha256, size, bytes,
      rows, duration, pruned.
  returned: state=backup
  type: list
  elements: dict
database:
  description: The database an archive holds, as service/database.
  returned: state=restore or state=verify
  type: str
archive:
  description: Path of the dump restored or verified.
  returned: state=restore or state=verify
  type: str
sha256:
  description: sha256 of the archive file.
  returned: state=restore or state=verify
  type: str
rows:
  description: Rows per table in the dump.
  returned: state=restore or state=verify
  type: dict
rows_before:
  description: Rows per table in the database before the restore.
  returned: state=restore
  type: dict
rows_after:
  description: Rows per table after the restore, as checked against the dump.
  returned: state=restore and changed
  type: dict
safety_archive:
  description: The safety dump of the data a restore replaced.
  returned: state=restore and changed
  type: str
stopped_containers:
  description: Always empty - the database serves throughout.
  returned: state=backup or state=restore
  type: list
  elements: str
duration:
  description: Seconds the operation took.
  returned: success
  type: float
"""

from ansible_collections.stackops.rollback.plugins.module_utils._archive import ArchiveError
from ansible_collections.stackops.rollback.plugins.module_utils._database import DATABASES_ARG, DatabaseError
from ansible_collections.stackops.rollback.plugins.module_utils._docker import EngineError, docker_module
from ansible_collections.stackops.rollback.plugins.module_utils._dump import DatabaseDumps
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import LEASE_ARGS, run_keeping_lease


def main():
    argument_spec = dict(
        project=dict(type="str"),
        databases=DATABASES_ARG,
        state=dict(type="str", choices=["backup", "restore", "verify"], default="backup"),
        dest=dict(type="path"),
        archive=dict(type="path"),
        compression=dict(type="str", choices=["zstd", "gzip", "none"]),
        keep=dict(type="int", default=0),
        safety_dir=dict(type="path"),
    )
    argument_spec.update(LEASE_ARGS)
    module, engine = docker_module(
        argument_spec,
        required_if=[
            ("state", "backup", ("project", "dest")),
            ("state", "restore", ("project", "archive")),
            ("state", "verify", ("archive",)),
        ],
    )
    p = module.params
    try:
        result = run_keeping_lease(module, DatabaseDumps(module, engine, p["project"], p["databases"]).run)
    except (ArchiveError, DatabaseError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(
            msg="%s (%s): no partial dump was left; the database was not stopped or changed"
            % (exc.strerror or exc, exc.filename or p.get("dest"))
        )
    except EngineError as exc:
        module.fail_json(msg="Docker engine error: %s; the database was not stopped or changed" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
