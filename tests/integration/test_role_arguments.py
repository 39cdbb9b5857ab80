"""Required role variables have no defaults: ansible-core's argument check stops the play before
any task runs, with a message that names what is missing, and nothing on the host changes."""

from __future__ import annotations

import json
import re
import sys

import pytest
import testbed

CASES = [
    ("rollback_recreate.yml", {}, ["recreate_project_src"]),
    (
        "rollback_blue_green.yml",
        {"blue_green_project_src": "/srv/shop", "blue_green_proxy_port": 8080},
        ["blue_green_caddy_site", "blue_green_caddyfile", "blue_green_proxy_service"],
    ),
]


@pytest.mark.parametrize(("playbook", "given", "missing"), CASES, ids=["recreate", "blue_green"])
def test_a_missing_required_variable_stops_the_play_before_anything_runs(tmp_path, playbook, given, missing):
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    # A ledger of the test's own: the shared one is written by the tests running beside this one.
    ledger = tmp_path / "ledger"
    prefix = playbook[len("rollback_") : -len(".yml")]
    given = dict(given, **{prefix + "_ledger_dir": str(ledger)})
    result = testbed.run_playbook(testbed.REPO_ROOT / "playbooks" / playbook, given, inventory=str(inventory))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "missing required arguments: %s" % ", ".join(missing) in output, output[-3000:]
    # The argument check is the first task: no module of ours ran, nothing was written.
    assert "stackops.rollback.common" not in output, output[-3000:]
    assert not ledger.exists(), sorted(str(p) for p in ledger.rglob("*"))


def test_a_negative_drain_is_refused_before_anything(tmp_path):
    """A drain is a duration: blue_green refuses a negative one before it takes the lock or changes anything."""
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    ledger = tmp_path / "ledger"
    given = {
        "blue_green_project_src": str(tmp_path),
        "blue_green_proxy_port": 8080,
        "blue_green_caddy_site": "shop",
        "blue_green_caddyfile": str(tmp_path / "Caddyfile"),
        "blue_green_proxy_service": "caddy",
        "blue_green_ledger_dir": str(ledger),
        "blue_green_drain_seconds": -1,
    }
    playbook = testbed.REPO_ROOT / "playbooks" / "rollback_blue_green.yml"
    result = testbed.run_playbook(playbook, given, inventory=str(inventory))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert re.search(r"blue_green_drain_seconds is -1(\.0)?: give 0 or more seconds", output), output
    assert "Nothing was changed" in output, output[-3000:]
    # Refused before the lock: no lock was taken, and the run has its audit line (every run has one).
    assert not list(ledger.rglob("lock")), sorted(str(p) for p in ledger.rglob("*"))
    audit = [json.loads(line) for line in (ledger / "audit.log").read_text().splitlines()]
    assert [entry["event"] for entry in audit] == ["refused_rollback"], audit
