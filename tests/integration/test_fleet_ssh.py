"""The fleet over SSH: five Docker-in-Docker test hosts (tests/testbed/images/testhost), each with its
own engine and the shop (app + PostgreSQL, deployed at v1 then v2 by molecule/shared/prepare_shop.yml),
reached by Ansible over SSH as root with a key made for the run. They are created side by side once
and shared by this file's tests, which run one after another on one pytest worker (conftest.py,
SHARED_HOST_FILES);
each test starts from every host on v2. Traffic goes only to these hosts (their addresses on the
test bed engine's bridge) and to 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time

import pytest
import testbed
import testhosts

HOSTS = ["web1", "web2", "web3", "web4", "web5"]


@pytest.fixture(scope="module")
def ssh_fleet(images, tmp_path_factory):
    """Five SSH test hosts with the shop at v1 then v2, shared by this file's tests."""
    with testhosts.SshFleet.started(HOSTS, images, tmp_path_factory.mktemp("ssh-fleet")) as fleet:
        yield fleet


@pytest.fixture
def fleet_on_v2(ssh_fleet):
    return ssh_fleet.on_v2()


def newest_report(tmp_path):
    reports = sorted((tmp_path / "reports").glob("recreate-*.json"))
    assert reports, "no report written under %s" % (tmp_path / "reports")
    return json.loads(reports[-1].read_text())


def statuses(document):
    return [(row["host"], row.get("batch"), row["status"]) for row in document["hosts"]]


def test_the_fleet_over_ssh_rolls_back_canary_then_half_batches_every_host_verified(fleet_on_v2, tmp_path):
    fleet = fleet_on_v2
    rows = {name: fleet.rows(name) for name in HOSTS}
    result = fleet.roll_back(tmp_path, rollback_canary=1, rollback_batch="50%")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    document = newest_report(tmp_path)
    assert statuses(document) == [
        ("web1", 1, "rolled_back"),
        ("web2", 2, "rolled_back"),
        ("web3", 2, "rolled_back"),
        ("web4", 3, "rolled_back"),
        ("web5", 3, "rolled_back"),
    ], document
    versions = [(row["from_version"], row["to_version"]) for row in document["hosts"]]
    assert versions == [("v2", "v1")] * len(HOSTS), document
    assert fleet.versions() == ["v1"] * len(HOSTS)
    assert {name: fleet.rows(name) for name in HOSTS} == rows, "a host lost a row"
    assert document["summary"] == "Every host is on its target (5 hosts)."


def test_a_preflight_failure_on_one_ssh_host_changes_nothing_on_any(fleet_on_v2, tmp_path):
    fleet = fleet_on_v2
    before = fleet.state()
    # web4's target is not in its ledger.
    inventory = fleet.inventory(tmp_path / "fleet.ini", {"web4": {"recreate_target": "0000deadbeef"}})
    refused = fleet.roll_back(tmp_path, inventory=inventory, rollback_batch=2)
    assert refused.returncode != 0, refused.stdout[-4000:]
    message = refused.stdout.split("The preflight failed on")[-1]
    assert message.startswith(" 1 of 5 hosts, so no host was changed: web4: "), message[:2000]
    assert "0000deadbeef" in message
    assert "PLAY [Roll back batch after batch" not in refused.stdout, "the run went on after its preflight failed"
    assert fleet.state() == before, "the preflight changed something"
    assert fleet.versions() == ["v2"] * len(HOSTS)


