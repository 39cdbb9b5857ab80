"""Switching Caddy's upstream under load: caddy_upstream versus the field guide's edit-and-reload.

One Caddy 2.6 container in front of app v1 (blue) and v2 (green); a load generator sends 120
requests/s to 127.0.0.1 through it while the upstream is switched back and forth 10 times.
- ours: `stackops.rollback.caddy_upstream` run through `ansible` (as an operator runs it);
- the field guide: edit the Caddyfile (`sed -i`, which writes a new file and renames it, as
  most editors do), then `docker exec caddy caddy reload --config /etc/caddy/Caddyfile`.
Both with the Caddyfile's directory bind-mounted and with the Caddyfile mounted as a single file.
Counted: failed requests, switches whose new version was served, and answers that came from the
old version after a switch had returned. Caddy runs with net.ipv4.tcp_migrate_req=1, as
caddy_upstream recommends; a second measurement reloads Caddy 120 times under load with the
setting off and on, to show what it is for.
Run: `make bench BENCH=caddy_upstream`.
"""

from __future__ import annotations

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
from loadgen import LoadGenerator, summarize  # noqa: E402
from proxy import container_proxy, switch_under_load  # noqa: E402

STORM_RELOADS = 120


def ours(proxy):
    def switch(target):
        result = proxy.switch([target])
        if result.get("failed"):
            raise RuntimeError(result.get("msg"))

    return switch


def field_guide(proxy):
    def switch(target):
        other = next(u for u in proxy.version_of if u != target)
        testbed.run(["sed", "-i", "s/%s/%s/" % (other, target), str(proxy.caddyfile)])
        testbed.run(["docker", "exec", proxy.container, "caddy", "reload", "--config", "/etc/caddy/Caddyfile"])

    return switch


def reload_storm(migrate_req, work):
    """Reload Caddy STORM_RELOADS times (the field guide's way) under 150 requests/s; count resets."""
    stacks = testbed.Stacks(work)
    try:
        proxy = container_proxy(stacks, testbed.IMAGES, Path(tempfile.mkdtemp(dir=work)), False, migrate_req)
        switch = field_guide(proxy)
        upstreams = list(proxy.version_of)
        load = LoadGenerator(proxy.url + "/version", rate=150, max_requests=20000, max_seconds=150).start()
        try:
            time.sleep(1.0)
            for i in range(STORM_RELOADS):
                switch(upstreams[(i + 1) % 2])
                time.sleep(0.3)
            time.sleep(1.0)
        finally:
            samples = load.stop()
        return summarize(samples)
    finally:
        stacks.down()


def measure(method, single_file, work):
    stacks = testbed.Stacks(work)
    directory = Path(tempfile.mkdtemp(dir=work))
    try:
        proxy = container_proxy(stacks, testbed.IMAGES, directory, single_file)
        switch = ours(proxy) if method == "ours" else field_guide(proxy)
        summary, wrong, marks = switch_under_load(proxy, switch)
        effective = len(marks) - len({index for index, _version, _body, _delay in wrong})
        return {
            "summary": summary,
            "effective": effective,
            "switches": len(marks),
            "stale_answers": len(wrong),
            "switch_s": statistics.median(b - a for a, b, _v in marks),
        }
    finally:
        stacks.down()


def main():
    work = Path(tempfile.mkdtemp(prefix="bench-caddy-"))
    rows = []
    for single_file in (False, True):
        for method in ("ours", "guide"):
            result = measure(method, single_file, work)
            s = result["summary"]
            label = "caddy_upstream" if method == "ours" else "field guide (sed -i + caddy reload)"
            mount = "single file" if single_file else "directory"
            print("%s, %s mount: %s" % (label, mount, result), flush=True)
            rows.append(
                (
                    label,
                    mount,
                    s["requests"],
                    "%.0f/s" % s["rate"],
                    s["failed"],
                    s["resets"],
                    "%d of %d" % (result["effective"], result["switches"]),
                    result["stale_answers"],
                    "%.2f s" % result["switch_s"],
                )
            )
    body = report.table(
        [
            "method",
            "Caddyfile mount",
            "requests",
            "rate",
            "failed requests",
            "of them: connections reset before an answer",
            "switches served by the new version",
            "answers from the old version after a switch returned",
            "median switch time",
        ],
        rows,
    )
    storm = []
    for migrate_req in (False, True):
        s = reload_storm(migrate_req, work)
        print("reload storm, tcp_migrate_req=%d: %s" % (int(migrate_req), s), flush=True)
        storm.append(
            ("%d" % int(migrate_req), STORM_RELOADS, s["requests"], "%.0f/s" % s["rate"], s["failed"], s["resets"])
        )
    body += (
        "\n\nNothing is retried: a request fails on any HTTP error, time-out, or connection closed or reset "
        "before an answer. The field guide's switch fails silently with a single-file mount: `sed -i` replaces "
        "the file (new inode), the container keeps the old one, and `caddy reload` reloads the old upstream. "
        "caddy_upstream rewrites in place and confirms through the admin API. Its switch takes longer because "
        "it validates with Caddy first, keeps a backup and reads the running config back; most of the time is "
        "Ansible's start-up (the module runs through the `ansible` command).\n\n"
        "### Why Caddy runs with net.ipv4.tcp_migrate_req=1\n\n"
        "Caddy on Linux listens with SO_REUSEPORT; a reload opens a new listening socket and closes the old "
        "one, and the kernel resets the connections still queued on the old one unless "
        "`net.ipv4.tcp_migrate_req=1` moves them to the new one. The same Caddy container, reloaded %d times "
        "(`sed -i` + `caddy reload`, 0.3 s apart) under 150 requests/s, with the setting off and on:\n\n"
        % STORM_RELOADS
    )
    body += report.table(
        ["tcp_migrate_req", "reloads", "requests", "rate", "failed requests", "of them: connections reset"], storm
    )
    body += (
        "\n\ncaddy_upstream reads the setting in Caddy's network namespace, returns it as "
        "`reload_keeps_queued_connections` and warns when it is off."
    )
    title = "caddy_upstream: switching under load"
    report.write_section("caddy_upstream", title, "make bench BENCH=caddy_upstream", body)


if __name__ == "__main__":
    main()
