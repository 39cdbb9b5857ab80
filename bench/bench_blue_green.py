"""A blue-green rollback behind Caddy: the blue_green role versus the field guide's sequence as written.

The shop (app + PostgreSQL) runs v2 behind a Caddy container on the host network and rolls back
to v1 while a load generator sends 120 requests/s to 127.0.0.1 through Caddy, from before the
start to after the end. Counted: failed requests (nothing is retried) and the wall time.
- ours: `playbooks/rollback_blue_green.yml` (green = v1's app on alternate ports beside the one
  database; verify; switch Caddy; drain; stop blue; finalize behind Caddy; remove green);
- the field guide as written: copy the compose file with alternate host ports, `docker compose -p
  <stack>-green up -d` (the whole stack, database included: with a project-scoped volume green
  gets a new, empty database), poll /health on the alternate port, `sed -i` the Caddyfile and
  `docker exec caddy caddy reload`, `docker compose -p <stack> down`, then "rename green to
  primary": `docker compose -p <stack>-green down`, `docker compose -p <stack> up -d` on the
  original ports, `sed -i` back and reload.
Run: `make bench BENCH=blue_green` (ROUNDS=n in the environment, default 2).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "testbed"))

import report  # noqa: E402
import testbed  # noqa: E402
from loadgen import LoadGenerator, longest_outage, summarize  # noqa: E402
from proxy import HostCaddy, host_migrates_queued_connections  # noqa: E402
from shop import LEDGER, BlueGreenShop, versions_in_order  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "2"))


def ours(shop):
    """Roll back with the role: (the downtime it reported from the engine's records, its slowest tasks)."""
    with report.profiled():
        result = shop.rollback()
    if result.returncode != 0:
        raise RuntimeError("the blue_green playbook failed: %s" % result.stdout[-3000:])
    return float(shop.info()["history"][-1]["details"]["downtime_seconds"]), report.top_tasks(result.stdout)


def field_guide(shop):
    stack = shop.stack
    green = stack.name + "-green"
    green_file = stack.dir / "compose.green.yml"
    # 1. The previous version on alternate ports, under <stack>-green.
    (stack.dir / ".env").write_text("APP_TAG=v1\nDB_PASSWORD=pw-shop\nAPP_SECRET=secret-v1\n")
    compose = (stack.dir / "compose.yml").read_text()
    green_file.write_text(compose.replace("127.0.0.1:%d:" % shop.port, "127.0.0.1:%d:" % shop.green_port))
    compose_cmd = ["docker", "compose", "--project-directory", str(stack.dir)]
    testbed.run([*compose_cmd, "-p", green, "-f", str(green_file), "up", "-d"])
    # 2. Its health on the alternate port.
    testbed.wait_http("http://127.0.0.1:%d/health" % shop.green_port, timeout=120)
    # 3. Caddy to green.
    reload_cmd = ["docker", "exec", shop.caddy.container, "caddy", "reload", "--config", "/etc/caddy/Caddyfile"]
    sed = "s/127.0.0.1:%d/127.0.0.1:%d/"
    testbed.run(["sed", "-i", sed % (shop.port, shop.green_port), str(shop.caddy.caddyfile)])
    testbed.run(reload_cmd)
    # 4. Stop blue.
    testbed.run([*compose_cmd, "-p", stack.name, "-f", str(stack.dir / "compose.yml"), "down"])
    # 5. Rename green to primary: original ports, standard project name.
    testbed.run([*compose_cmd, "-p", green, "-f", str(green_file), "down", "-v"])
    testbed.run([*compose_cmd, "-p", stack.name, "-f", str(stack.dir / "compose.yml"), "up", "-d"])
    testbed.run(["sed", "-i", sed % (shop.green_port, shop.port), str(shop.caddy.caddyfile)])
    testbed.run(reload_cmd)
    testbed.wait_http(shop.caddy.url + "/version", body_contains="v1", timeout=120)


def one_round(method, work):
    stacks = testbed.Stacks(work)
    directory = Path(tempfile.mkdtemp(dir=work))
    stack = None
    try:
        port = testbed.free_port()
        images = testbed.IMAGES
        stack = stacks(
            testbed.SHOP_COMPOSE.format(postgres=images["POSTGRES_IMAGE"], app=images["APP_IMAGE"], port=port),
            prefix="bench-bg",
        )
        caddy = HostCaddy(stacks, images, directory / "proxy", stack.name, "127.0.0.1:%d" % port)
        shop = BlueGreenShop(stack, port, directory, caddy)
        shop.deploy("v1")
        shop.deploy("v2")
        load = LoadGenerator(caddy.url + "/version", rate=120, max_requests=20000, max_seconds=170).start()
        try:
            time.sleep(2.0)
            started = time.monotonic()
            reported, profile = (ours if method == "ours" else field_guide)(shop) or (None, [])
            wall = time.monotonic() - started
            time.sleep(2.0)
        finally:
            samples = load.stop()
        summary = summarize(samples)
        return {
            "wall": wall,
            "requests": summary["requests"],
            "failed": summary["failed"],
            "outage": longest_outage(samples),
            "reported": reported,
            "profile": profile,
            "errors": summary["errors"],
            "versions": " -> ".join(versions_in_order(samples)),
        }
    finally:
        stacks.down()
        if stack is not None:
            shutil.rmtree(LEDGER / "projects" / stack.name, ignore_errors=True)


def main():
    work = Path(tempfile.mkdtemp(prefix="bench-bg-"))
    runs = {"ours": [], "guide": []}
    with host_migrates_queued_connections():
        for n in range(ROUNDS):
            for method in ("ours", "guide") if n % 2 == 0 else ("guide", "ours"):
                result = one_round(method, work)
                print("round %d, %s: %s" % (n + 1, method, result), flush=True)
                runs[method].append(result)
    labels = {"ours": "blue_green role", "guide": "field guide as written"}
    rows = []
    for method in ("ours", "guide"):
        rs = runs[method]
        rows.append(
            (
                labels[method],
                ", ".join(str(r["requests"]) for r in rs),
                ", ".join(str(r["failed"]) for r in rs),
                ", ".join("%.1f s" % r["wall"] for r in rs),
                "; ".join(sorted({r["versions"] for r in rs})),
                "; ".join(sorted({e for r in rs for e in r["errors"]}))[:200] or "-",
            )
        )
    gaps = [abs(r["reported"] - r["outage"]) for r in runs["ours"]]
    ours_wall = statistics.median(r["wall"] for r in runs["ours"])
    guide_wall = statistics.median(r["wall"] for r in runs["guide"])
    body = report.table(
        ["method", "requests (per round)", "failed requests", "wall time", "versions served, in order", "errors"],
        rows,
    )
    body += (
        "\n\n%d rounds per method, alternating, 120 requests/s through Caddy (net.ipv4.tcp_migrate_req=1) "
        "from 2 s before the start to 2 s after the end; nothing is retried. Median wall time: ours %.1f s, "
        "field guide %.1f s (%.2fx). Ours takes longer: it records the release, renders and verifies green, "
        "drains after each switch and verifies the target twice (on its ports and through Caddy) - "
        "all while a version serves. The field guide drops requests at the rename, where nothing serves "
        "between green's removal and the primary's start, and its green ran a second, empty database. "
        "Downtime ours reported (engine events and Caddy's confirmed switches) against the probes' longest "
        "run of failed requests, per round: %s (largest difference %.2f s)."
        % (
            ROUNDS,
            ours_wall,
            guide_wall,
            ours_wall / guide_wall,
            ", ".join("%.2f s vs %.2f s" % (r["reported"], r["outage"]) for r in runs["ours"]),
            max(gaps),
        )
    )
    last = runs["ours"][-1]
    drains = sum(seconds for task, seconds in last["profile"] if "Drain - let requests in flight" in task)
    body += (
        "\n\nWhere ours spends its time: the last round, %.1f s, of which its two drains %.1f s (goal: the rest at "
        "most 2x the field guide's wall time, %.1f s; measured %.1f s, %.2fx), %d tasks; the 10 slowest:\n\n%s"
        % (
            last["wall"],
            drains,
            2 * guide_wall,
            last["wall"] - drains,
            (last["wall"] - drains) / guide_wall,
            len(last["profile"]),
            report.profile_table(last["profile"], last["wall"]),
        )
    )
    report.write_section(
        "blue_green", "blue_green: rollback behind Caddy under load", "make bench BENCH=blue_green", body
    )


if __name__ == "__main__":
    main()