def test_a_host_whose_ssh_goes_away_mid_fleet_halts_it_and_once_back_the_same_command_finishes(fleet_on_v2, tmp_path):
    """web3's sshd killed (listener and sessions) once its rollback reached its start step, in the
    second batch: the fleet halts, web3 is reported unreachable at that step, the third batch is
    not started. sshd back, the same command leaves the hosts on v1 alone, finishes web3 (its lock
    kept the plan) and rolls the rest back."""
    fleet = fleet_on_v2
    web3 = fleet.hosts["web3"]
    settings = dict(rollback_canary=1, rollback_batch=2)
    untouched = {name: fleet.state()[name] for name in ("web5",)}
    log = tmp_path / "halted.log"
    inventory = fleet.inventory(tmp_path / "fleet.ini")
    variables = fleet.variables(tmp_path, **settings)
    returncode = testhosts.fault_at_step(
        web3, "start", web3.stop_ssh, testhosts.RECREATE_PLAYBOOK, variables, inventory, log
    )
    halted = log.read_text()
    assert returncode != 0, halted[-5000:]
    assert "fatal: [web3]: UNREACHABLE!" in halted, halted[-5000:]
    document = newest_report(tmp_path)
    assert statuses(document) == [
        ("web1", 1, "rolled_back"),
        ("web2", 2, "rolled_back"),
        ("web3", 2, "unreachable"),
        ("web4", 3, "not_started"),
        ("web5", 3, "not_started"),
    ], document
    assert document["hosts"][2]["failed_step"] == "start", document["hosts"][2]
    assert "Halted: web3 UNREACHABLE at step 'start'." in document["summary"], document["summary"]
    assert {"web5": fleet.state()["web5"]} == untouched, "a host of the batch not started was changed"
    assert web3.lock().get("plan"), "web3's lock lost the plan of the run that went away"

    web3.start_ssh(fleet.key)
    resumed = fleet.roll_back(tmp_path, inventory=inventory, **settings)
    assert resumed.returncode == 0, resumed.stdout[-6000:]
    document = newest_report(tmp_path)
    assert [row["status"] for row in document["hosts"]] == ["already_on_target"] * 2 + ["rolled_back"] * 3, document
    assert "took over the lock of a run that died" in resumed.stdout, resumed.stdout[-5000:]
    assert fleet.versions() == ["v1"] * len(HOSTS)
    for name, host in fleet.hosts.items():
        assert host.lock() == {}, "%s's lock was not released" % name
        states = host.exec("docker", "ps", "-a", "--format", "{{.Names}} {{.State}}").stdout
        assert sorted(states.splitlines()) == ["shop-app-1 running", "shop-db-1 running"], (name, states)


def test_a_step_left_working_by_a_dropped_ssh_session_is_waited_for_before_its_lock_is_taken_over(ssh_fleet, tmp_path):
    """web1's volume backup held (SIGSTOP) while it works, then web1's sshd killed (Ansible pipelined): the run ends
    with web1 unreachable, and the backup module lives on in web1 without its controller. sshd back,
    the next run does not take the lock over while that module lives, though the dead run's
    controller process is gone (before, it took it at once, and two runs worked on one project);
    let go, the module ends its step, and the next run takes the lock over and finishes."""
    fleet = ssh_fleet.on_v2()
    web1 = fleet.hosts["web1"]
    rows = fleet.rows("web1")
    # Pipelined, as many run Ansible (AWX too): no terminal, so a dropped session does not hang the
    # module up (with one, its SIGHUP ends the module where it stands: measured, a zombie).
    inventory = fleet.inventory(tmp_path / "web1.ini", {"web1": {"ansible_pipelining": "true"}}, names=["web1"])
    variables = fleet.variables(tmp_path)
    held = []

    def backup_held(lock):
        if lock.get("step") == "backup" and not held:
            held.extend(filter(None, [web1.hold_lock_worker()]))
        return bool(held)

    returncode = testhosts.fault_at_step(
        web1,
        "backup",
        web1.stop_ssh,
        testhosts.RECREATE_PLAYBOOK,
        variables,
        inventory,
        tmp_path / "halted.log",
        when=backup_held,
    )
    halted = (tmp_path / "halted.log").read_text()
    assert returncode != 0 and "fatal: [web1]: UNREACHABLE!" in halted, halted[-5000:]
    (pid,) = held
    assert web1.process_state(pid).startswith("T"), "the held backup module is not on web1 any more"
    lock = web1.lock()
    assert lock["worker"]["pid"] == pid and lock["step"] == "backup", lock

    web1.start_ssh(fleet.key)
    log = tmp_path / "resumed.log"
    run = testbed.start_playbook(testhosts.RECREATE_PLAYBOOK, variables, str(inventory), str(log))
    try:
        testbed.wait_for(
            lambda: run.poll() is not None or "Take the project lock" in log.read_text(), 300, "the lock task"
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert web1.lock()["token"] == lock["token"], "the lock was taken over while its backup still worked"
            time.sleep(0.5)
        assert run.poll() is None, log.read_text()[-5000:]
        web1.signal(pid, "CONT")
        assert run.wait(timeout=600) == 0, log.read_text()[-6000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    resumed = log.read_text()
    waited = re.search(
        r"took over the lock of a run that died \(pid \d+ on \S+, phase backup\), once its step "
        r"stackops\.rollback\.volume_backup \(pid %d on \S+\), still working after its controller went away, "
        r"had ended (\d+)s later" % pid,
        resumed,
    )
    assert waited and int(waited.group(1)) >= 10, resumed[-5000:]
    assert web1.process_state(pid) == "", "the backup module never ended"
    assert fleet.versions()[0] == "v1" and fleet.rows("web1") == rows
    assert web1.lock() == {}, "web1's lock was not released"
    states = web1.exec("docker", "ps", "-a", "--format", "{{.Names}} {{.State}}").stdout
    assert sorted(states.splitlines()) == ["shop-app-1 running", "shop-db-1 running"], states
