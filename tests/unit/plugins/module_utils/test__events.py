"""The event recorder: its file, its window, and the process itself on a fake Docker SDK."""

from __future__ import annotations

import json
import os
import textwrap
import time

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _events

READY = 1796000000.0


def lines(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


def event(at, action, project="shop", service="app", cid="c1"):
    return {"time": at, "id": cid, "project": project, "service": service, "action": action}


def test_a_record_keeps_its_projects_events_in_time_order_and_skips_a_half_written_line():
    text = lines(
        {"ready": READY, "pid": 42},
        event(READY + 2, "start"),
        event(READY + 1, "kill"),
        event(READY + 1.5, "die", project="shop-green"),
    )
    record = _events.Record.parse(text + '{"time": 17960')
    assert record.ready == READY and record.pid == 42 and record.ended is None
    assert record.project_events("shop", READY, READY + 10) == [
        (READY + 1, "c1", "app", "kill"),
        (READY + 2, "c1", "app", "start"),
    ]
    assert [e[3] for e in record.project_events("shop-green", READY, READY + 10)] == ["die"]
    assert record.project_events("shop", READY + 1.5, READY + 10) == [(READY + 2, "c1", "app", "start")]


@pytest.mark.parametrize(
    ("records", "since", "until", "gap"),
    [
        ([{"ready": READY}], READY + 1, READY + 9, None),
        ([{"ready": READY}, {"ended": READY + 10, "why": "stopped"}], READY + 1, READY + 9, None),
        ([{"ready": READY + 2}], READY + 1, READY + 9, "ready only 1.000 s after the window opened"),
        (
            [{"ready": READY}, {"ended": READY + 5, "why": "the event stream broke", "error": "engine restarted"}],
            READY + 1,
            READY + 9,
            "ended 4.000 s before the window closed (the event stream broke: engine restarted)",
        ),
        ([], READY, READY + 9, "never followed the event stream"),
    ],
    ids=["following", "stopped-after", "ready-late", "broke", "never-ready"],
)
def test_a_window_is_complete_only_when_the_recorder_followed_it_whole(records, since, until, gap):
    record = _events.Record.parse(lines(*records))
    found = record.gap(since, until)
    assert (found is None) if gap is None else (gap in found), found
    assert record.covers(since, until) == (gap is None)


def test_the_recorder_source_compiles():
    compile(_events.RECORDER, "<recorder>", "exec")


FAKE_DOCKER = """
import json, os, time

class APIClient:
    def __init__(self, base_url, version, timeout):
        self.base_url = base_url

    def events(self, since, until, filters, decode):
        assert filters == {"type": ["container"]} and decode
        script = json.loads(os.environ["FAKE_EVENTS"])
        def stream():
            for item in script:
                time.sleep(item.pop("after", 0))
                yield item
            if os.environ.get("FAKE_HOLD"):
                while True:
                    time.sleep(0.05)
            if os.environ.get("FAKE_BREAK"):
                raise ConnectionError("the engine closed the stream")
        return stream()
"""


def engine_event(action, project="shop", service="app", after=0.0):
    attributes = {"com.docker.compose.project": project, "com.docker.compose.service": service}
    return {
        "Type": "container",
        "Action": action,
        "id": "c1",
        "timeNano": int(time.time() * 1e9),
        "Actor": {"Attributes": attributes},
        "after": after,
    }


@pytest.fixture
def fake_sdk(tmp_path, monkeypatch):
    package = tmp_path / "sdk" / "docker"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(FAKE_DOCKER))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "sdk"))

    def script(events, hold=False, broken=False):
        monkeypatch.setenv("FAKE_EVENTS", json.dumps(events))
        if hold:
            monkeypatch.setenv("FAKE_HOLD", "1")
        if broken:
            monkeypatch.setenv("FAKE_BREAK", "1")

    return script


def test_the_recorder_follows_its_projects_until_stopped(tmp_path, fake_sdk):
    fake_sdk([engine_event("kill"), engine_event("die", project="other"), engine_event("start", after=0.1)], hold=True)
    path = str(tmp_path / "events-1-a.jsonl")
    started = _events.start_recorder("unix:///fake.sock", path, ["shop"], 60)
    assert started.ready is not None and started.pid
    assert _events.is_recorder_of(started.pid, path)
    assert not _events.is_recorder_of(started.pid, path + ".other")
    deadline = time.monotonic() + 5
    while len(_events.read_record(path, at_most=0).events) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    final = _events.stop_recorder(path)
    assert final.why == "stopped" and not final.error
    assert [e[3] for e in final.events] == ["kill", "start"], "only the project's events are kept"
    assert oct((tmp_path / "events-1-a.jsonl").stat().st_mode & 0o777) == "0o600"


def test_a_broken_stream_is_recorded_as_the_window_s_gap(tmp_path, fake_sdk):
    fake_sdk([engine_event("kill")], broken=True)
    path = str(tmp_path / "events-1-b.jsonl")
    _events.start_recorder("unix:///fake.sock", path, ["shop"], 60)
    deadline = time.monotonic() + 5
    while _events.read_record(path, at_most=0).ended is None and time.monotonic() < deadline:
        time.sleep(0.05)
    record = _events.read_record(path, at_most=0)
    assert "the engine closed the stream" in record.error
    assert "the event stream broke" in record.gap(record.ready, time.time() + 1)


def test_a_recorder_that_cannot_reach_the_engine_says_why(tmp_path, monkeypatch):
    sdk = tmp_path / "sdk" / "docker"
    sdk.mkdir(parents=True)
    (sdk / "__init__.py").write_text(
        "class APIClient:\n    def __init__(self, **kw):\n        raise OSError('no engine here')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "sdk"))
    with pytest.raises(_events.RecorderError, match="no engine here"):
        _events.start_recorder("unix:///nowhere.sock", str(tmp_path / "events-1-c.jsonl"), ["shop"], 60)


def test_a_killed_runs_recorders_are_stopped_and_their_records_removed(tmp_path):
    for name in ("events-2-bb.jsonl", "events-1-aa.jsonl", "events-3-cc.jsonl", "lock", "events-notes.txt"):
        (tmp_path / name).write_text("{}\n")
    stopped = []

    def stop(path):
        stopped.append(os.path.basename(path))
        if "cc" in path:
            raise _events.RecorderError("unreadable")

    removed = _events.stop_stale_recorders(str(tmp_path), stop=stop)
    assert stopped == ["events-1-aa.jsonl", "events-2-bb.jsonl", "events-3-cc.jsonl"]
    assert [os.path.basename(p) for p in removed] == ["events-1-aa.jsonl", "events-2-bb.jsonl"]
    # The unreadable one is left for the next start; files that are no records are never touched.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events-3-cc.jsonl", "events-notes.txt", "lock"]
    assert _events.stop_stale_recorders(str(tmp_path / "no-such-project")) == []
