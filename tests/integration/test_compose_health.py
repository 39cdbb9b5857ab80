"""compose_health against real stacks: each case fails for the right reason, named in msg."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import testbed

# Tests that time the verdict are marked serial: they run alone (make integration's serial part),
# as another test's load would skew the time. So are those on db_stack: PostgreSQL logs "FATAL: the
# database system is starting up" when a health probe reaches it early, which a start slowed by
# other tests' load makes likely, and the log check reads each log from its container's start
# (seen once in the parallel part). The others run beside other tests.

APP = """\
services:
  app:
    image: {app}:v1
    environment:
{env}
    ports:
      - "127.0.0.1:{port}:8080"
{extra}
"""


def app_stack(compose_stack, images, port, env=None, extra=""):
    lines = "\n".join("      %s: %r" % (k, v) for k, v in (env or {"APP_START_DELAY": "0"}).items())
    return compose_stack(APP.format(app=images["APP_IMAGE"], env=lines, port=port, extra=extra))


def health(stack, check=False, **args):
    params = dict(project_src=str(stack.dir), project_name=stack.name, timeout=20, interval=0.5)
    params.update(args)
    return testbed.run_module("compose_health", params, check=check)


@pytest.fixture(scope="module")
def db_stack(tmp_path_factory, images):
    """One PostgreSQL stack with rows, and one empty, shared by the data checks."""
    stacks = []
    for rows in (3, 0):
        name = testbed.engine_name("st-health-db")
        port = testbed.free_port()
        stack = testbed.ComposeStack(
            tmp_path_factory.mktemp(name) / name,
            name,
            """\
services:
  db:
    image: {pg}
    environment:
      POSTGRES_PASSWORD: pw
      POSTGRES_DB: shop
  app:
    image: {app}:v1
    environment:
      DATABASE_URL: postgresql://postgres:pw@db/shop
    ports:
      - "127.0.0.1:{port}:8080"
    depends_on:
      db:
        condition: service_healthy
