#!/usr/bin/python
# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_schema
short_description: Tell whether a rollback target's code can run on the database schema the project has now
version_added: 1.1.0
description:
  - Dumps the live schema of each declared database (O(databases)) and compares it with the schema
    M(stackops.rollback.compose_release) recorded when the target release was deployed. Every
    difference is classified, and the verdict is the worst of them.
  - V(unchanged) - the same schema and the same migration state.
  - V(compatible) - only additions the target's code ignores and that accept its writes - new
    tables, new nullable or defaulted columns, new non-unique indexes, a relaxed NOT NULL.
  - V(incompatible) - something the target has is gone, renamed or retyped; a new NOT NULL column
    without a default; a new unique, check or foreign-key constraint; a migration table that says
    a migration is half-applied (C(dirty), C(success = false)); migrations that ran after the
    target's and left the schema unchanged (data migrations, possibly one-way).
  - V(unknown) - the target was recorded without a schema (before databases were declared), or
    the engine is V(command) and its output changed.
  - Also returns the deploy notes of every release the rollback crosses and the target's restore point.
  - With O(state=downgraded), runs the newer release's down-migration command in the current
    release's container, then dumps again; the live schema must then equal the target's, or the
    module fails saying whether the schema changed.
  - With O(state=restored), puts every volume of the target's restore point back (each archive
    verified before any volume is touched, a safety copy of the current data taken first), and
    counts per table the rows the restore takes away; they stay in the safety archives.
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.compose_project
  - stackops.rollback.databases
  - stackops.rollback.ledger
  - stackops.rollback.ledger.lease
  - stackops.rollback.docker
attributes:
  check_mode:
    support: full
    details: >-
      O(state=checked) only reads; O(state=downgraded) reports the command it would run,
      O(state=restored) the volumes it would restore.
  diff_mode:
    support: full
    details: Shows the target's recorded schema against the live one.
  idempotent:
    support: full
    details: >-
      O(state=checked) only reads; O(state=downgraded) does nothing once the schema is the target's;
      O(state=restored) leaves volumes that already hold the restore point's data alone.
options:
  project_src:
    description:
      - Directory of the compose project.
    type: path
    required: true
  databases:
    description:
      - The databases to judge, as declared for M(stackops.rollback.compose_release). At least one is needed.
  target:
    description:
      - The rollback target - V(previous), a release id, a version label as recorded at deploy, or a git ref.
    type: str
    default: previous
  state:
    description:
      - V(checked) gives the verdict and changes nothing.
      - V(downgraded) runs O(downgrade) when the verdict is not V(unchanged) and requires the live
        schema to equal the target's afterwards.
      - V(restored) restores the declared databases' volumes from the target's restore point.
    type: str
    choices: [checked, downgraded, restored]
    default: checked
  downgrade:
    description:
      - The down-migration, for O(state=downgraded). It runs in the container of the B(current)
        release, which holds the down-migrations the target's image does not have.
    type: dict
    suboptions:
      service:
        description: The compose service whose container runs the command (the application, usually).
        type: str
        required: true
      command:
        description:
          - The argv. C({version}) is replaced by the newest migration version recorded with the
            target (for example its Alembic revision), C({versions}) by all of them, comma-separated.
        type: list
        elements: str
        required: true
  safety_dir:
    description:
      - For O(state=restored), where the safety copies of the current data are written.
      - Defaults to the restore point's directory.
    type: path
  count_rows:
    description:
      - Also count the rows of every table (C(rows) of RV(databases)), for a report of what a restore takes away.
    type: bool
    default: false
seealso:
  - module: stackops.rollback.compose_release
requirements:
  - The database's own client in its container - C(pg_dump) and C(psql); C(mariadb-dump) and C(mariadb);
    or C(mysqldump) and C(mysql)
"""

EXAMPLES = r"""
- name: Can the previous release run on today's schema?
  stackops.rollback.compose_schema:
    project_src: /srv/shop
    databases:
      - service: db
        engine: postgres
        database: shop
        user: postgres
  register: shop_schema

