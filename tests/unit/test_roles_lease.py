"""Every step of the roles that may outlast the lock's lease (a pull, a backup, a load, a health
wait, a migration) keeps the lease while it works: it passes renew_lock. Without it, a step longer
than the lease lets another run take the lock of a live run over."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Modules that can keep a lease (their argument spec carries LEASE_ARGS).
KEEPERS = sorted(
    "stackops.rollback." + path.stem
    for path in (ROOT / "plugins" / "modules").glob("*.py")
    if "LEASE_ARGS" in path.read_text()
)
# Records and audit lines are short and must be written even by a run that lost its lock.
RECORDS = ({"state": "audited"}, {"state": None})
# Entry points that take no lock (a fleet's fresh verdict between batches): no lease to keep.
LOCK_FREE = ("verify_now.yml",)


def module_tasks(tasks):
    for task in tasks or []:
        for key in ("block", "rescue", "always"):
            yield from module_tasks(task.get(key))
        for module in KEEPERS:
            if module in task:
                yield module, task


def role_task_files():
    return sorted((ROOT / "roles").glob("*/tasks/*.yml"))


def test_the_long_running_modules_keep_a_lease():
    assert [m.split(".")[-1] for m in KEEPERS] == [
        "caddy_upstream",
        "compose_health",
        "compose_release",
        "compose_schema",
        "database_backup",
        "volume_backup",
    ]


@pytest.mark.parametrize("path", role_task_files(), ids=lambda p: "%s/%s" % (p.parts[-3], p.name))
def test_every_long_step_keeps_the_lease(path):
    for module, task in module_tasks(yaml.safe_load(path.read_text())):
        args = task[module]
        if path.name in LOCK_FREE:
            assert "renew_lock" not in args, "%s takes no lock: %s" % (path.name, task["name"])
            continue
        if module.endswith("compose_release") and {"state": args.get("state")} in RECORDS:
            assert "renew_lock" not in args, "a record must not depend on the lock: %s" % task["name"]
            continue
        assert args.get("renew_lock") == "{{ _common_lease }}", "%s does not keep the lease" % task["name"]
