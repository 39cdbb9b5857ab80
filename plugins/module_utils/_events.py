# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The engine's container events of compose projects, followed live into a file for a whole window.

The engine keeps only its last 256 events, and a health check adds three: on a host that runs a few
dozen health-checked containers, a window read back afterwards has lost its stops within seconds.
A subscription to the event stream loses nothing, however busy the engine is: a recorder process
started on the managed host before the window follows the stream and writes each event of the
projects as a JSON line (0600, in the ledger), and the verification reads that file.

The recorder (RECORDER) runs with the module's Python and the Docker SDK, in a session of its own,
so that it outlives the module that starts it. It is bounded: the engine ends the stream at `until`,
and the role stops it (SIGTERM) when the window closes. Its first line says when it was following
the stream (`ready`), its last why it ended (`ended`, with `error` when the stream broke): a window
is complete only when the recorder was ready before it opened and still following when it closed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

# Run as `python -c RECORDER base_url path until projects_json`; self-contained, as the module's
# own files are gone once the module returns.
RECORDER = r"""
import json, os, signal, sys, time
base_url, path, until, projects = sys.argv[1], sys.argv[2], float(sys.argv[3]), set(json.loads(sys.argv[4]))
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)


def write(record):
    os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())


def stop(signum, frame):
    raise SystemExit("stopped")


signal.signal(signal.SIGTERM, stop)
try:
    import docker

    client = docker.APIClient(base_url=base_url, version="auto", timeout=None)
    # The engine subscribes this stream before it answers: from here nothing is lost. `since` as
    # well, or the engine first replays every event it keeps.
    since = time.time()
    stream = client.events(since=since, until=int(until) + 1, filters={"type": ["container"]}, decode=True)
    write({"ready": since, "pid": os.getpid()})
    for event in stream:
        labels = (event.get("Actor") or {}).get("Attributes") or {}
        if labels.get("com.docker.compose.project") in projects:
            write({
                "time": event.get("timeNano", 0) / 1e9 or float(event.get("time", 0)),
                "id": event.get("id"),
                "project": labels.get("com.docker.compose.project"),
                "service": labels.get("com.docker.compose.service"),
                "action": event.get("Action") or "",
            })
    write({"ended": time.time(), "why": "the recording's time limit"})
except SystemExit:
    write({"ended": time.time(), "why": "stopped"})
except BaseException as exc:
    write({"ended": time.time(), "why": "the event stream broke", "error": "%s: %s" % (type(exc).__name__, exc)})
"""

READY_TIMEOUT = 15.0  # seconds the recorder has to connect and subscribe


class RecorderError(Exception):
    """The recorder could not start, or its file is not one: the message says what was left."""


class Record:
    """What a recorder's file holds: when it was ready, when and why it ended, and its events."""

    def __init__(self, ready=None, pid=None, ended=None, why=None, error=None, events=()):
        self.ready, self.pid, self.ended, self.why, self.error = ready, pid, ended, why, error
        self.events = list(events)

    @classmethod
    def parse(cls, text):
        record = cls()
        for line in text.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a line being written as the file was read
            if "ready" in item:
                record.ready, record.pid = item["ready"], item.get("pid")
            elif "ended" in item:
                record.ended, record.why, record.error = item["ended"], item.get("why"), item.get("error")
            elif "time" in item:
                record.events.append(
                    (item["time"], item.get("id"), item.get("service"), item.get("action"), item.get("project"))
                )
        record.events.sort(key=lambda e: e[0])
        return record

    def covers(self, since, until):
        """Whether the recorder followed the stream over the whole window (gap() says why not)."""
        return self.gap(since, until) is None

    def project_events(self, project, since, until):
        """(time, container id, service, action) of one project within the window, oldest first."""
        return [
            (t, cid, service, action)
            for t, cid, service, action, p in self.events
            if p == project and since <= t <= until
        ]

    def gap(self, since, until):
        """Why the window is not covered, in words, or None."""
        if self.ready is None:
            return "the recorder never followed the event stream" + (" (%s)" % self.error if self.error else "")
        if self.ready > since:
            return "the recorder was ready only %.3f s after the window opened" % (self.ready - since)
        if self.ended is not None and (self.ended < until or self.error):
            return "the recorder ended %.3f s before the window closed (%s%s)" % (
                max(until - self.ended, 0.0),
                self.why,
                ": " + self.error if self.error else "",
            )
        return None


def read_record(path, settle=0.1, at_most=1.0, clock=time.monotonic, sleep=time.sleep):
    """The record at path, once it has stopped growing for `settle` s (at most `at_most` s): an event
    the engine emitted as the window closed reaches the file a few milliseconds later."""
    ends = clock() + at_most
    size = -1
    while True:
        try:
            now_size = os.path.getsize(path)
        except OSError as exc:
            raise RecorderError("the event record %s cannot be read: %s" % (path, exc.strerror)) from exc
        if now_size == size or clock() >= ends:
            break
        size = now_size
        sleep(settle)
    with open(path, encoding="utf-8", errors="replace") as fh:
        return Record.parse(fh.read())


def start_recorder(
    base_url, path, projects, seconds, python=None, popen=subprocess.Popen, clock=time.monotonic, sleep=time.sleep
):
    """Start a recorder of the projects' events into path for at most `seconds`; returns its Record
    once it follows the stream. The caller removes nothing on failure: the file, if any, says why."""
    until = time.time() + seconds
    process = popen(
        [python or sys.executable, "-c", RECORDER, base_url, path, repr(until), json.dumps(sorted(projects))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        # Nothing may hold the module's pipes once it returns; the file says what went wrong.
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    ends = clock() + READY_TIMEOUT
    while clock() < ends:
        record = read_record(path, at_most=0) if os.path.exists(path) else Record()
        if record.ready is not None:
            return record
        if record.ended is not None or process.poll() is not None:
            raise RecorderError(
                "the event recorder stopped before it followed the engine's stream: %s"
                % (record.error or "it exited with code %s" % process.poll())
            )
        sleep(0.02)
    os.kill(process.pid, signal.SIGTERM)
    raise RecorderError("the event recorder did not reach the engine at %s within %d s" % (base_url, READY_TIMEOUT))


def stop_recorder(path, kill=os.kill, clock=time.monotonic, sleep=time.sleep, wait=5.0):
    """Stop the recorder writing path (SIGTERM to the pid its file names, only while its own
    command line names that file), and return its final Record."""
    record = read_record(path, at_most=0)
    if record.ended is None and record.pid and is_recorder_of(record.pid, path):
        kill(record.pid, signal.SIGTERM)
        ends = clock() + wait
        while clock() < ends:
            record = read_record(path, at_most=0)
            if record.ended is not None:
                break
            sleep(0.02)
    return record


def stale_records(directory):
    """The event records in a project's ledger directory, oldest first. Recorders start under the
    project's lock, so when a run starts one, any record already there is a killed run's, whose
    recorder may follow the engine until its time limit."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(
        os.path.join(directory, name) for name in names if name.startswith("events-") and name.endswith(".jsonl")
    )


def stop_stale_recorders(directory, stop=stop_recorder, remove=os.unlink):
    """Stop the recorders of stale_records and remove their files; the paths removed."""
    stopped = []
    for path in stale_records(directory):
        try:
            stop(path)
            remove(path)
        except (OSError, RecorderError):
            continue  # gone meanwhile, or unreadable: the next start tries again
        stopped.append(path)
    return stopped


def is_recorder_of(pid, path):
    """Whether process pid is a recorder writing path (its command line names it): a pid reused by
    another process after the recorder ended is left alone."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:
        return False
    return path.encode() in args and RECORDER.encode() in args
