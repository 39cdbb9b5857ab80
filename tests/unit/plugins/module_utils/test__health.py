"""Unit tests of compose_health's verdict logic (container states are plain dicts here)."""

from __future__ import annotations

import socket
import threading

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _health


def state(status="running", health=None, restarts=0, exit_code=0, probe="", started_at="2026-12-06T10:00:00.5Z"):
    return {
        "state": status,
        "health": health,
        "restarts": restarts,
        "exit_code": exit_code,
        "image": "app:v1",
        "image_id": "sha256:1",
        "started_at": started_at,
        "oom_killed": False,
        "last_probe": probe,
    }


@pytest.mark.parametrize(
    ("samples", "allow_exited", "status", "reason"),
    [
        ([[state()]], False, "passed", "running (no health check)"),
        ([[state(health="healthy")]], False, "passed", "healthy by its health check"),
        ([[state(health="starting")]], False, "pending", "health check still starting"),
        (
            [[state(health="unhealthy", probe="exit 1")]],
            False,
            "failed",
            "health check reports unhealthy (last probe: exit 1)",
        ),
        ([[state("exited", exit_code=0)]], True, "passed", "one-shot service exited 0 (allowed)"),
        ([[state("exited", exit_code=0)]], False, "failed", "exited with code 0"),
        ([[state("exited", exit_code=3)]], True, "failed", "exited with code 3"),
        ([[state("restarting", exit_code=3, restarts=2)]], False, "failed", "restarting (exit code 3, 2 restarts)"),
        ([[state("created")]], False, "pending", "state is created"),
        ([[state("dead")]], False, "failed", "state is dead"),
        ([[]], False, "failed", "no container: the service is missing from the project"),
        # A crash loop that is "running" at every sample: the restart count rises.
        ([[state(restarts=4)], [state(restarts=5)]], False, "failed", "crash loop: restart count rose from 4 to 5"),
        # The worst of several replicas counts.
        ([[state(), state("exited", exit_code=1)]], False, "failed", "exited with code 1"),
    ],
)
def test_container_verdicts(samples, allow_exited, status, reason):
    check = _health.ContainerCheck("app", allow_exited)
    for sample in samples:
        result = check.evaluate(sample)
    assert (result.status, result.reason) == (status, reason) or (
        result.status == status and result.reason.startswith(reason)
    )


# 2026-12-06T10:00:00.5Z as the managed host's epoch seconds.
STARTED = 1796551200.5


@pytest.mark.parametrize(
    ("health", "up", "status", "reason"),
    [
        # Running for 1 s of the 5 it must: a service that exits after 2 s is not up yet.
        (None, 1.0, "pending", "running (no health check), up 1.0 s of the 5.0 s it must run without a restart"),
        (None, 5.5, "passed", "running (no health check), up 5.5 s"),
        # A health check that passed once counts only once the container has run the window.
        ("healthy", 2.0, "pending", "healthy by its health check, up 2.0 s of the 5.0 s"),
        ("healthy", 6.0, "passed", "healthy by its health check, up 6.0 s"),
    ],
)
def test_stable_before_healthy(health, up, status, reason):
    check = _health.ContainerCheck("app", min_uptime=5.0, wall_clock=lambda: STARTED + up)
    result = check.evaluate([state(health=health)])
    assert result.status == status and result.reason.startswith(reason), result.reason
    assert check.judged_by == ("health check" if health else "uptime only")


def test_a_restart_inside_the_window_fails_even_when_running_again():
    now = [STARTED + 1.0]
    check = _health.ContainerCheck("app", min_uptime=5.0, wall_clock=lambda: now[0])
    assert check.evaluate([state()]).status == "pending"
    now[0] = STARTED + 8.0  # restarted meanwhile (restart: always), running again
    result = check.evaluate([state(restarts=1, started_at="2026-12-06T10:00:07.5Z")])
    assert result.status == "failed" and "crash loop" in result.reason


@pytest.mark.parametrize(
    ("line", "hit"),
    [
        ("2026 FATAL: cannot open file", True),
        ("panic: runtime error", True),
        ("Traceback (most recent call last):", True),
        ("java.lang.OutOfMemoryError", True),
        ("INFO all fine", False),
        ("the word fatalism", False),
        ("FATAL: known noise", False),
    ],
)
def test_log_patterns(line, hit):
    check = _health.LogCheck("app", _health.DEFAULT_FAIL_PATTERNS, ["known noise"])
    assert (check.scan(line) is not None) == hit


