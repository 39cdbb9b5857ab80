"""Downtime of a Recreate rollback: the recreate role versus the field guide's commands as written.

The same stack (app + PostgreSQL with rows, and DB_MIB MiB of filler in the database) is deployed
at v1, then v2, and rolled back to v1, alternately by each method; ours declares the database
(recreate_backup_method auto: it is dumped online). Two probers send a GET every 20 ms to
127.0.0.1 during the rollback: /version never touches the database, /records reads from it.
Downtime is the span from a probe's first failure to its first answer after the last one; the
database's own stop window comes from the engine's events. Run: `make bench BENCH=recreate`
(ROUNDS=n, default 3; DB_MIB=n, default 1024).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "testbed"))

import report  # noqa: E402
import testbed  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DB_MIB = int(os.environ.get("DB_MIB", "1024"))
DATABASES = [{"service": "db", "engine": "postgres", "database": "shop", "user": "postgres", "password": "pw-bench-db"}]
PROBE_INTERVAL = 0.02
PROBE_LIMIT = 30000  # at most 10 minutes of probes at 50/s: the loop always ends


class Prober:
    """GET url every PROBE_INTERVAL from a thread; bounded in count and by stop()."""

    def __init__(self, url):
        assert url.startswith("http://127.0.0.1:"), "probes go to 127.0.0.1 only"
        self.url = url
        self.samples = []  # (monotonic time, status, body)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for probe in range(PROBE_LIMIT):  # noqa: B007 - the bound is the point
            if self._stop.is_set():
                return
            t = time.monotonic()
            status, body = testbed.http_get(self.url, timeout=1.0)
            self.samples.append((t, status, body.strip() if status == 200 else ""))
            time.sleep(max(0.0, PROBE_INTERVAL - (time.monotonic() - t)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def wait_for(self, body, seconds=120):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.samples and self.samples[-1][2] == body:
                return
            time.sleep(0.05)
        raise RuntimeError("stack never answered %s" % body)

    def downtime(self):
        """(seconds from the first failed probe to the next success, failed probes)."""
        failed = [s for s in self.samples if s[1] != 200]
        if not failed:
            return 0.0, 0
        first = failed[0][0]
        back = next((s[0] for s in self.samples if s[0] > failed[-1][0] and s[1] == 200), failed[-1][0])
        return back - first, len(failed)


def fill_database(stack):
    """DB_MIB MiB of rows in a table the app never reads (each row about 300 bytes on disk)."""
    rows = DB_MIB * 1024 * 1024 // 300
    testbed.run(
        [
            "docker",
            "exec",
            stack.container_id("db"),
            "psql",
            "-q",
            "-U",
            "postgres",
            "-d",
            "shop",
            "-c",
            "CREATE TABLE filler AS SELECT g AS id, repeat(md5(g::text), 7) AS body FROM generate_series(1, %d) g"
            % rows,
        ],
        timeout=1800,
    )


def db_stop_window(name, since, until):
    """Seconds the db service had no healthy container, from the engine's events (0 when it never stopped)."""
    out = testbed.run(
        [
            "docker",
            "events",
            "--since",
            "%.3f" % since,
            "--until",
            "%.3f" % until,
            "--filter",
            "label=com.docker.compose.project=%s" % name,
            "--filter",
            "label=com.docker.compose.service=db",
            "--format",
            "{{json .}}",
        ]
    ).stdout
    down, longest = None, 0.0
    for line in out.splitlines():
        event = json.loads(line)
        action, when = event.get("Action", ""), event.get("timeNano", 0) / 1e9
        if action in ("kill", "die") and down is None:
            down = when
        elif action == "health_status: healthy" and down is not None:
            longest, down = max(longest, when - down), None
    if down is not None:
        longest = max(longest, until - down)
    return longest