""".format(pg=images["POSTGRES_IMAGE"], app=images["APP_IMAGE"], port=port),
        )
        stack.up()
        testbed.wait_http("http://127.0.0.1:%d/health" % port)
        for n in range(rows):
            testbed.http_post("http://127.0.0.1:%d/records" % port, "row %d" % n)
        stacks.append(stack)
    yield stacks
    for stack in stacks:
        stack.down()


PSQL_COUNT = {
    "service": "db",
    "command": ["psql", "-U", "postgres", "-d", "shop", "-tAc", "select count(*) from records"],
    "stdout_regex": "^[1-9][0-9]*$",
}


@pytest.mark.serial
def test_healthy_stack_passes_every_kind_of_check(db_stack):
    port = int(db_stack[0].ps()[0]["Publishers"][0]["PublishedPort"] or 0) or None
    app = next(e for e in db_stack[0].ps() if e["Service"] == "app")
    port = next(p["PublishedPort"] for p in app["Publishers"] if p["PublishedPort"])
    result = health(
        db_stack[0],
        http=[{"url": "http://127.0.0.1:%d/version" % port, "body_regex": "^v1$", "successes": 2}],
        exec=[PSQL_COUNT],
    )
    assert result["healthy"] and not result["changed"], result
    assert {c["kind"] for c in result["checks"]} == {"container", "logs", "http", "exec"}
    assert result["services"]["db"]["health"] == "healthy"
    assert result["services"]["app"]["state"] == "running"
    checked = health(db_stack[0], check=True, exec=[PSQL_COUNT])
    assert checked["healthy"], checked


@pytest.mark.serial
def test_spot_check_fails_on_an_empty_database(db_stack):
    result = health(db_stack[1], timeout=3, exec=[PSQL_COUNT])
    assert result["failed"] and not result["healthy"]
    assert "exec in db: psql" in result["msg"] and "does not match" in result["msg"]


@pytest.mark.serial
def test_missing_service_is_named(db_stack):
    result = health(db_stack[0], services=["app", "worker"])
    assert result["failed"] and "worker" in result["msg"] and "not in project" in result["msg"]


@pytest.mark.serial
def test_exited_container_fails_fast(compose_stack, images, free_port):
    stack = app_stack(compose_stack, images, free_port(), {"APP_CRASH_ON_START": "1"})
    stack.up(wait=False)
    started = time.monotonic()
    result = health(stack, timeout=30)
    assert result["failed"]
    assert "service app: exited with code 3" in result["msg"]
    assert time.monotonic() - started < 20, "an exited container is a verdict, not a reason to wait"


def test_crash_loop_that_looks_running_is_caught(compose_stack, images, free_port):
    stack = app_stack(compose_stack, images, free_port(), {"APP_CRASH_ON_START": "1"}, "    restart: always")
    stack.up(wait=False)
    # Without the log scan (which would see the FATAL line first), the restarts give it away.
    result = health(stack, timeout=15, logs={"enabled": False})
    assert result["failed"]
    assert ("crash loop" in result["msg"]) or ("restarting" in result["msg"]), result["msg"]


def test_unhealthy_container_is_reported_with_its_probe(compose_stack, images, free_port):
    extra = "    healthcheck:\n      start_period: 1s\n      interval: 1s\n      retries: 1"
    stack = app_stack(compose_stack, images, free_port(), {"APP_FAIL_HEALTH": "1"}, extra)
    stack.up(wait=False)
    result = health(stack, timeout=15)
    assert result["failed"]
    assert "service app: health check reports unhealthy" in result["msg"], result["msg"]


def test_http_5xx_is_reported(compose_stack, images, free_port):
    port = free_port()
    extra = "    healthcheck:\n      disable: true"
    stack = app_stack(compose_stack, images, port, {"APP_FAIL_HEALTH": "1"}, extra)
    stack.up(wait=False)  # `up --wait` refuses a container without a health check
    result = health(stack, timeout=5, http=[{"url": "http://127.0.0.1:%d/health" % port}])
    assert result["failed"]
    assert "/health: answered 500, expected 200" in result["msg"], result["msg"]


@pytest.mark.serial
def test_health_still_starting_at_the_deadline_fails(compose_stack, images, free_port):
    stack = app_stack(compose_stack, images, free_port(), {"APP_START_DELAY": "60"})
    stack.up(wait=False)
    result = health(stack, timeout=3)
    assert result["failed"] and "health check still starting" in result["msg"]


@pytest.mark.serial
def test_slow_start_within_the_timeout_passes(compose_stack, images, free_port):
    port = free_port()
    # Long enough that the module (started a second or two after `up` under load) still waits.
    stack = app_stack(compose_stack, images, port, {"APP_START_DELAY": "8"})
    stack.up(wait=False)
    result = health(stack, timeout=40, http=[{"url": "http://127.0.0.1:%d/health" % port}])
    assert result["healthy"], result
    assert result["elapsed"] >= 3


def test_wrong_body_and_refused_connection_are_reported(compose_stack, images, free_port):
    port = free_port()
    stack = app_stack(compose_stack, images, port)
    stack.up()
    closed = free_port()
    result = health(
        stack,
        timeout=3,
        http=[
            {"url": "http://127.0.0.1:%d/version" % port, "body_regex": "^v2$"},
            {"url": "http://127.0.0.1:%d/health" % closed},
        ],
    )
    assert result["failed"]
    assert "does not match '^v2$'" in result["msg"]
    assert "127.0.0.1:%d/health: connection failed" % closed in result["msg"]


def test_error_pattern_in_the_logs_fails_unless_ignored(compose_stack, images, free_port):
    extra = '    command: ["sh", "-c", "echo FATAL: disk on fire; exec python3 /opt/app/app.py"]'
    stack = app_stack(compose_stack, images, free_port(), None, extra)
    stack.up()
    since_start = {"whole_run": True}
    result = health(stack, timeout=5, logs=since_start)
    assert result["failed"] and "logs of app: error in the log: FATAL: disk on fire" in result["msg"]
    ignored = health(stack, timeout=5, logs=dict(since_start, ignore_patterns=["disk on fire"]))
    assert ignored["healthy"], ignored
    # By default the scan starts when the module does: a line written before the step fails nothing.
    from_the_step = health(stack, timeout=10)
    assert from_the_step["healthy"], from_the_step
    # From a time given on the host's clock before the line, it counts again.
    given = health(stack, timeout=5, logs={"since": time.time() - 600})
    assert given["failed"] and "FATAL: disk on fire" in given["msg"], given


def test_one_shot_service_may_exit_zero_when_listed(compose_stack, images, free_port):
    extra = '  migrate:\n    image: {bb}\n    command: ["true"]'.format(bb=images["BUSYBOX_IMAGE"])
    stack = app_stack(compose_stack, images, free_port(), None, extra)
    stack.up(wait=False)
    time.sleep(2)
    refused = health(stack, timeout=3)
    assert refused["failed"] and "service migrate: exited with code 0" in refused["msg"]
    allowed = health(stack, timeout=10, allow_exited=["migrate"])
    assert allowed["healthy"], allowed


@pytest.mark.serial
def test_verdict_within_one_interval_of_healthy(compose_stack, images, free_port):
    """The container turns healthy at a time Docker records; the verdict follows within an interval."""
    port = free_port()
    stack = app_stack(compose_stack, images, port, {"APP_START_DELAY": "3"})
    stack.up(wait=False)
    interval = 1.0
    t0 = time.time()
    # min_uptime 0: this times the health check's verdict, not the stability window.
    result = health(stack, timeout=40, interval=interval, min_uptime=0)
    returned = time.time()
    assert result["healthy"], result
    healthy_at = testbed.healthy_since(stack.container_id("app"))
    # run_module adds ansible's own start-up and teardown (about 1 s) around the module.
    assert returned - healthy_at < interval + 2.5, (returned - healthy_at, t0)


# Stable before healthy: a container counts as up once it has run min_uptime (5 s by default)
# without a restart; one that publishes a port, and has no health check, must answer on it too.
WORKER = """\
services:
  worker:
    image: {busybox}
    command: {command}
{extra}
"""


def worker_stack(compose_stack, images, command, extra=""):
    return compose_stack(WORKER.format(busybox=images["BUSYBOX_IMAGE"], command=command, extra=extra))


@pytest.mark.parametrize("restart", ['"no"', "always", "on-failure"])
@pytest.mark.parametrize("seconds", [1, 2, 4])
def test_a_service_that_exits_after_a_few_seconds_is_never_up(compose_stack, images, seconds, restart):
    command = '["sh", "-c", "sleep %d; exit 1"]' % seconds
    stack = worker_stack(compose_stack, images, command, "    restart: %s" % restart)
    stack.up(wait=False)
    result = health(stack, timeout=20)
    assert result["failed"], result
    reason = next(c["reason"] for c in result["checks"] if c["name"] == "service worker")
    if restart == '"no"':
        assert reason == "exited with code 1", reason
    else:
        assert reason.startswith(("crash loop", "restarting", "exited with code 1")), reason


def test_a_service_that_keeps_running_is_up_after_min_uptime_judged_by_uptime_only(compose_stack, images):
    stack = worker_stack(compose_stack, images, '["sleep", "3600"]')
    stack.up(wait=False)
    result = health(stack, timeout=20, min_uptime=3)
    assert result["healthy"], result
    reason = next(c["reason"] for c in result["checks"] if c["name"] == "service worker")
    up = float(re.search(r"up ([0-9.]+) s", reason).group(1))
    assert reason.startswith("running (no health check), up ") and up >= 3, reason
    assert result["judged_by"] == {"worker": "uptime only"}


def test_a_health_check_that_passes_once_then_fails_is_not_healthy(compose_stack, images):
    extra = """\
    healthcheck:
      test: ["CMD", "sh", "-c", "test ! -e /tmp/checked && touch /tmp/checked"]
      interval: 1s
      retries: 1"""
    stack = worker_stack(compose_stack, images, '["sleep", "3600"]', extra)
    stack.up(wait=False)
    result = health(stack, timeout=20)
    assert result["failed"], result
    assert "service worker: health check reports unhealthy" in result["msg"], result["msg"]


def test_a_published_port_that_never_answers_is_not_up(compose_stack, images, free_port):
    port = free_port()
    stack = worker_stack(compose_stack, images, '["sleep", "3600"]', '    ports: ["127.0.0.1:%d:8080"]' % port)
    stack.up(wait=False)
    result = health(stack, timeout=8, min_uptime=1)
    assert result["failed"], result
    assert "service worker: running (no health check), port 127.0.0.1:%d does not answer" % port in result["msg"]
    assert result["judged_by"] == {"worker": "port 127.0.0.1:%d" % port}


def test_a_published_port_that_answers_is_up(compose_stack, images, free_port):
    port = free_port()
    ports = '    ports: ["127.0.0.1:%d:8080"]' % port
    stack = worker_stack(compose_stack, images, '["httpd", "-f", "-p", "8080"]', ports)
    stack.up(wait=False)
    result = health(stack, timeout=20, min_uptime=1)
    assert result["healthy"], result
    reason = next(c["reason"] for c in result["checks"] if c["name"] == "service worker")
    assert reason.startswith("running (no health check), its port 127.0.0.1:%d answers" % port), reason
    assert result["judged_by"] == {"worker": "port 127.0.0.1:%d" % port}


def test_engine_events_follows_the_stream_and_the_downtime_is_read_from_it(compose_stack, images, tmp_path):
    stack = worker_stack(compose_stack, images, '["sleep", "3600"]')
    stack.up(wait=False)
    ledger = str(tmp_path / "ledger")
    started = testbed.run_module("engine_events", dict(project=stack.name, ledger_dir=ledger))
    assert not started.get("failed"), started
    assert started["record"].startswith(ledger + "/projects/%s/events-" % stack.name)
    assert os.stat(started["record"]).st_mode & 0o777 == 0o600
    stack.compose("restart", "worker")
    measured = health(
        stack,
        min_uptime=0,
        downtime_since=started["host_time"],
        downtime_record=started["record"],
    )
    downtime = measured["downtime"]
    assert downtime["complete"] and downtime["followed"], downtime
    assert downtime["services"]["worker"]["windows"], downtime
    stopped = testbed.run_module(
        "engine_events", dict(project=stack.name, ledger_dir=ledger, state="stopped", record=started["record"])
    )
    assert stopped["changed"] and stopped["ended"] == "stopped" and stopped["events"] >= 2, stopped
    assert not os.path.exists(started["record"])
    # A record that is not one of the project's is refused, and nothing stopped.
    refused = testbed.run_module(
        "engine_events", dict(project=stack.name, ledger_dir=ledger, state="stopped", record="/etc/passwd")
    )
    assert refused["failed"] and "is not an event record of project" in refused["msg"], refused


def records(pid, path):
    """Whether process pid runs and names path on its command line (a zombie names nothing)."""
    try:
        return path.encode() in Path("/proc/%d/cmdline" % pid).read_bytes().split(b"\0")
    except OSError:
        return False


def test_a_killed_runs_recorder_is_stopped_when_the_next_run_starts_one(compose_stack, images, tmp_path):
    """A run killed before its `always` leaves its recorder following the engine (up to max_seconds):
    the next recorder started on the project stops it and removes its record."""
    stack = worker_stack(compose_stack, images, '["sleep", "3600"]')
    stack.up(wait=False)
    ledger = str(tmp_path / "ledger")
    left = testbed.run_module("engine_events", dict(project=stack.name, ledger_dir=ledger))
    assert not left.get("failed"), left
    assert records(left["pid"], left["record"]), "the first recorder is not running"
    planned = testbed.run_module("engine_events", dict(project=stack.name, ledger_dir=ledger), check=True)
    assert planned["stale_stopped"] == [left["record"]] and Path(left["record"]).exists(), planned
    following = testbed.run_module("engine_events", dict(project=stack.name, ledger_dir=ledger))
    try:
        assert following["stale_stopped"] == [left["record"]], following
        assert not Path(left["record"]).exists()
        testbed.wait_for(lambda: not records(left["pid"], left["record"]), 5, "the stale recorder to end")
        assert records(following["pid"], following["record"]) and Path(following["record"]).exists()
    finally:
        testbed.run_module(
            "engine_events", dict(project=stack.name, ledger_dir=ledger, state="stopped", record=following["record"])
        )
