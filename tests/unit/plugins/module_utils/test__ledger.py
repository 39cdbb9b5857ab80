"""Unit tests of the release ledger's storage and history logic (no Docker involved)."""

from __future__ import annotations

import json
import os
import stat

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
    assert ledger.failed_history() == [e for e in history if e["event"] == "failed_rollback"]
    assert ledger.settled_history() == [e for e in history if e["event"] != "failed_rollback"]
