# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The schema verdict of a rollback, as stackops.rollback.compose_schema gives it: the live schema of
each declared database against the schema recorded with the target release (_schema.judge), the
deploy notes of the releases the rollback crosses, the target's restore point; and the
down-migration that brings the live schema back to the target's.
"""

from __future__ import annotations

from ansible_collections.stackops.rollback.plugins.module_utils._backup import VolumeBackups
from ansible_collections.stackops.rollback.plugins.module_utils._database import DatabaseError, Databases, key_of
from ansible_collections.stackops.rollback.plugins.module_utils._dump import DatabaseDumps
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.stackops.rollback.plugins.module_utils._release import (
    BackupOptions,
    capture,
    crossed_releases,
    load_target,
    project_name,
    restore_point_of,
    summary,
)
from ansible_collections.stackops.rollback.plugins.module_utils._schema import judge, worst

WAYS_FORWARD = (
    "ways forward: schema_policy=downgrade with the newer release's down-migration command (recreate); "
    "schema_policy=restore to bring the data back from the target's restore point (recreate); "
    "schema_policy=keep when the target's code is known to cope; or roll forward instead"
)


class DowngradeFailed(Exception):
    """The down-migration failed or did not reach the target's schema; `results` says what is now live."""

    def __init__(self, msg, results):
        super().__init__(msg)
        self.results = results


def version_placeholders(databases, target_records):
    """{placeholder: value} for the down-migration command, from the target's recorded migration state."""
    for decl in databases:
        for table, entry in sorted(((target_records.get(key_of(decl)) or {}).get("migrations") or {}).items()):
            if entry.get("versions"):
                return {"{version}": entry["versions"][-1], "{versions}": ",".join(entry["versions"]), "{table}": table}
    return {}