@pytest.mark.parametrize(
    ("line", "hit"),
    [
        ("2026-12-06 05:33:58.627 UTC [27] FATAL:  terminating connection due to administrator command", False),
        ("2026-12-06 05:33:58.627 UTC [27] FATAL:  the database system is starting up", False),
        ("2026-12-06 05:33:58.627 UTC [27] FATAL:  the database system is shutting down", False),
        ('2026-12-06 05:33:58.627 UTC [27] FATAL:  could not open file "base/1/2": No such file', True),
        ('2026-12-06 05:33:58.627 UTC [27] FATAL:  password authentication failed for user "shop"', True),
    ],
)
def test_default_ignores_pass_over_only_postgresqls_session_endings(line, hit):
    check = _health.LogCheck("db", _health.DEFAULT_FAIL_PATTERNS, _health.DEFAULT_IGNORE_PATTERNS)
    assert (check.scan(line) is not None) == hit


PG = "2026-12-06 05:33:58.627 UTC [27] "


@pytest.mark.parametrize(
    ("line", "database", "hit"),
    [
        # A client's own error, in a database's log: no verdict on the server.
        (PG + 'FATAL:  password authentication failed for user "shop"', "postgres", False),
        (PG + 'FATAL:  database "shpo" does not exist', "postgres", False),
        (PG + 'FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "x", database "shop"', "postgres", False),
        (PG + "FATAL:  canceling authentication due to timeout", "postgres", False),
        # The server's own failures still fail it.
        (PG + 'FATAL:  could not open file "base/1/2": No such file', "postgres", True),
        (PG + "PANIC:  could not write to file pg_wal/xlogtemp.27: No space left on device", "postgres", True),
        (PG + "FATAL:  sorry, too many clients already", "postgres", True),
        # The same words in an application's log: it cannot reach its database.
        ('sqlalchemy.exc.OperationalError: FATAL:  password authentication failed for user "shop"', None, True),
    ],
)
def test_a_database_passes_over_its_clients_errors_only(line, database, hit):
    check = _health.LogCheck("db", _health.DEFAULT_FAIL_PATTERNS, _health.DEFAULT_IGNORE_PATTERNS)
    assert (check.scan(line, database) is not None) == hit


@pytest.mark.parametrize(
    ("image", "engine"),
    [
        ("postgres:16", "postgres"),
        ("127.0.0.1:5000/stackops/postgres@sha256:" + "a" * 64, "postgres"),
        ("docker.io/library/mariadb:11", "mariadb"),
        ("mysql", "mysql"),
        ("ghcr.io/acme/shop:v1", None),
        ("acme/postgres-exporter-app", "postgres"),
        (None, None),
    ],
)
def test_database_engine_of_an_image(image, engine):
    assert _health.database_engine_of(image) == engine


class LogEngine:
    """Logs of one container, and the `since` each read asked for."""

    def __init__(self, text, image="app:v1"):
        self.text, self.image, self.asked = text, image, []

    def logs(self, container, since=None, tail=None):
        self.asked.append(since)
        return self.text


class LogContainer:
    def __init__(self, image):
        self.attrs = {"Config": {"Image": image}, "State": {"StartedAt": "2026-11-24T20:41:00Z"}}


def log_params(**logs):
    return {
        "logs": dict({"enabled": True, "fail_patterns": None, "ignore_patterns": None}, **logs),
        "http": [],
        "exec": [],
        "allow_exited": [],
        "timeout": 1,
        "interval": 1,
    }


@pytest.mark.parametrize(
    ("logs", "expected_since"),
    [({}, 1795552900.0), ({"since": 1795552880.0}, 1795552880.0), ({"whole_run": True, "since": 1.0}, None)],
    ids=["from-the-module-start", "from-a-given-step", "the-whole-run"],
)
def test_the_log_scan_starts_at_the_step_by_default(logs, expected_since):
    health = _health.ProjectHealth(log_params(**logs), engine=None, clock=lambda: 1795552900.0)
    check = health.waiter("shop", ["app"]).log_checks[0]
    engine = LogEngine("")
    check.evaluate(engine, [LogContainer("app:v1")])
    if expected_since is None:
        # The current run's start: just before its StartedAt.
        assert engine.asked == [None] or engine.asked[0] < 1795552900.0
        assert check.since is None
    else:
        assert check.since == expected_since and engine.asked == [expected_since]


def test_a_database_service_recognized_by_its_image_passes_over_a_wrong_password():
    check = _health.LogCheck("db", _health.DEFAULT_FAIL_PATTERNS, _health.DEFAULT_IGNORE_PATTERNS, since=0.0)
    line = "2026-12-06T05:33:58.627Z " + PG + 'FATAL:  password authentication failed for user "shop"'
    assert check.evaluate(LogEngine(line), [LogContainer("reg:5000/stackops/postgres:16")]).status == "passed"
    assert check.evaluate(LogEngine(line), [LogContainer("acme/shop:v1")]).status == "failed"


def test_an_unknown_database_engine_is_refused_naming_it():
    params = dict(
        log_params(databases={"db": "oracle"}), project_src=None, files=None, project_name="shop", services=["db"]
    )
    with pytest.raises(_health.HealthInputError, match=r"db: oracle.*postgres, mariadb, mysql"):
        _health.ProjectHealth(params, engine=None).project_and_services()


