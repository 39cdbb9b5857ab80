"""What a fleet costs: playbooks/rollback_recreate.yml over SSH on Docker-in-Docker test hosts
(tests/testbed/testhosts.SshFleet: each its own engine with the shop, app + PostgreSQL), from v2 to
v1, every host put back on v2 between runs.

- On 6 hosts, canary + batches of 50 % (1 + 3 + 2 hosts: 3 batches) against `serial: 1` (one host
  per batch: 6 batches), each run's wall time beside its bound: the number of batches times the
  slowest host's own rollback in that run, plus the pauses (none here). A host's own rollback is
  the span of its role tasks in the run (first start to last end, from the ansible.posix.jsonl
  callback's events; the re-verification of hosts rolled back earlier is left out).
- The fleet's own passes (the settings check, every host's preflight in check mode, the report)
  on 2, 4 and 6 hosts (canary + 50 %), in all and per host.

Run: `make bench BENCH=fleet` (ROUNDS=n runs of each, default 1).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "testbed"))

import report  # noqa: E402
import testbed  # noqa: E402
import testhosts  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "1"))
NAMES = ["web%d" % n for n in range(1, 7)]
STRATEGIES = {"canary + 50 %": {"rollback_canary": 1, "rollback_batch": "50%"}, "serial: 1": {"rollback_canary": 0}}
# The plays of playbooks/fleet.yml that are the fleet's own, not a host's rollback.
FLEET_PASSES = ("Check the choice of hosts", "Check every host before any changes", "Report the fleet rollback")
BATCH_PLAY = "Roll back batch after batch"
JSONL = {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.jsonl", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}


def stamp(text):
    """The jsonl callback's ISO time (UTC, with a Z) -> epoch seconds."""
    import datetime

    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def timings(stdout):
    """From a run's jsonl events: seconds of each fleet pass (play) and each host's own rollback."""
    plays, spans = {}, {}
    play = None
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        name = event.get("_event", "")
        if "play" in event and "tasks" in event:  # a play starts
            play = event["play"]["name"]
            plays.setdefault(play, [stamp(event["play"]["duration"]["start"]), None])
            continue
        task = event.get("task") or {}
        if not task or play is None:
            continue
        duration = task.get("duration", {})
        if duration.get("end"):
            plays[play][1] = stamp(duration["end"])
        if not name.startswith("v2_runner_on_") or name == "v2_runner_on_start" or not play.startswith(BATCH_PLAY):
            continue
        path = task.get("path", "")
        for host, result in (event.get("hosts") or {}).items():
            if result.get("skipped") or "/roles/" not in path or "verify_now" in path:
                continue
            begin, end = stamp(duration["start"]), stamp(duration["end"])
            first, last = spans.get(host, (begin, end))
            spans[host] = (min(first, begin), max(last, end))
    passes = sum(end - begin for name, (begin, end) in plays.items() if end and name.startswith(FLEET_PASSES))
    return passes, {host: end - begin for host, (begin, end) in spans.items()}


def run_once(fleet, directory, names, settings):
    inventory = fleet.inventory(directory / "fleet.ini", names=names)
    started = time.monotonic()
    result = fleet.roll_back(directory, inventory=inventory, env=JSONL, **settings)
    wall = time.monotonic() - started
    reports = sorted((directory / "reports").glob("recreate-*.json"))
    if result.returncode != 0 or not reports:
        raise SystemExit("the fleet rollback failed:\n%s\n%s" % (result.stdout[-4000:], result.stderr[-2000:]))
    rows = json.loads(reports[-1].read_text())["hosts"]
    if [row["status"] for row in rows] != ["rolled_back"] * len(names):
        raise SystemExit("not every host was rolled back: %s" % rows)
    passes, own = timings(result.stdout)
    batches = max(row["batch"] for row in rows)
    slowest = max(own.values())
    return {"wall": wall, "batches": batches, "slowest": slowest, "bound": batches * slowest, "passes": passes}


def main():
    directory = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    runs = []
    try:
        with testhosts.SshFleet.started(NAMES, testbed.IMAGES, directory, prefix="bench-sshfleet") as fleet:
            plan = [(6, "serial: 1"), (6, "canary + 50 %"), (4, "canary + 50 %"), (2, "canary + 50 %")]
            for round_number in range(ROUNDS):
                for count, strategy in plan:
                    fleet.on_v2()
                    work = directory / ("run-%d-%d-%s" % (round_number, count, strategy[:6].strip()))
                    work.mkdir()
                    measured = run_once(fleet, work, NAMES[:count], STRATEGIES[strategy])
                    measured.update(hosts=count, strategy=strategy)
                    print("fleet of %(hosts)d, %(strategy)s: %(wall).1f s (bound %(bound).1f s)" % measured, flush=True)
                    runs.append(measured)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    def mean(count, strategy, key):
        values = [r[key] for r in runs if r["hosts"] == count and r["strategy"] == strategy]
        return sum(values) / len(values)

    rows = []
    for strategy in STRATEGIES:
        wall, bound = mean(6, strategy, "wall"), mean(6, strategy, "bound")
        rows.append(
            [
                strategy,
                mean(6, strategy, "batches"),
                "%.1f" % mean(6, strategy, "slowest"),
                "%.1f" % bound,
                "%.1f" % wall,
                "%.2f" % (wall / bound),
            ]
        )
    growth = []
    for count in (2, 4, 6):
        passes, wall = mean(count, "canary + 50 %", "passes"), mean(count, "canary + 50 %", "wall")
        growth.append([count, "%.1f" % wall, "%.1f" % passes, "%.1f" % (passes / count)])
    serial, batched = mean(6, "serial: 1", "wall"), mean(6, "canary + 50 %", "wall")
    body = "\n\n".join(
        [
            "6 hosts over SSH, each its own Docker engine with the shop (app + PostgreSQL), rolled back from v2 "
            "to v1; %d round(s), means shown. The bound is batches x the slowest host's own rollback in that "
            "run, plus pauses (none)." % ROUNDS,
            report.table(
                ["6 hosts", "batches", "slowest host (s)", "bound (s)", "wall (s)", "wall / bound"],
                rows,
            ),
            "Canary + 50 %% took %.2f of serial: 1's wall time (%.1f s against %.1f s)."
            % (batched / serial, batched, serial),
            "The fleet's own passes (settings check, every host's preflight in check mode, report), canary + 50 %:",
            report.table(["hosts", "wall (s)", "fleet passes (s)", "per host (s)"], growth),
        ]
    )
    report.write_section("fleet", "Fleet rollback over SSH: batches against serial: 1", "make bench BENCH=fleet", body)


if __name__ == "__main__":
    main()