def setup_stack(workdir, name, port):
    images = testbed.IMAGES
    workdir.mkdir(parents=True)
    (workdir / "compose.yml").write_text(
        testbed.SHOP_COMPOSE.format(postgres=images["POSTGRES_IMAGE"], app=images["APP_IMAGE"], port=port)
    )
    stack = testbed.ComposeStack(workdir, name, (workdir / "compose.yml").read_text())
    git = ["git", "-C", str(workdir), "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    testbed.run([*git, "init", "-q"])
    commits = {}
    for tag in ("v1", "v2"):
        (workdir / ".env").write_text("APP_TAG=%s\nDB_PASSWORD=pw-bench-db\nAPP_SECRET=bench\n" % tag)
        stack.up()
        testbed.wait_http("http://127.0.0.1:%d/version" % port, body_contains=tag)
        result = testbed.run_module(
            "compose_release", dict(project_src=str(workdir), project_name=name, version=tag, databases=DATABASES)
        )
        assert not result.get("failed"), result
        for n in range(20):
            testbed.http_post("http://127.0.0.1:%d/records" % port, "%s row %d" % (tag, n))
        if tag == "v1" and DB_MIB:
            fill_database(stack)
        testbed.run([*git, "add", "compose.yml", ".env"])
        testbed.run([*git, "commit", "-qm", tag])
        commits[tag] = testbed.run([*git, "rev-parse", "HEAD"]).stdout.strip()
    return stack, commits


def rollback_ours(workdir, name, port, backups):
    """Roll back with the role: (what it reported in the ledger, its tasks from the slowest)."""
    inventory = workdir.parent / ("%s.ini" % name)
    inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    with report.profiled():
        result = testbed.run_playbook(
            testbed.REPO_ROOT / "playbooks" / "rollback_recreate.yml",
            {
                "recreate_project_src": str(workdir),
                "recreate_backup_dir": str(backups),
                "recreate_health_http": [{"url": "http://127.0.0.1:%d/health" % port}],
                "recreate_databases": DATABASES,
            },
            inventory=str(inventory),
        )
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-3000:])
    # What the role reported: the app's downtime measured from the engine's events.
    history = (Path("/var/lib/stackops-rollback/projects") / name / "history.jsonl").read_text().splitlines()
    return json.loads(history[-1])["details"], report.top_tasks(result.stdout)


def rollback_field_guide(workdir, name, port, backups, commits):
    """The field guide's Recreate steps, as written (alpine is our busybox image here)."""
    compose = ["docker", "compose", "--project-directory", str(workdir), "-p", name]
    backups.mkdir(parents=True, exist_ok=True)
    # 1. Backup current state
    shutil.copy(workdir / "compose.yml", workdir / "compose.yml.bak")
    shutil.copy(workdir / ".env", workdir / ".env.bak")
    (workdir / "current-images.txt").write_text(testbed.run([*compose, "images"]).stdout)
    # 2. Backup volumes with data
    volume = "%s_dbdata" % name
    testbed.run(
        [
            "docker",
            "run",
            "--rm",
            "-v",
            "%s:/data" % volume,
            "-v",
            "%s:/backup" % backups,
            testbed.IMAGES["BUSYBOX_IMAGE"],
            "tar",
            "czf",
            "/backup/%s-%d.tar.gz" % (volume, time.time()),
            "/data",
        ]
    )
    # 3. Stop current deployment
    testbed.run([*compose, "down"])
    # 4. Restore previous config
    testbed.run(["git", "-C", str(workdir), "checkout", commits["v1"], "--", "compose.yml", ".env"])
    # 5. Start previous version
    testbed.run([*compose, "pull"])
    testbed.run([*compose, "up", "-d"])


def one_round(method):
    workdir = Path(tempfile.mkdtemp(prefix="bench-recreate-"))
    name = testbed.engine_name("bench-rc-%s" % method)
    port = testbed.free_port()
    stack = None
    try:
        stack, commits = setup_stack(workdir / name, name, port)
        base = "http://127.0.0.1:%d" % port
        with Prober(base + "/version") as prober, Prober(base + "/records") as data_prober:
            prober.wait_for("v2")
            t0, since = time.monotonic(), time.time()
            reported, profile = None, []
            if method == "ours":
                reported, profile = rollback_ours(stack.dir, name, port, workdir / "backups")
            else:
                rollback_field_guide(stack.dir, name, port, workdir / "backups", commits)
            prober.wait_for("v1")
            wall = time.monotonic() - t0
            time.sleep(0.5)
        downtime, failed = prober.downtime()
        data_downtime, data_failed = data_prober.downtime()
        rows = testbed.http_get(base + "/records")[1].count('"id"')
        app_reported = float((reported or {}).get("downtime_services", {}).get("app", "nan"))
        return {
            "downtime": downtime,
            "failed": failed,
            "data_downtime": data_downtime,
            "data_failed": data_failed,
            "db_stopped": db_stop_window(name, since, time.time()),
            "wall": wall,
            "rows": rows,
            "reported": app_reported,
            "profile": profile,
        }
    finally:
        if stack is not None:
            stack.down()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(Path("/var/lib/stackops-rollback/projects") / name, ignore_errors=True)


