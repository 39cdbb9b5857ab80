#!/usr/bin/python
# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: engine_events
short_description: Follow the engine's container events of compose projects for a whole window
version_added: 1.0.0
description:
  - Starts a recorder on the managed host that follows the Docker engine's event stream and writes
    every container event of the given compose projects to a file in the ledger (0600), until it is
    stopped or O(max_seconds) pass. M(stackops.rollback.compose_health) reads that file with
    O(stackops.rollback.compose_health#module:downtime_record) to measure the downtime.
  - The engine keeps only its last 256 events, and every health check adds three, so on a host that
    runs a few dozen health-checked containers a window read back afterwards has lost its stops
    within seconds. A subscription to the stream loses nothing, however busy the engine is.
  - The recorder runs in a session of its own, so that it outlives this module; O(state=stopped)
    stops it and removes its file. A recorder left running by a killed run is stopped when the next
    one starts on the project (RV(stale_stopped)).
  - RV(host_time) is the managed host's clock when the recorder was following the stream; a
    downtime window opened there is complete.
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.docker
  - stackops.rollback.ledger
attributes:
  check_mode:
    support: full
    details: In check mode nothing is started or stopped; the module says what it would do.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Each O(state=recording) starts a recorder of its own.
options:
  project:
    description:
      - The compose project whose ledger directory holds the record.
    type: str
    required: true
  projects:
    description:
      - The compose projects whose container events are recorded. Defaults to O(project) alone;
        a blue-green rollback adds its green project.
    type: list
    elements: str
  state:
    description:
      - V(recording) starts a recorder and returns once it follows the stream; V(stopped) stops the
        recorder of O(record) and removes the file.
    type: str
    choices: [recording, stopped]
    default: recording
  record:
    description:
      - With O(state=stopped), the record to stop, as RV(record) returned it.
    type: path
  max_seconds:
    description:
      - The recorder stops by itself after this many seconds, whatever happens to the run that started it.
    type: int
    default: 3600
requirements:
  - Docker SDK for Python on the managed host
"""

EXAMPLES = r"""
- name: Follow the project's events from before anything stops
  stackops.rollback.engine_events:
    project: shop
  register: shop_events

- name: Measure the downtime from the record
  stackops.rollback.compose_health:
    project_src: /srv/shop
    downtime_since: "{{ shop_events.host_time }}"
    downtime_record: "{{ shop_events.record }}"

- name: Stop the recorder
  stackops.rollback.engine_events:
    project: shop
    state: stopped
    record: "{{ shop_events.record }}"
"""

RETURN = r"""
record:
  description: The file the recorder writes, one JSON line per event.
  returned: always
  type: str
  sample: /var/lib/stackops-rollback/projects/shop/events-1764633600-5f3a.jsonl
host_time:
  description: The managed host's clock (epoch seconds) when the recorder was following the stream.
  returned: when state is recording and not in check mode
  type: float
  sample: 1764633600.412
pid:
  description: The recorder's process id.
  returned: when state is recording and not in check mode
  type: int
events:
  description: With O(state=stopped), how many events the recorder wrote.
  returned: when state is stopped
  type: int
stale_stopped:
  description:
    - With O(state=recording), the records of recorders a killed run left behind, stopped and
      removed before the new one started (in check mode, those it would stop). Recorders start
      under the project's lock, so a record already there is no other run's.
  returned: when state is recording
  type: list
  elements: str
ended:
  description: With O(state=stopped), why the recorder ended (V(stopped), its time limit, or a broken stream).
  returned: when state is stopped
  type: str
"""

import os
import secrets
import time

from ansible_collections.stackops.rollback.plugins.module_utils._docker import EngineError, docker_module
from ansible_collections.stackops.rollback.plugins.module_utils._events import (
    RecorderError,
    stale_records,
    stop_recorder,
    stop_stale_recorders,
)
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import DEFAULT_LEDGER_DIR, Ledger, LedgerError


def record_path(ledger, stamp, token):
    return os.path.join(ledger.dir, "events-%d-%s.jsonl" % (stamp, token))


def main():
    argument_spec = dict(
        project=dict(type="str", required=True),
        projects=dict(type="list", elements="str"),
        state=dict(type="str", choices=["recording", "stopped"], default="recording"),
        record=dict(type="path"),
        max_seconds=dict(type="int", default=3600),
        ledger_dir=dict(type="path", default=DEFAULT_LEDGER_DIR),
    )
    module, engine = docker_module(argument_spec, required_if=[("state", "stopped", ("record",))])
    p = module.params
    try:
        ledger = Ledger(p["ledger_dir"], p["project"])
    except LedgerError as exc:
        module.fail_json(msg=str(exc))
    if p["state"] == "stopped":
        if os.path.dirname(p["record"]) != ledger.dir or not os.path.basename(p["record"]).startswith("events-"):
            module.fail_json(
                msg="record %s is not an event record of project %s (%s/events-*.jsonl); nothing was "
                "stopped" % (p["record"], p["project"], ledger.dir)
            )
        if not os.path.exists(p["record"]):
            module.exit_json(changed=False, record=p["record"], events=0, ended="no record (stopped already)")
        if module.check_mode:
            module.exit_json(changed=True, record=p["record"], events=0, ended="would be stopped")
        final = stop_recorder(p["record"])
        os.unlink(p["record"])
        module.exit_json(changed=True, record=p["record"], events=len(final.events), ended=final.why or "still running")
    if p["max_seconds"] < 1:
        module.fail_json(msg="max_seconds is %d: give 1 or more; nothing was started" % p["max_seconds"])
    path = record_path(ledger, time.time(), secrets.token_hex(3))
    if module.check_mode:
        module.exit_json(changed=True, record=path, stale_stopped=stale_records(ledger.dir))
    try:
        ledger.ensure_dirs()
        stale = stop_stale_recorders(ledger.dir)
        started = engine.start_event_recorder(path, p["projects"] or [p["project"]], p["max_seconds"])
    except (RecorderError, EngineError) as exc:
        if os.path.exists(path):
            os.unlink(path)
        module.fail_json(msg="%s; no recorder runs" % exc)
    module.exit_json(changed=True, record=path, host_time=started.ready, pid=started.pid, stale_stopped=stale)


if __name__ == "__main__":
    main()