def test_docker_time():
    assert _health.parse_docker_time("0001-01-01T00:00:00Z") is None
    assert _health.parse_docker_time("2026-11-24T20:41:00.5Z") == pytest.approx(1795552860.5)


class FakeWaiter(_health.HealthWaiter):
    """A waiter on a fake clock: passes from time `healthy_at`, whose containers change state then."""

    def __init__(self, interval, healthy_at, watch_changes=True):
        self.now = 0.0
        self.rounds = []
        self.healthy_at = healthy_at
        self.watch_changes = watch_changes
        super().__init__(None, "p", [], 30, interval, [], [], [], [], clock=lambda: self.now, sleep=self.advance)

    def advance(self, seconds):
        self.now += seconds

    def round(self):
        self.rounds.append(self.now)
        ok = self.now >= self.healthy_at
        return {}, [_health.Result("x", "container", "passed" if ok else "pending", "")], False

    def state_signature(self):
        if not self.watch_changes:
            return []
        return ["healthy"] if self.now >= self.healthy_at else ["starting"]


def test_wait_returns_at_the_first_healthy_round():
    waiter = FakeWaiter(interval=1.0, healthy_at=1.5, watch_changes=False)
    healthy, _states, _results, elapsed = waiter.wait()
    assert healthy and len(waiter.rounds) == 3 and elapsed == pytest.approx(2.0)


def test_a_change_of_container_state_starts_the_next_round_at_once():
    waiter = FakeWaiter(interval=5.0, healthy_at=0.5)
    healthy, _states, _results, elapsed = waiter.wait()
    # The watch polls every 0.2 s: without it the second round would come at t=5.0.
    assert healthy and elapsed == pytest.approx(0.6) and len(waiter.rounds) == 2


def test_lines_since_drops_the_previous_runs_last_second():
    text = (
        "2026-11-24T20:41:00.100000000Z FATAL: the database system is shutting down\n"
        "2026-11-24T20:41:00.900000000Z database system is ready\n"
        "not timestamped\n"
    )
    since = _health.parse_docker_time("2026-11-24T20:41:00.500Z")
    assert _health.lines_since(text, since) == "database system is ready\nnot timestamped"
    assert "FATAL" in _health.lines_since(text, None)


@pytest.mark.parametrize(
    "state, expected",
    [
        # First run: the whole log is this run's, even a line written before StartedAt.
        ({"StartedAt": "2026-11-24T20:41:00.5Z", "FinishedAt": "0001-01-01T00:00:00Z"}, None),
        # Restarted: lines after the previous run's end are this run's.
        ({"StartedAt": "2026-11-24T20:41:02Z", "FinishedAt": "2026-11-24T20:41:01Z"}, 1795552861.000001),
        # Exited now: its run began shortly before StartedAt at the earliest.
        ({"StartedAt": "2026-11-24T20:41:02Z", "FinishedAt": "2026-11-24T20:41:05Z"}, 1795552861.5),
    ],
    ids=["first-run", "restarted", "exited"],
)
def test_log_window_starts_where_the_current_run_does(state, expected):
    got = _health.LogCheck.run_start(state)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_without_a_health_check_a_published_port_must_answer():
    answering = set()
    check = _health.ContainerCheck(
        "app", min_uptime=1.0, wall_clock=lambda: STARTED + 3, answers=lambda a, p: (a, p) in answering
    )
    running = dict(state(), ports=[("127.0.0.1", 18080)])
    result = check.evaluate([running])
    assert result.status == "pending" and result.reason.endswith("port 127.0.0.1:18080 does not answer"), result.reason
    answering.add(("127.0.0.1", 18080))
    result = check.evaluate([running])
    assert result.status == "passed" and "its port 127.0.0.1:18080 answers" in result.reason, result.reason
    assert check.judged_by == "port 127.0.0.1:18080"


def test_published_tcp_ports_ask_every_interface_on_127_0_0_1():
    attrs = {
        "NetworkSettings": {
            "Ports": {
                "8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18080"}, {"HostIp": "::", "HostPort": "18080"}],
                "53/udp": [{"HostIp": "", "HostPort": "5353"}],
                "9000/tcp": None,
            }
        }
    }
    assert _health.published_tcp_ports(attrs) == [("127.0.0.1", 18080)]


def test_a_port_accepted_then_closed_at_once_does_not_answer():
    # What the engine's port proxy does when nothing listens in the container.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def accept_and_close():
            conn = server.accept()[0]
            conn.close()

        closer = threading.Thread(target=accept_and_close)
        closer.start()
        assert not _health.port_answers("127.0.0.1", port, timeout=2, linger=2)
        closer.join(5)
        # A server that keeps the connection open, waiting for its client, answers.
        assert _health.port_answers("127.0.0.1", port, timeout=2, linger=0.2)
