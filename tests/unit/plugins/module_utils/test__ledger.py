"""Unit tests of the release ledger's storage and history logic (no Docker involved)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _ledger
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import Ledger, LedgerError, LockHeld


def events(*pairs):
    return [{"event": e, "release": r} for e, r in pairs]


@pytest.mark.parametrize(
    ("history", "deployed_now", "expected"),
    [
        ([], None, None),
        (events(("deploy", "a")), None, None),
        (events(("deploy", "a"), ("deploy", "b")), None, "a"),
        # A rollback does not move `previous`: rolling back twice lands on the same release.
        (events(("deploy", "a"), ("deploy", "b"), ("rollback", "a")), None, "a"),
        (events(("deploy", "a"), ("deploy", "b"), ("deploy", "c"), ("rollback", "b")), None, "b"),
        # The same release deployed twice in a row is one deploy.
        (events(("deploy", "a"), ("deploy", "b"), ("deploy", "b")), None, "a"),
        # A redeploy of an old release: its predecessor is the release before it.
        (events(("deploy", "a"), ("deploy", "b"), ("deploy", "a")), None, "b"),
        # Something runs that was never recorded: it counts as the latest deploy.
        (events(("deploy", "a"), ("deploy", "b")), "c", "b"),
        (events(("deploy", "a")), "c", "a"),
        (events(("deploy", "a"), ("deploy", "b")), "b", "a"),
        # A failed rollback leaves the current release as it was.
        (events(("deploy", "a"), ("deploy", "b"), ("failed_rollback", "b")), None, "a"),
        # A failed deploy, rolled back by its rescue, is never previous: deploy v1, v2, failed v3, v4.
        (
            events(("deploy", "a"), ("deploy", "b"), ("failed_deploy", "c"), ("rollback", "b"), ("deploy", "d")),
            "d",
            "b",
        ),
        (events(("deploy", "a"), ("deploy", "b"), ("failed_deploy", "c")), "c", "a"),
    ],
)
def test_previous_release(tmp_path, history, deployed_now, expected):
    ledger = Ledger(str(tmp_path), "shop")
    for event in history:
        ledger.append_event(event)
    assert ledger.previous_id(deployed_now) == expected


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.yml", "a/../../b", ".."])
def test_paths_outside_the_project_are_refused(path):
    with pytest.raises(LedgerError, match="outside the project directory"):
        _ledger.safe_relpath(path)


@pytest.mark.parametrize("name", ["Shop", "", "-x", "a b", "../x"])
def test_invalid_project_names_are_refused(tmp_path, name):
    with pytest.raises(LedgerError, match="not a valid compose project name"):
        Ledger(str(tmp_path), name)


def test_fingerprint_depends_on_content_not_order():
    files = [{"path": "compose.yml", "sha256": "1"}, {"path": ".env", "sha256": "2"}]
    services = {"app": {"image_id": "sha256:a"}, "db": {"image_id": "sha256:b"}}
    same = _ledger.fingerprint(list(reversed(files)), dict(reversed(list(services.items()))))
    assert _ledger.fingerprint(files, services) == same
    other = _ledger.fingerprint(files, dict(services, app={"image_id": "sha256:c"}))
    assert _ledger.fingerprint(files, services) != other


def test_pin_prefers_the_registry_digest():
    release = {
        "services": {
            "app": {"repo_digest": "r/app@sha256:1", "image_id": "sha256:a"},
            "local": {"repo_digest": None, "image_id": "sha256:b"},
        }
    }
    assert json.loads(_ledger.pin_document(release)) == {
        "services": {"app": {"image": "r/app@sha256:1"}, "local": {"image": "sha256:b"}}
    }


def test_store_release_is_private_and_write_once(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger"), "shop")
    release = {"id": "0123456789ab", "files": [{"path": ".env", "sha256": "x"}], "created": "t"}
    assert ledger.store_release(release, {".env": b"SECRET=1\n"})
    assert not ledger.store_release(release, {".env": b"SECRET=2\n"})
    assert ledger.file_content("0123456789ab", ".env") == b"SECRET=1\n"
    for root, dirs, files in os.walk(tmp_path / "ledger"):
        for name in dirs + files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) & 0o077 == 0


def stored_release(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger"), "shop")
    release = {"id": "0123456789ab", "files": [], "services": {"app": {"image_id": "sha256:aa"}}, "created": "t"}
    ledger.store_release(release, {})
    return ledger, release, tmp_path / "ledger" / "projects" / "shop" / "releases" / "0123456789ab" / "release.json"


def test_a_release_reads_back_as_stored_and_one_recorded_without_a_checksum_still_reads(tmp_path):
    ledger, release, path = stored_release(tmp_path)
    assert ledger.get("0123456789ab") == release
    older = json.loads(path.read_text())
    del older["checksum"]
    path.write_text(json.dumps(older))
    assert ledger.get("0123456789ab") == release


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda text: text[:40], "is damaged"),
        (lambda text: text.replace("sha256:aa", "sha256:bb"), "does not match its checksum"),
        (lambda text: text.replace("0123456789ab", "0123456789ac"), "does not match its checksum"),
        (lambda text: "[]", "does not match its checksum"),
    ],
    ids=["truncated", "image-edited", "id-edited", "not-a-release"],
)
def test_a_damaged_or_edited_release_file_is_refused_naming_it_and_its_repair(tmp_path, damage, words):
    ledger, _release, path = stored_release(tmp_path)
    path.write_text(damage(path.read_text()))
    with pytest.raises(LedgerError) as raised:
        ledger.get("0123456789ab")
    message = str(raised.value)
    assert words in message and str(path) in message and "Repairing the ledger" in message, message


def test_a_damaged_history_line_is_named_with_its_repair(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.append_event({"event": "deploy", "release": "a"})
    with open(ledger.history_path, "a") as fh:
        fh.write('{"event": "depl\n')
    with pytest.raises(LedgerError, match=r"history.jsonl line 2 is damaged .*record it again .*Repairing the ledger"):
        ledger.history()


def test_lock_takeover_returns_the_dead_runs_record(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    assert ledger.acquire({"holder": "first", "token": "t1", "phase": "stopped"}) == (True, None)
    assert ledger.acquire({"holder": "first", "token": "t1"}) == (False, None)
    with pytest.raises(LockHeld, match="first"):
        ledger.acquire({"holder": "second", "token": "t2"})
    changed, resumed = ledger.acquire({"holder": "second", "token": "t2"}, takeover_token="t1")
    assert changed and resumed["phase"] == "stopped"
    assert ledger.lock_holder()["token"] == "t2"
    assert ledger.update_lock("t2", {"phase": "started"})
    assert not ledger.update_lock("t2", {"phase": "started"})
    with pytest.raises(LedgerError, match="not held by this run"):
        ledger.update_lock("t1", {"phase": "x"})
    with pytest.raises(LedgerError, match="not removing it"):
        ledger.release_lock("t1")
    assert ledger.release_lock("t2")
    assert ledger.lock_holder() is None


def test_a_takeover_that_dies_before_its_own_plan_hands_the_first_runs_plan_on(tmp_path):
    """Run 1 dies half-way with its plan; run 2 takes the lock over and dies before it writes the
    plan again; run 3 must still be told run 1's plan (and how far it got), not start afresh."""
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "run 1", "token": "t1", "plan": {"from": "a", "to": "b"}, "step": "verify"})
    assert ledger.acquire({"holder": "run 2", "token": "t2"}, takeover_token="t1")[1]["plan"] == {
        "from": "a",
        "to": "b",
    }
    changed, resumed = ledger.acquire({"holder": "run 3", "token": "t3"}, takeover_token="t2")
    assert changed and resumed["plan"] == {"from": "a", "to": "b"} and resumed["step"] == "verify", resumed
    assert ledger.lock_holder()["resumes"]["holder"] == "run 1"
    # A run that wrote a plan of its own is what the next one resumes.
    ledger.update_lock("t3", {"plan": {"from": "b", "to": "b"}})
    assert ledger.acquire({"holder": "run 4", "token": "t4"}, takeover_token="t3")[1]["plan"] == {
        "from": "b",
        "to": "b",
    }