- name: Show the verdict
  ansible.builtin.debug:
    msg: "{{ shop_schema.verdict }}: {{ shop_schema.changes }}"

- name: Bring the schema back to the previous release's with the current release's Alembic
  stackops.rollback.compose_schema:
    project_src: /srv/shop
    databases:
      - service: db
        engine: postgres
        database: shop
    state: downgraded
    downgrade:
      service: app
      command: [alembic, downgrade, "{version}"]
"""

RETURN = r"""
verdict:
  description: The worst verdict of any database - V(unchanged), V(compatible), V(incompatible) or V(unknown).
  returned: success
  type: str
  sample: compatible
changes:
  description: Every difference, one readable string each, prefixed with the database and followed by its verdict.
  returned: success
  type: list
  elements: str
  sample: ["db/shop: column records.note: added since (text, nullable) (compatible)"]
databases:
  description:
    - Per database - name, service, engine, database, verdict, changes, migrations_since,
      live_sha256, target_sha256, tables, rows.
  returned: success
  type: list
  elements: dict
target:
  description: The target release, without file contents.
  returned: success
  type: dict
crossed:
  description: The releases the rollback crosses (deployed after the target), newest first, with their deploy notes.
  returned: success
  type: list
  elements: dict
  sample: [{"id": "3f9c2a7d10be", "version": "v3", "notes": "0003 drops records.note, irreversible"}]
restore_point:
  description: The newest restore point holding the data as of the target release, or V(null).
  returned: success
  type: dict
ways_forward:
  description: What can be done when the verdict is V(incompatible) or V(unknown).
  returned: when the verdict is incompatible or unknown
  type: str
restored:
  description:
    - For O(state=restored), per volume - volume, archive, changed, and safety_archive
      (the current data before the restore).
  returned: state=restored
  type: list
  elements: dict
rows_taken_away:
  description: For O(state=restored), per table, the rows the current data had that the restored data has not.
  returned: state=restored
  type: list
  elements: str
  sample: ["db/shop records: 3 of 12 rows (kept in the safety archive)"]
downgrade:
  description:
    - For O(state=downgraded), whether the command ran, the command, its rc and output,
      and which schemas changed.
  returned: state=downgraded
  type: dict
"""

from ansible_collections.stackops.rollback.plugins.module_utils._archive import ArchiveError
from ansible_collections.stackops.rollback.plugins.module_utils._compose import compose_project_args
from ansible_collections.stackops.rollback.plugins.module_utils._database import DATABASES_ARG, DatabaseError
from ansible_collections.stackops.rollback.plugins.module_utils._docker import EngineError, docker_module
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import (
    LEASE_ARGS,
    LedgerError,
    run_keeping_lease,
)
from ansible_collections.stackops.rollback.plugins.module_utils._release import ReleaseError
from ansible_collections.stackops.rollback.plugins.module_utils._verdict import DowngradeFailed, SchemaVerdicts
from ansible_collections.stackops.rollback.plugins.module_utils._volumes import VolumeError


def main():
    argument_spec = dict(
        databases=DATABASES_ARG,
        target=dict(type="str", default="previous"),
        state=dict(type="str", choices=["checked", "downgraded", "restored"], default="checked"),
        safety_dir=dict(type="path"),
        downgrade=dict(
            type="dict",
            options=dict(
                service=dict(type="str", required=True), command=dict(type="list", elements="str", required=True)
            ),
        ),
        count_rows=dict(type="bool", default=False),
    )
    argument_spec.update(compose_project_args(project_src=dict(required=True)))
    argument_spec.update(LEASE_ARGS)
    module, engine = docker_module(argument_spec)
    try:
        results = run_keeping_lease(module, SchemaVerdicts(module, engine).run)
    except DowngradeFailed as exc:
        module.fail_json(msg=str(exc), **exc.results)
    except (DatabaseError, LedgerError, ReleaseError, EngineError, ArchiveError, VolumeError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**results)


if __name__ == "__main__":
    main()
