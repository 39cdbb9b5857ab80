"""How soon compose_health's verdict follows the stack becoming healthy.

Ten times: start a one-service stack whose health check first passes after a start delay, run
the module (as a plain process, as Ansible runs it on the host) with interval=1, and compare the
time it returned with the time Docker recorded for the first passing health check.
Run: `make bench BENCH=compose_health` (RUNS=n to change the count).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "testbed"))

import report  # noqa: E402
import testbed  # noqa: E402

RUNS = int(os.environ.get("RUNS", "10"))
INTERVAL = 1.0
MODULE = testbed.REPO_ROOT / "plugins" / "modules" / "compose_health.py"
COMPOSE = """\
services:
  app:
    image: {app}:v1
    environment:
      APP_START_DELAY: "{delay}"
    healthcheck:
      interval: 1s
      start_period: 30s
"""


def run_module(args):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, fh)
    env = dict(os.environ, PYTHONPATH=str(testbed.COLLECTIONS_PATH))
    out = subprocess.run([sys.executable, str(MODULE), fh.name], capture_output=True, text=True, env=env, check=False)
    os.unlink(fh.name)
    return json.loads(out.stdout)


def one_run(n):
    work = Path(tempfile.mkdtemp(prefix="bench-health-"))
    name = testbed.engine_name("bench-health")
    stack = testbed.ComposeStack(
        work / name, name, COMPOSE.format(app=testbed.IMAGES["APP_IMAGE"], delay=1.5 + 0.3 * n)
    )
    try:
        stack.up(wait=False)
        result = run_module({"project_src": str(stack.dir), "project_name": name, "timeout": 60, "interval": INTERVAL})
        returned = time.time()
        assert result.get("healthy"), result
        return returned - testbed.healthy_since(stack.container_id("app"))
    finally:
        stack.down()


def main():
    delays = []
    for n in range(RUNS):
        delays.append(one_run(n))
        print("run %d: verdict %.3f s after healthy" % (n + 1, delays[-1]), flush=True)
    rows = [["%d" % (i + 1), "%.3f" % d] for i, d in enumerate(delays)]
    body = "\n".join(
        [
            "Delay between the container's first passing health check (Docker's own record, "
            "`State.Health.Log[].End`) and compose_health returning, interval = %.1f s, %d runs. The "
            "module ran as a plain process on the host (no Ansible start-up counted)." % (INTERVAL, RUNS),
            "",
            "min **%.3f s**, median **%.3f s**, max **%.3f s** (goal: within one interval, %.1f s)."
            % (min(delays), statistics.median(delays), max(delays), INTERVAL),
            "",
            report.table(["run", "delay s"], rows),
        ]
    )
    report.write_section("compose_health", "compose_health: verdict delay", "make bench BENCH=compose_health", body)
    return 0 if max(delays) <= INTERVAL + 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
