"""rollback_lock's wait for a lock another run holds (a fake clock; no Docker involved)."""

from __future__ import annotations

import subprocess

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _ledger
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import Ledger, LockHeld
from ansible_collections.stackops.rollback.plugins.modules.rollback_lock import judge, take


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def params(**extra):
    return dict(dict(takeover_token=None, wait_timeout=0, lease=600, grace=60), **extra)


def test_a_held_lock_is_waited_for_then_named_with_the_time_waited(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first run", "token": "t1", "controller": "ctl-a"}, lease=600)
    clock = FakeClock()
    with pytest.raises(LockHeld, match=r"\(waited 5s\): first run, on controller ctl-a") as held:
        take(ledger, {"holder": "second", "token": "t2"}, params(wait_timeout=5), clock, clock.sleep)
    assert sum(clock.slept) == 5 and max(clock.slept) <= 1
    assert held.value.holder["token"] == "t1"


def test_no_wait_fails_at_once(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first run", "token": "t1"}, lease=600)
    clock = FakeClock()
    with pytest.raises(LockHeld, match="first run") as held:
        take(ledger, {"holder": "second", "token": "t2"}, params(), clock, clock.sleep)
    assert clock.slept == [] and "waited" not in str(held.value)


def test_the_lock_is_taken_as_soon_as_the_holder_releases_it(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first run", "token": "t1"}, lease=600)
    clock = FakeClock()

    def sleep(seconds):
        clock.sleep(seconds)
        if clock.now >= 3:
            ledger.release_lock("t1")

    assert take(ledger, {"holder": "second", "token": "t2"}, params(wait_timeout=30), clock, sleep) == (
        True,
        None,
        None,
    )
    assert clock.now == 3 and ledger.lock_holder()["token"] == "t2"


def test_a_takeover_waits_for_a_step_of_the_dead_run_still_working_on_the_host(tmp_path):
    """Its controller is gone (takeover_token), but its module goes on: taken once that ends."""
    ledger = Ledger(str(tmp_path), "shop")
    ledger.acquire({"holder": "first run", "token": "t1"}, lease=600)
    orphan = subprocess.Popen(["sleep", "60"])
    try:
        worker = dict(_ledger.worker_record("stackops.rollback.volume_backup"), pid=orphan.pid)
        ledger.update_lock("t1", {"worker": dict(worker, started=_ledger.process_start(orphan.pid))})
        clock = FakeClock()

        def sleep(seconds):
            clock.sleep(seconds)
            if clock.now >= 3 and orphan.poll() is None:
                orphan.kill()
                orphan.wait()

        changed, resumed, waited_for = take(
            ledger, {"holder": "second", "token": "t2"}, params(takeover_token="t1", wait_timeout=30), clock, sleep
        )
    finally:
        orphan.kill()
        orphan.wait()
    assert changed and resumed["token"] == "t1" and ledger.lock_holder()["token"] == "t2"
    assert (waited_for["pid"], waited_for["seconds"]) == (orphan.pid, 3) and clock.now == 3
    assert "volume_backup (pid %d on" % orphan.pid in _ledger.waited_for_worker(waited_for)


def test_check_mode_takes_nothing_waits_only_for_a_dead_runs_step_and_fails_at_once_on_a_live_run(tmp_path):
    ledger = Ledger(str(tmp_path), "shop")
    assert judge(ledger, "t2", params()) == (True, None, None) and ledger.lock_holder() is None
    ledger.acquire({"holder": "first run", "token": "t1"}, lease=600)
    clock = FakeClock()
    with pytest.raises(LockHeld, match="first run") as held:
        judge(ledger, "t2", params(wait_timeout=30), clock, clock.sleep)
    assert clock.slept == [] and "waited" not in str(held.value)
    orphan = subprocess.Popen(["sleep", "60"])
    try:
        # A live run's step: its run is not dead, so the check fails at once, it does not wait.
        worker = dict(_ledger.worker_record("stackops.rollback.compose_release"), pid=orphan.pid)
        ledger.update_lock("t1", {"worker": dict(worker, started=_ledger.process_start(orphan.pid))})
        with pytest.raises(LockHeld, match="compose_release is still working"):
            judge(ledger, "t2", params(wait_timeout=30), clock, clock.sleep)
        assert clock.slept == []

        def sleep(seconds):
            clock.sleep(seconds)
            if clock.now >= 4 and orphan.poll() is None:
                orphan.kill()
                orphan.wait()

        changed, resumed, waited_for = judge(ledger, "t2", params(takeover_token="t1", wait_timeout=30), clock, sleep)
    finally:
        orphan.kill()
        orphan.wait()
    assert (changed, resumed, waited_for["seconds"]) == (True, None, 4) and ledger.lock_holder()["token"] == "t1"