def test_a_lease_keeps_the_lock_while_renewed_and_frees_it_after_its_grace(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    first = {"holder": "first", "token": "t1", "controller": "awx-job-1", "plan": {"from": "a", "to": "b"}}
    assert ledger.acquire(first, lease=100, grace=10, now=1000.0) == (True, None)
    assert ledger.lock_holder()["lease_expires"] == 1100.0
    # Within the lease and within its grace, from any controller: held, the holder named.
    for now in (1050.0, 1109.0):
        with pytest.raises(LockHeld, match=r"awx-job-1.*plan: \? from release a to b") as held:
            ledger.acquire({"holder": "second", "token": "t2"}, lease=100, grace=10, now=now)
        assert "state=absent force=true" in str(held.value) and "lease ends" in str(held.value)
    # Each update renews the lease: the holder is alive.
    assert ledger.update_lock("t1", {"phase": "started"}, now=1090.0)
    assert not ledger.update_lock("t1", {"phase": "started"}, now=1095.0)
    assert ledger.lock_holder()["lease_expires"] == 1195.0
    with pytest.raises(LockHeld):
        ledger.acquire({"holder": "second", "token": "t2"}, lease=100, grace=10, now=1200.0)
    # Past the lease and its grace: taken over, with the dead run's plan and phase.
    changed, resumed = ledger.acquire({"holder": "second", "token": "t2"}, lease=100, grace=10, now=1206.0)
    assert changed and resumed["phase"] == "started" and resumed["plan"] == {"from": "a", "to": "b"}
    held = ledger.lock_holder()
    assert held["token"] == "t2" and held["resumes"]["token"] == "t1" and held["lease_expires"] == 1306.0
    with pytest.raises(LedgerError, match="not held by this run"):
        ledger.update_lock("t1", {"phase": "x"})


def test_an_old_lock_without_a_lease_is_never_taken_by_time(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "old release", "token": "t1"}, lease=0)  # as an older release wrote it
    with pytest.raises(LockHeld, match="old release"):
        ledger.acquire({"holder": "second", "token": "t2"}, lease=100, grace=10, now=10**10)


