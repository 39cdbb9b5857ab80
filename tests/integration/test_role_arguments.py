"""Required role variables have no defaults: ansible-core's argument check stops the play before
any task runs, with a message that names what is missing, and nothing on the host changes. The
playbooks' own fleet settings are checked before any host is touched, the same way."""

from __future__ import annotations

import json
import re
import sys

import pytest
import testbed

CASES = [
    # The project is what the fleet needs of every host: checked for all of them before any runs.
    (
        "rollback_recreate.yml",
        {},
        "These hosts have no recreate_project_src (the project directory to roll back): localhost",
    ),
    (
        "rollback_blue_green.yml",
        {"blue_green_project_src": "/srv/shop", "blue_green_proxy_port": 8080},
        "missing required arguments: blue_green_caddy_site, blue_green_caddyfile, blue_green_proxy_service",
    ),
]
PLAYBOOKS = ["rollback_recreate.yml", "rollback_blue_green.yml"]


@pytest.mark.parametrize(("playbook", "given", "missing"), CASES, ids=["recreate", "blue_green"])
def test_a_missing_required_variable_stops_the_play_before_anything_runs(tmp_path, playbook, given, missing):
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    # A ledger of the test's own: the shared one is written by the tests running beside this one.
    ledger = tmp_path / "ledger"
    prefix = playbook[len("rollback_") : -len(".yml")]
    given = dict(given, rollback_report_dir=str(tmp_path / "reports"), **{prefix + "_ledger_dir": str(ledger)})
    result = testbed.run_playbook(testbed.REPO_ROOT / "playbooks" / playbook, given, inventory=str(inventory))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert missing in output, output[-3000:]
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


def fleet_inventory(tmp_path, hosts=("web1", "web2")):
    """Hosts that would run against the engine if the playbook let them: the tests prove it does not."""
    inventory = tmp_path / "fleet.ini"
    inventory.write_text(
        "[web]\n"
        + "".join(
            "%s ansible_connection=local ansible_python_interpreter=%s recreate_project_src=%s "
            "blue_green_project_src=%s\n" % (host, sys.executable, tmp_path / host, tmp_path / host)
            for host in hosts
        )
    )
    return inventory


def refused(result, tmp_path, *messages):
    """The run stopped in its first play with every message, and no host was touched."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for message in messages:
        assert message in output, output[-3000:]
    assert "Nothing was changed on any host." in output, output[-3000:]
    assert "PLAY [Roll back batch after batch" not in output, output[-3000:]
    assert not (tmp_path / "ledger").exists()


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=["recreate", "blue_green"])
def test_without_a_choice_of_hosts_the_playbook_refuses_to_run(tmp_path, playbook):
    """No -l and no rollback_hosts: refused before anything, though the inventory has two hosts."""
    result = testbed.run_playbook(
        testbed.REPO_ROOT / "playbooks" / playbook,
        {"recreate_ledger_dir": str(tmp_path / "ledger"), "blue_green_ledger_dir": str(tmp_path / "ledger")},
        inventory=str(fleet_inventory(tmp_path)),
        limit=None,
    )
    refused(result, tmp_path, "No hosts chosen: give them with -l (--limit)", "-l all for every host")


BAD_FLEET_SETTINGS = [
    ({"rollback_batch": 0}, "rollback_batch 0 is not a batch size"),
    ({"rollback_batch": "150%"}, "rollback_batch '150%' is not a batch size"),
    ({"rollback_batch": "abc"}, "rollback_batch 'abc' is not a batch size"),
    ({"rollback_batch": [1, "0%"]}, "rollback_batch '0%' is not a batch size"),
    ({"rollback_hosts": "db*"}, "rollback_hosts db* matches no host of the limit all"),
    ({"rollback_report_dir": "/proc/1/no-such-dir"}, "rollback_report_dir /proc/1/no-such-dir cannot be written"),
    # Every bad setting is named at once.
    (
        {"rollback_on_halt": "later", "rollback_canary": 3, "rollback_pause": "soon", "rollback_tiers": ["web"]},
        (
            "rollback_on_halt is later: give stay",
            "rollback_canary 3 is more than the 2 hosts of the first tier, web: give at most 2",
            "rollback_pause soon is not a number of seconds",
        ),
    ),
    (
        {"rollback_tiers": ["all", "web", "cache"]},
        (
            "rollback_tiers names cache, not a group of the inventory (its groups: web).",
            "Hosts in more than one tier: web1 (all, web); web2 (all, web)",
        ),
    ),
    ({"rollback_tiers": ["ungrouped"]}, "Hosts chosen but in no tier: web1, web2; add their group to rollback_tiers"),
]


@pytest.mark.parametrize(
    "settings, message",
    BAD_FLEET_SETTINGS,
    ids=["zero", "percent-over", "letters", "list", "no-match", "report-dir", "halt-canary-pause", "tiers", "no-tier"],
)
def test_a_bad_fleet_setting_is_refused_before_any_host_is_touched(tmp_path, settings, message):
    given = dict({"recreate_ledger_dir": str(tmp_path / "ledger"), "rollback_report_dir": str(tmp_path)}, **settings)
    result = testbed.run_playbook(
        testbed.REPO_ROOT / "playbooks" / "rollback_recreate.yml", given, inventory=str(fleet_inventory(tmp_path))
    )
    refused(result, tmp_path, *(message if isinstance(message, tuple) else (message,)))


def test_a_host_without_its_project_and_a_limit_matching_nothing_are_refused(tmp_path):
    inventory = fleet_inventory(tmp_path)
    inventory.write_text(inventory.read_text() + "web3 ansible_connection=local\n")
    playbook = testbed.REPO_ROOT / "playbooks" / "rollback_blue_green.yml"
    given = {"blue_green_ledger_dir": str(tmp_path / "ledger"), "rollback_report_dir": str(tmp_path)}
    result = testbed.run_playbook(playbook, given, inventory=str(inventory))
    refused(result, tmp_path, "These hosts have no blue_green_project_src (the project directory to roll back): web3")
    # Ansible's own check: a limit that matches no host ends the run before any play.
    nothing = testbed.run_playbook(playbook, given, inventory=str(inventory), limit="db1")
    assert nothing.returncode != 0 and "no hosts to target" in nothing.stdout + nothing.stderr
    assert not (tmp_path / "ledger").exists()