class SchemaVerdicts:
    """compose_schema's work, one method per state: `checked` (read-only), `downgraded`, `restored`."""

    def __init__(self, module, engine):
        self.module = module
        self.engine = engine
        self.params = module.params

    def context(self):
        params = self.params
        if not params.get("databases"):
            raise DatabaseError("databases is empty: declare at least one database (service, engine, database)")
        ledger = Ledger(params["ledger_dir"], project_name(self.engine, params))
        deployed, _contents = capture(self.engine, dict(params, version=None))
        target, _contents = load_target(self.engine, ledger, params.get("target"), params, deployed["id"])
        record = ledger.deploy_record(target["id"]) if target.get("id") and ledger.has_release(target["id"]) else {}
        return ledger, deployed, target, record

    def verdicts(self, databases, target_records):
        """Per database: (declaration, live record, judgement)."""
        results = []
        for decl in databases.declarations:
            live = databases.record(decl)
            results.append((decl, live, judge(decl["engine"], target_records.get(key_of(decl)), live)))
        return results

    @staticmethod
    def summarize(per_database):
        verdict = worst([j["verdict"] for _d, _l, j in per_database]) if per_database else "unchanged"
        changes = ["%s: %s" % (key_of(d), c) for d, _l, j in per_database for c in j["changes"]]
        return verdict, changes

    def checked(self):
        ledger, deployed, target, record = self.context()
        target_records = record.get("databases") or {}
        databases = Databases(self.engine, ledger.project, self.params["databases"])
        per_database = self.verdicts(databases, target_records)
        verdict, changes = self.summarize(per_database)
        results = dict(
            changed=False,
            project=ledger.project,
            verdict=verdict,
            changes=changes,
            target=summary(target),
            deployed_id=deployed["id"],
            crossed=crossed_releases(ledger, target.get("id"), deployed["id"]),
            restore_point=restore_point_of(ledger, target.get("id")) if target.get("id") else None,
            databases=[
                {
                    "name": key_of(decl),
                    "service": decl["service"],
                    "engine": decl["engine"],
                    "database": decl.get("database"),
                    "verdict": judgement["verdict"],
                    "changes": judgement["changes"],
                    "migrations_since": judgement["migrations_since"],
                    "live_sha256": live["sha256"],
                    "target_sha256": (target_records.get(key_of(decl)) or {}).get("sha256"),
                    "tables": live["tables"],
                    "rows": databases.row_counts(decl, live["schema"]) if self.params.get("count_rows") else None,
                }
                for decl, live, judgement in per_database
            ],
        )
        if verdict in ("incompatible", "unknown"):
            results["ways_forward"] = WAYS_FORWARD
        if self.module._diff:
            results["diff"] = {
                "before_header": "schema recorded with release %s" % target.get("id"),
                "after_header": "live schema",
                "before": "".join(
                    "-- %s\n%s"
                    % (key_of(d), (target_records.get(key_of(d)) or {}).get("schema") or "(none recorded)\n")
                    for d, _l, _j in per_database
                ),
                "after": "".join("-- %s\n%s" % (key_of(d), live["schema"]) for d, live, _j in per_database),
            }
        return results, databases, target_records

    def downgraded(self):
        """Run the newer release's down-migration, then require the live schema to equal the target's."""
        results, databases, target_records = self.checked()
        results["downgrade"] = {"ran": False}
        if results["verdict"] == "unchanged":
            return results
        spec = self.params.get("downgrade") or {}
        if not spec.get("service") or not spec.get("command"):
            raise DatabaseError(
                "state=downgraded needs downgrade.service and downgrade.command (the down-migration argv)"
            )
        placeholders = version_placeholders(databases.declarations, target_records)
        command = list(spec["command"])
        if any("{" in part for part in command):
            if not placeholders:
                raise DatabaseError(
                    "the down-migration command names %s, but release %s has no migration version recorded; "
                    "nothing was changed"
                    % (", ".join(p for p in command if "{" in p), (results["target"] or {}).get("id"))
                )
            for key, value in placeholders.items():
                command = [part.replace(key, value) for part in command]
        results["downgrade"] = {"ran": not self.module.check_mode, "service": spec["service"], "command": command}
        if self.module.check_mode:
            results["changed"] = True
            return results
        before = {d["name"]: d["live_sha256"] for d in results["databases"]}
        rc, output = databases.run_in_service(spec["service"], command, "the down-migration")
        after = self.verdicts(databases, target_records)
        verdict, changes = self.summarize(after)
        changed_now = [key_of(d) for d, live, _j in after if live["sha256"] != before.get(key_of(d))]
        results.update(changed=bool(changed_now), verdict_before=results["verdict"], verdict=verdict, changes=changes)
        results["downgrade"].update(rc=rc, output=output[-2000:], schema_changed=changed_now)
        if rc != 0 or verdict != "unchanged":
            raise DowngradeFailed(
                "the down-migration %s in service %s %s; the live schema %s. %s"
                % (
                    command,
                    spec["service"],
                    "failed (rc=%s): %s" % (rc, output[-500:]) if rc != 0 else "finished",
                    "is still not the target's: %s" % "; ".join(changes)
                    if verdict != "unchanged"
                    else "equals the target's",
                    "The schema changed (%s)." % ", ".join(changed_now)
                    if changed_now
                    else "The schema did not change.",
                ),
                results,
            )
        return results

    def restored(self):
        """Put the declared databases' volumes back from the target's restore point; count what that takes away.

        Every archive is verified before any volume is touched; each volume's restore writes a
        safety copy of the current data first (volume_backup's restore), which the results name.
        """
        results, databases, _target_records = self.checked()
        point = results["restore_point"]
        if not point:
            raise DatabaseError(
                "release %s has no restore point: take one before each deploy (compose_release restore_point=true); "
                "nothing was changed" % (results["target"] or {}).get("id")
            )
        options = BackupOptions(self.module, safety_dir=self.params.get("safety_dir"), create_volume=False)
        backups = VolumeBackups(options, self.engine)
        dumps = DatabaseDumps(options, self.engine, databases=databases)
        # Volume archives carry the volume they hold; online dumps (kind dump) the database.
        verified = {}
        for archive in point["archives"]:
            if archive.get("volume"):
                backups.params["archive"] = archive["archive"]
                backups.verify()
            else:
                verified[archive["archive"]] = dumps.verify_dump(archive["archive"])
        before = {key_of(d): databases.row_counts(d) for d in databases.declarations}
        restored = []
        for archive in point["archives"]:
            if archive.get("volume"):
                backups.params["archive"] = archive["archive"]
                outcome = backups.restore(archive["volume"])
            else:
                outcome = dumps.restore(archive["archive"], verified[archive["archive"]])
            restored.append(
                {
                    "volume": archive.get("volume"),
                    "database": archive.get("database"),
                    "archive": archive["archive"],
                    "changed": outcome["changed"],
                    "safety_archive": outcome.get("safety_archive"),
                }
            )
        after = {} if self.module.check_mode else {key_of(d): databases.row_counts(d) for d in databases.declarations}
        taken = []
        for key, counts in sorted(before.items()):
            for table, rows in sorted(counts.items()):
                gone = rows - after.get(key, {}).get(table, 0)
                if gone > 0 and not self.module.check_mode:
                    taken.append("%s %s: %d of %d rows (kept in the safety archive)" % (key, table, gone, rows))
        results.update(
            changed=any(r["changed"] for r in restored),
            restored=restored,
            rows_before=before,
            rows_after=after,
            rows_taken_away=taken,
        )
        return results

    def run(self):
        if self.params["state"] == "downgraded":
            return self.downgraded()
        if self.params["state"] == "restored":
            return self.restored()
        return self.checked()[0]