def test_an_empty_lock_file_is_taken_over_after_the_grace(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.ensure_dirs()
    open(ledger.lock_path, "w").close()  # created, never written: a crash right after O_EXCL
    written = os.stat(ledger.lock_path).st_mtime
    with pytest.raises(LockHeld, match="empty or damaged lock file"):
        ledger.acquire({"holder": "second", "token": "t2"}, lease=100, grace=30, now=written + 5)
    changed, resumed = ledger.acquire({"holder": "second", "token": "t2"}, lease=100, grace=30, now=written + 31)
    assert changed and resumed["damaged"]
    assert ledger.lock_holder()["token"] == "t2"


def test_lock_changes_wait_for_each_other(tmp_path):
    """A run judging the lock holds the guard: another run's change waits until it is done."""
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first", "token": "t1"}, lease=10, grace=0, now=0.0)
    other = Ledger(str(tmp_path), "shop")
    done = threading.Event()

    def renew():
        other.update_lock("t1", {"phase": "alive"})
        done.set()

    with ledger._guard():
        thread = threading.Thread(target=renew, daemon=True)
        thread.start()
        assert not done.wait(0.3), "a change went through while another run held the guard"
    thread.join(timeout=5)
    assert done.is_set() and ledger.lock_holder()["phase"] == "alive"


def test_a_renewal_keeps_the_lease_the_lock_was_taken_with(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first", "token": "t1"}, lease=3600, grace=60, now=0.0)
    assert ledger.acquire({"holder": "first", "token": "t1"}, now=100.0) == (False, None)
    assert ledger.lock_holder()["lease_seconds"] == 3600 and ledger.lock_holder()["lease_expires"] == 3700.0
    ledger.update_lock("t1", {"step": "backup"}, now=200.0)
    assert ledger.lock_holder()["lease_expires"] == 3800.0
    with pytest.raises(LockHeld):
        ledger.acquire({"holder": "second", "token": "t2"}, grace=60, now=1000.0)


def test_only_a_clean_release_belongs_to_a_commit(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    for rid, created, git in (
        ("aaaaaaaaaaaa", "1", {"commit": "c1", "dirty": True}),
        ("bbbbbbbbbbbb", "2", {"commit": "c1", "dirty": False}),
        ("cccccccccccc", "3", None),
    ):
        ledger.store_release({"id": rid, "files": [], "created": created, "git": git}, {})
    assert ledger.find_by_commit("c1")["id"] == "bbbbbbbbbbbb"
    assert ledger.find_by_commit("c2") is None


@pytest.mark.parametrize(
    ("history", "current", "previous"),
    [
        # deploy v1, deploy v2, a rollback that failed and was put back: v2 is still current.
        (events(("deploy", "v1"), ("deploy", "v2"), ("failed_rollback", "v2")), "v2", "v1"),
        # A failed revert recorded what it left running: that never becomes current or previous.
        (events(("deploy", "v1"), ("deploy", "v2"), ("failed_rollback", "broken")), "v2", "v1"),
        (events(("deploy", "v1"), ("deploy", "v2"), ("rollback", "v1"), ("failed_rollback", "broken")), "v1", "v1"),
        (events(("failed_rollback", "broken")), None, None),
    ],
)
def test_a_failed_rollback_is_never_current_or_previous(tmp_path, history, current, previous):
    ledger = Ledger(str(tmp_path), "shop")
    for event in history:
        ledger.append_event(event)
    assert (ledger.current_id(), ledger.previous_id()) == (current, previous)
    # The roles ask with what runs now: a failed revert's leftover counts as no deploy either.
    assert ledger.previous_id(history[-1]["release"]) == previous
    assert ledger.failed_history() == [e for e in history if e["event"] == "failed_rollback"]
    assert ledger.settled_history() == [e for e in history if e["event"] != "failed_rollback"]


def test_an_unfinished_lock_is_taken_over_at_once_with_its_plan(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first", "token": "t1", "plan": {"from": "a", "to": "b"}}, lease=600, grace=60, now=0.0)
    ledger.update_lock("t1", {"plan": {"from": "a", "to": "a"}, "unfinished": "the revert did not verify"}, now=1.0)
    changed, resumed = ledger.acquire({"holder": "next", "token": "t2"}, lease=600, grace=60, now=2.0)
    assert changed and resumed["plan"] == {"from": "a", "to": "a"} and resumed["unfinished"]
    assert "unfinished" not in ledger.lock_holder(), "the taking run's lock is not unfinished"


def wait_until(condition, seconds=5.0):
    stop = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < stop, "not reached within %s s" % seconds
        time.sleep(0.01)


def test_a_long_step_keeps_renewing_the_lease_and_stops_with_the_step(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first", "token": "t1", "step": "verify"}, lease=30, grace=0, now=time.time() - 29)
    first_expiry = ledger.lock_holder()["lease_expires"]
    keeper = _ledger.LeaseKeeper(ledger, "t1", interval=0.05)
    keeper.start()
    try:
        assert ledger.lock_holder()["lease_expires"] > first_expiry + 25, "not renewed when the step started"
        started = ledger.lock_holder()["lease_expires"]
        wait_until(lambda: ledger.lock_holder()["lease_expires"] > started)
    finally:
        keeper.stop()
    stopped = ledger.lock_holder()
    time.sleep(0.2)
    assert ledger.lock_holder() == stopped, "renewed after the step ended: a dead run would never be taken over"
    assert stopped["step"] == "verify" and stopped["lease_seconds"] == 30 and keeper.lost is None


def test_a_step_of_a_run_whose_lock_was_taken_over_does_not_start(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "the next run", "token": "t2"}, lease=30)
    with pytest.raises(LedgerError, match="not held by this run"):
        _ledger.LeaseKeeper(ledger, "t1").start()
    assert ledger.lock_holder()["token"] == "t2"


def test_a_lock_taken_over_during_a_step_is_reported_lost(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first", "token": "t1"}, lease=30)
    keeper = _ledger.LeaseKeeper(ledger, "t1", interval=0.05)
    keeper.start()
    try:
        ledger.release_lock(force=True)
        ledger.acquire({"holder": "the next run", "token": "t2"}, lease=30)
        wait_until(lambda: keeper.lost)
    finally:
        keeper.stop()
    assert "not held by this run" in keeper.lost and ledger.lock_holder()["token"] == "t2"


def test_a_lock_without_a_lease_needs_no_renewal(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "old release", "token": "t1"}, lease=0)
    keeper = _ledger.LeaseKeeper(ledger, "t1", interval=0.01)
    keeper.start()
    assert keeper._thread is None
    keeper.stop()


@pytest.fixture
def other_process():
    """A live process of this host other than the test's (a module whose controller went away)."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_step_still_working_on_the_host_keeps_its_lock_from_every_takeover(tmp_path, other_process):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first", "token": "t1", "plan": {"from": "a", "to": "b"}}, lease=30, grace=0, now=0.0)
    worker = dict(_ledger.worker_record("stackops.rollback.volume_backup"), pid=other_process.pid)
    worker["started"] = _ledger.process_start(other_process.pid)
    ledger.update_lock("t1", {"worker": worker, "step": "backup"}, now=0.0)
    # Its controller is known dead (takeover_token), and its lease ended long ago: still held.
    for token, now in (("t1", 1.0), (None, 10**6)):
        with pytest.raises(LockHeld, match="volume_backup is still working on host") as held:
            ledger.acquire({"holder": "next", "token": "t2"}, takeover_token=token, lease=30, now=now)
        assert "kill %d" % other_process.pid in str(held.value) and ledger.lock_holder()["token"] == "t1"
    assert not Ledger.may_take(ledger.lock_holder(), "t1", 10**6, 0)
    other_process.kill()
    other_process.wait()
    changed, resumed = ledger.acquire({"holder": "next", "token": "t2"}, takeover_token="t1", lease=30, now=2.0)
    assert changed and resumed["step"] == "backup" and resumed["plan"] == {"from": "a", "to": "b"}
    assert "worker" not in ledger.lock_holder()["resumes"], "the dead run's worker is not the new run's"


def test_a_worker_pid_now_naming_another_process_or_on_another_host_is_judged_right(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first", "token": "t1"}, lease=30, grace=0, now=0.0)
    reused = dict(_ledger.worker_record("a long step"), started=_ledger.process_start(os.getpid()) - 1)
    ledger.update_lock("t1", {"worker": reused}, now=0.0)
    assert ledger.acquire({"holder": "next", "token": "t2"}, takeover_token="t1", lease=30, now=1.0)[0]
    # A worker on another host name (renamed, a shared ledger) cannot be asked: it counts as alive
    # while the lease it renews lasts, never longer.
    elsewhere = dict(_ledger.worker_record("a long step"), host="another-host")
    ledger.update_lock("t2", {"worker": elsewhere}, now=1.0)
    with pytest.raises(LockHeld, match="still working on host another-host"):
        ledger.acquire({"holder": "third", "token": "t3"}, takeover_token="t2", lease=30, now=2.0)
    assert ledger.acquire({"holder": "third", "token": "t3"}, takeover_token="t2", lease=30, now=32.0)[0]
    # Recorded before the host last booted: ended, whatever runs under its pid now.
    rebooted = dict(_ledger.worker_record("a long step"), boot="an-earlier-boot")
    assert _ledger.live_worker({"worker": rebooted}) is None
    assert _ledger.live_worker({"worker": _ledger.worker_record("a long step")})


def test_a_long_step_records_its_process_while_it_works_and_drops_it_after(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first", "token": "t1", "step": "backup"}, lease=30)
    keeper = _ledger.LeaseKeeper(ledger, "t1", interval=10, step="stackops.rollback.volume_backup")
    keeper.start()
    try:
        worker = ledger.lock_holder()["worker"]
        assert (worker["pid"], worker["step"]) == (os.getpid(), "stackops.rollback.volume_backup")
        assert _ledger.live_worker(ledger.lock_holder()) == worker
        renewed = ledger.lock_holder()["lease_expires"]
    finally:
        keeper.stop()
    assert "worker" not in ledger.lock_holder() and ledger.lock_holder()["step"] == "backup"
    # Its end renews nothing: a run that died after it is taken over when the lease ends.
    assert ledger.lock_holder()["lease_expires"] == renewed


class FakeModule:
    def __init__(self, params, check_mode=False):
        self.params = dict(params)
        self.check_mode = check_mode
        self.warnings = []

    def warn(self, msg):
        self.warnings.append(msg)

    def fail_json(self, **kwargs):
        raise SystemExit(kwargs)


def test_run_keeping_lease_renews_only_when_asked_and_never_in_check_mode(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first", "token": "t1"}, lease=30, now=time.time() - 20)
    before = ledger.lock_holder()["lease_expires"]
    lease = {"project": "shop", "token": "t1"}
    unasked = FakeModule({"renew_lock": None, "ledger_dir": str(tmp_path)})
    assert _ledger.run_keeping_lease(unasked, lambda: 1) == 1
    checking = FakeModule({"renew_lock": lease, "ledger_dir": str(tmp_path)}, check_mode=True)
    assert _ledger.run_keeping_lease(checking, lambda: 2) == 2
    assert ledger.lock_holder()["lease_expires"] == before
    module = FakeModule({"renew_lock": lease, "ledger_dir": str(tmp_path)})
    assert _ledger.run_keeping_lease(module, lambda: 3) == 3
    assert ledger.lock_holder()["lease_expires"] > before + 15 and not module.warnings
    taken = FakeModule({"renew_lock": dict(lease, token="t0"), "ledger_dir": str(tmp_path)})
    ran = []
    with pytest.raises(SystemExit) as failed:
        _ledger.run_keeping_lease(taken, lambda: ran.append(1))
    assert not ran and "did not start and changed nothing" in failed.value.args[0]["msg"]


def test_a_failed_deploy_is_never_current_and_left_by_failure_until_the_next_settled_event(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    for event, release in (("deploy", "a"), ("failed_deploy", "c")):
        ledger.append_event({"event": event, "release": release})
    assert ledger.current_id() == "a"
    assert ledger.left_by_failure("c", ("failed_deploy",)) and not ledger.left_by_failure("c", ("failed_rollback",))
    assert [e["release"] for e in ledger.failed_history("failed_deploy")] == ["c"]
    ledger.append_event({"event": "rollback", "release": "a"})
    assert not ledger.left_by_failure("c")


def test_a_worker_that_ended_but_was_never_reaped_counts_as_ended(tmp_path):
    """A container's PID 1 may reap nothing: a module killed there stays a zombie."""
    zombie = subprocess.Popen(["true"])
    stat = "/proc/%d/stat" % zombie.pid
    wait_until(lambda: Path(stat).read_text().rsplit(")", 1)[1].split()[0] == "Z")
    try:
        assert _ledger.process_start(zombie.pid) is None
        assert _ledger.live_worker({"worker": dict(_ledger.worker_record("a long step"), pid=zombie.pid)}) is None
    finally:
        zombie.wait()
    assert _ledger.process_start(zombie.pid) is None