def main():
    results = {"ours": [], "guide": []}
    for n in range(ROUNDS):
        for method in ("ours", "guide") if n % 2 == 0 else ("guide", "ours"):
            r = one_round(method)
            results[method].append(r)
            print(
                "round %d %-5s downtime %.2f s (%d failed probes), wall %.1f s, rows %d"
                % (n + 1, method, r["downtime"], r["failed"], r["wall"], r["rows"]),
                flush=True,
            )

    def med(method, key):
        return statistics.median(r[key] for r in results[method])

    ours, guide = med("ours", "downtime"), med("guide", "downtime")

    def row(label, method):
        return [
            label,
            "%.2f" % med(method, "downtime"),
            "%.2f" % med(method, "data_downtime"),
            "%.2f" % med(method, "db_stopped"),
            "%.0f / %.0f" % (med(method, "failed"), med(method, "data_failed")),
            "%.1f" % med(method, "wall"),
            ", ".join("%.2f / %.2f" % (r["downtime"], r["data_downtime"]) for r in results[method]),
            min(r["rows"] for r in results[method]),
        ]

    data_ratio = med("ours", "data_downtime") / ours if ours else float("nan")
    body = "\n".join(
        [
            "Stack: app + PostgreSQL (40 rows the app reads, and %d MiB of filler), rolled back from v2 to v1; "
            "two probers on 127.0.0.1 every 20 ms, GET /version (never touches the database) and GET /records "
            "(reads from it); downtime = a probe's first failure to its first answer after the last one. Ours "
            "declares the database (backup method auto: an online dump); the field guide tars the volume, then "
            "`compose down` / `up`. The database's stop window is from the engine's events. %d rounds per "
            "method, alternating; medians." % (DB_MIB, ROUNDS),
            "",
            report.table(
                [
                    "method",
                    "app-path downtime s",
                    "data-path downtime s",
                    "database stopped s",
                    "failed probes (app / data)",
                    "wall s (rollback start to v1)",
                    "downtime per round s (app / data)",
                    "rows after",
                ],
                [row("recreate role (ours)", "ours"), row("field guide as written", "guide")],
            ),
            "",
            "Ratio: our app-path downtime is **%.2f x** the field guide's (goal: at most 0.5, and under 5 s); our "
            "data-path downtime is **%.2f x** our app-path downtime (goal: at most 1.2); the database stopped "
            "**%.2f s** for ours (goal: 0)."
            % (ours / guide if guide else float("nan"), data_ratio, med("ours", "db_stopped")),
            "",
            "The role's report against the probes, per round (the app's downtime measured from the engine's "
            "events, closed when the role saw the app answer again): %s; largest difference **%.2f s** "
            "(goal: within 0.3 s)."
            % (
                ", ".join("%.2f vs %.2f" % (r["reported"], r["downtime"]) for r in results["ours"]),
                max(abs(r["reported"] - r["downtime"]) for r in results["ours"]),
            ),
            "",
            "Ours stops after the images are on the host and the database is dumped while it serves; the "
            "wall time includes the preflight, the dump, the ledger and the verification, which happen while "
            "the old version still serves or after the new one answers. Wall time: ours **%.2f x** the field "
            "guide's (goal: at most 2x)." % (med("ours", "wall") / med("guide", "wall")),
            "",
            "Where ours spends its time: the last round, %.1f s, %d tasks; the 10 slowest:"
            % (results["ours"][-1]["wall"], len(results["ours"][-1]["profile"])),
            "",
            report.profile_table(results["ours"][-1]["profile"], results["ours"][-1]["wall"]),
        ]
    )
    report.write_section("recreate", "Recreate rollback: downtime", "make bench BENCH=recreate", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
