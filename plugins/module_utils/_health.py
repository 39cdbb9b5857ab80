# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Health of a compose project: one verdict from containers, health checks, logs, HTTP and data.

The checks are plain objects that take a sample and say passed / failed / pending; the loop in
`HealthWaiter` samples them until all pass or the deadline comes. Failures that cannot heal (a
container that exited, a crash loop, an error in the logs) end the wait at once.
`ProjectHealth` is what stackops.rollback.compose_health does with them.
"""

from __future__ import annotations

import datetime
import re
import socket
import time

from ansible.module_utils.urls import open_url
from ansible_collections.stackops.rollback.plugins.module_utils._compose import Compose
from ansible_collections.stackops.rollback.plugins.module_utils._docker import SERVICE_LABEL
from ansible_collections.stackops.rollback.plugins.module_utils._downtime import measure
from ansible_collections.stackops.rollback.plugins.module_utils._events import Record, RecorderError, read_record

PASSED, FAILED, PENDING, INCONCLUSIVE = "passed", "failed", "pending", "inconclusive"

DEFAULT_FAIL_PATTERNS = [
    r"\bFATAL\b",
    r"\bPANIC\b",
    r"\bpanic:",
    r"Traceback \(most recent call last\)",
    r"OutOfMemory",
    r"\bOOMKilled\b",
    r"Segmentation fault",
]
# PostgreSQL logs at FATAL level a client session it ends or turns away while it stops, starts
# or is told to: what a rollback's own stop of a database does to its connected clients. These
# lines say nothing about the service's health.
DEFAULT_IGNORE_PATTERNS = [
    r"FATAL:\s+terminating connection due to administrator command",
    r"FATAL:\s+the database system is (?:starting up|shutting down|not yet accepting connections)",
]
# What a database writes when a client fails (a wrong password, a database or role that does not
# exist, a client that goes away or is turned away while the server starts or stops): lines about one
# client session, not the server's health. Applied to database services only: the same words in an
# application's log mean the application cannot reach its database.
DATABASE_CLIENT_ERRORS = {
    "postgres": [
        r"FATAL:\s+password authentication failed for user",
        r"FATAL:\s+(?:role|database) \"[^\"]*\" does not exist",
        r"FATAL:\s+(?:no pg_hba\.conf entry|pg_hba\.conf rejects connection) for",
        r"FATAL:\s+permission denied for database",
        r"FATAL:\s+(?:canceling authentication due to timeout|connection to client lost)",
        r"FATAL:\s+terminating connection due to (?:idle-in-transaction|idle-session) timeout",
        r"FATAL:\s+(?:unsupported frontend protocol|invalid length of startup packet)",
        r"FATAL:\s+expected (?:password|SASL) response",
        r"FATAL:\s+the database system is in recovery mode",
    ],
    "mariadb": [
        r"Access denied for user",
        r"Aborted connection \d+ to db",
        r"Got (?:an error|timeout) reading communication packets",
        r"Unknown database '",
    ],
}
DATABASE_CLIENT_ERRORS["mysql"] = DATABASE_CLIENT_ERRORS["mariadb"]
# Compiled once: a log check scans every container's log on every round.
_CLIENT_ERRORS_COMPILED = {
    engine: [re.compile(p) for p in patterns] for engine, patterns in DATABASE_CLIENT_ERRORS.items()
}
# A database image recognized by its repository's last name, when the caller declares none.
DATABASE_IMAGES = (
    ("postgres", re.compile(r"^(?:postgres|postgis|timescaledb)")),
    ("mariadb", re.compile(r"^mariadb")),
    ("mysql", re.compile(r"^(?:mysql|percona)")),
)
LOG_TAIL_LINES = 5000  # bounds memory and time on chatty services


def database_engine_of(image):
    """'postgres', 'mariadb' or 'mysql' for an image named like one ('reg:5000/lib/postgres:16'), else None."""
    name = (image or "").split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return next((engine for engine, pattern in DATABASE_IMAGES if pattern.match(name)), None)


def parse_docker_time(text):
    """'2026-11-24T20:41:00.123456789Z' -> UTC epoch seconds (None for the zero time)."""
    if not text or text.startswith("0001-"):
        return None
    main, _dot, frac = text.rstrip("Z").partition(".")
    when = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return when.timestamp() + (float("0." + re.sub(r"\D.*", "", frac)) if frac else 0.0)


class Result:
    def __init__(self, name, kind, status, reason=""):
        self.name, self.kind, self.status, self.reason = name, kind, status, reason

    def as_dict(self):
        return {"name": self.name, "kind": self.kind, "status": self.status, "reason": self.reason}


def container_state(attrs):
    state = attrs.get("State", {})
    health = (state.get("Health") or {}).get("Status")
    log = (state.get("Health") or {}).get("Log") or []
    return {
        "state": state.get("Status"),
        "health": health,
        "last_probe": last_line(log[-1].get("Output")) if log else "",
        "restarts": attrs.get("RestartCount", 0),
        "exit_code": state.get("ExitCode"),
        "image": attrs.get("Config", {}).get("Image"),
        "image_id": attrs.get("Image"),
        "started_at": state.get("StartedAt"),
        "oom_killed": state.get("OOMKilled", False),
        "ports": published_tcp_ports(attrs),
    }


def published_tcp_ports(attrs):
    """[(host address, port)] a container publishes over TCP; every interface is asked on 127.0.0.1."""
    found = []
    for key, bindings in sorted(((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items()):
        if not key.endswith("/tcp"):
            continue
        for binding in bindings or []:
            if str(binding.get("HostPort") or "").isdigit():
                address = binding.get("HostIp") or "127.0.0.1"
                address = "127.0.0.1" if address in ("0.0.0.0", "::") else address  # noqa: S104
                if (address, int(binding["HostPort"])) not in found:
                    found.append((address, int(binding["HostPort"])))
    return found


def port_answers(address, port, timeout=1.0, linger=0.25):
    """Whether a server answers there (bounded: one connection, `timeout` s, then `linger` s).

    The engine's port proxy accepts every connection to a published port, and closes it at once
    when nothing listens in the container: accepted is not enough. A connection still open after
    `linger` seconds (the server waits for the client to speak) or one that sends data (a banner)
    has a server behind it.
    """
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.settimeout(linger)
            try:
                return conn.recv(1) != b""
            except socket.timeout:
                return True
    except OSError:
        return False


def last_line(text):
    """The last non-empty line of a probe's output (a traceback ends with its reason)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


class ContainerCheck:
    """A service is running (and healthy when it has a health check), and not crash-looping."""

    kind = "container"

    def __init__(self, service, allow_exited=False, min_uptime=0.0, wall_clock=time.time, answers=port_answers):
        self.service = service
        self.allow_exited = allow_exited
        # Stable before healthy: a container counts as up only after it ran this long without a
        # restart, health check or not (one that exits after 2 s was "running" at the first sample).
        self.min_uptime = min_uptime
        # The engine's StartedAt is the managed host's clock, and so is this (the module runs there).
        self.wall_clock = wall_clock
        # Without a health check, a service that publishes a port is up once that port answers.
        self.answers = answers
        self.first_restarts = None
        # What judged the service at the last sample: "health check", "port ..." or "uptime only".
        self.judged_by = None
        # (container start, address, port) that answered once: asked again on every sample, a
        # server that waits for its client would cost `linger` seconds each time.
        self.answered = set()

    def evaluate(self, states):
        """states: list of container_state dicts of this service's containers."""
        name = "service %s" % self.service
        if not states:
            return Result(name, self.kind, FAILED, "no container: the service is missing from the project")
        worst = None
        for st in states:
            result = self.evaluate_one(name, st)
            if worst is None or rank(result.status) > rank(worst.status):
                worst = result
        return worst

    def evaluate_one(self, name, st):
        restarts = st["restarts"] or 0
        if self.first_restarts is None:
            self.first_restarts = restarts
        # A crash loop can look "running" at every sample: the restart count gives it away.
        if restarts > self.first_restarts:
            return Result(
                name,
                self.kind,
                FAILED,
                "crash loop: restart count rose from %d to %d during the wait" % (self.first_restarts, restarts),
            )
        state = st["state"]
        if st.get("oom_killed"):
            return Result(name, self.kind, FAILED, "killed for lack of memory (OOMKilled)")
        if state == "exited":
            if self.allow_exited and st["exit_code"] == 0:
                return Result(name, self.kind, PASSED, "one-shot service exited 0 (allowed)")
            return Result(name, self.kind, FAILED, "exited with code %s" % st["exit_code"])
        if state == "restarting":
            return Result(
                name, self.kind, FAILED, "restarting (exit code %s, %d restarts)" % (st["exit_code"], restarts)
            )
        if state != "running":
            return Result(name, self.kind, FAILED if state in ("dead", "paused") else PENDING, "state is %s" % state)
        probe = " (last probe: %s)" % st["last_probe"] if st.get("last_probe") else ""
        if st["health"] == "unhealthy":
            return Result(name, self.kind, FAILED, "health check reports unhealthy" + probe)
        if st["health"] == "starting":
            return Result(name, self.kind, PENDING, "health check still starting" + probe)
        judged = "healthy by its health check" if st["health"] == "healthy" else "running (no health check)"
        self.judged_by = "health check" if st["health"] == "healthy" else "uptime only"
        if st["health"] != "healthy" and st.get("ports"):
            ports = ", ".join("%s:%d" % port for port in st["ports"])
            self.judged_by = "port " + ports
            silent = []
            for port in st["ports"]:
                if (st.get("started_at"), *port) in self.answered:
                    continue
                if self.answers(*port):
                    self.answered.add((st.get("started_at"), *port))
                else:
                    silent.append("%s:%d" % port)
            if silent:
                return Result(
                    name, self.kind, PENDING, "running (no health check), port %s does not answer" % ", ".join(silent)
                )
            judged = "running (no health check), its port %s answers" % ports
        started = parse_docker_time(st.get("started_at"))
        up = self.wall_clock() - started if started is not None else None
        if self.min_uptime > 0 and (up is None or up < self.min_uptime):
            return Result(
                name,
                self.kind,
                PENDING,
                "%s, up %s s of the %s s it must run without a restart"
                % (judged, "?" if up is None else "%.1f" % max(up, 0.0), self.min_uptime),
            )
        return Result(name, self.kind, PASSED, judged + (", up %.1f s" % up if up is not None else ""))


def rank(status):
    return {PASSED: 0, INCONCLUSIVE: 1, PENDING: 2, FAILED: 3}[status]


class HttpCheck:
    """A URL answers an expected status (and body) `successes` times in a row, one per round."""

    kind = "http"

    def __init__(self, url, status=200, body_regex=None, timeout=5, successes=1, validate_certs=True):
        self.url = url
        self.statuses = [int(s) for s in (status if isinstance(status, list) else [status])]
        self.body_re = re.compile(body_regex) if body_regex else None
        self.timeout = timeout
        self.successes = max(1, int(successes))
        self.validate_certs = validate_certs
        self.streak = 0

    def probe(self):
        """(status code or None, body or error text)."""
        try:
            resp = open_url(self.url, timeout=self.timeout, validate_certs=self.validate_certs, follow_redirects="none")
            return resp.getcode(), resp.read(65536).decode("utf-8", "replace")
        except Exception as exc:  # noqa: BLE001 - HTTPError carries a status, the rest is a failed connection
            code = getattr(exc, "code", None)
            if isinstance(code, int):
                try:
                    body = exc.read(65536).decode("utf-8", "replace")
                except Exception:  # noqa: BLE001
                    body = ""
                return code, body
            return None, str(getattr(exc, "reason", exc))

    def evaluate(self):
        name = "GET %s" % self.url
        code, body = self.probe()
        if code is None:
            self.streak = 0
            return Result(name, self.kind, PENDING, "connection failed: %s" % body)
        if code not in self.statuses:
            self.streak = 0
            return Result(
                name, self.kind, PENDING, "answered %d, expected %s" % (code, "/".join(map(str, self.statuses)))
            )
        if self.body_re and not self.body_re.search(body):
            self.streak = 0
            return Result(
                name,
                self.kind,
                PENDING,
                "answered %d but the body does not match %r (body: %r)" % (code, self.body_re.pattern, body[:200]),
            )
        self.streak += 1
        if self.streak < self.successes:
            return Result(name, self.kind, PENDING, "%d of %d successes in a row" % (self.streak, self.successes))
        return Result(name, self.kind, PASSED, "answered %d, %d times in a row" % (code, self.streak))


def lines_since(text, since):
    """The log lines (without their timestamps) written at or after `since` (epoch seconds)."""
    kept = []
    for line in text.splitlines():
        stamp, _sep, rest = line.partition(" ")
        try:
            when = parse_docker_time(stamp)
        except ValueError:
            when, rest = None, line  # not a timestamped line: keep it whole
        if since is None or when is None or when >= since:
            kept.append(rest)
    return "\n".join(kept)


class LogCheck:
    """No error pattern in a service's log since a given time (None: since its container started).

    A database service (`database`: its engine, or recognized by its image) also passes over the
    lines its engine writes for a client's own error (DATABASE_CLIENT_ERRORS).
    """

    kind = "logs"

    def __init__(self, service, fail_patterns, ignore_patterns, since=None, database=None):
        self.service = service
        self.fail = [re.compile(p) for p in fail_patterns]
        self.ignore = [re.compile(p) for p in ignore_patterns]
        self.since = since
        self.database = database

    def scan(self, text, database=None):
        ignore = self.ignore + _CLIENT_ERRORS_COMPILED.get(database or "", [])
        for line in text.splitlines():
            if any(p.search(line) for p in self.fail) and not any(p.search(line) for p in ignore):
                return line.strip()
        return None

    @staticmethod
    def run_start(state):
        """Where the current run's log lines begin (None: the whole log is this run's).

        A process can write its first line before Docker records StartedAt, so StartedAt itself
        would drop it. The previous run ended at FinishedAt: every line after that is this run's.
        """
        started = parse_docker_time(state.get("StartedAt"))
        finished = parse_docker_time(state.get("FinishedAt"))
        if finished is None or started is None:
            return None
        if finished < started:
            return finished + 1e-6
        return started - 0.5  # exited now: its run began shortly before StartedAt at the earliest

    def evaluate(self, engine, containers):
        name = "logs of %s" % self.service
        for container in containers:
            since = self.since if self.since is not None else self.run_start(container.attrs.get("State", {}))
            # The engine may give whole seconds only; that second may hold the last lines of the
            # previous run, so lines are also filtered by their own time.
            text = engine.logs(container, since=since, tail=LOG_TAIL_LINES)
            database = self.database or database_engine_of((container.attrs.get("Config") or {}).get("Image"))
            hit = self.scan(lines_since(text, since), database)
            if hit:
                return Result(name, self.kind, FAILED, "error in the log: %s" % hit[:300])
        return Result(name, self.kind, PASSED, "no error pattern")


class ExecCheck:
    """A command (argument list) in a service's container returns the expected code and output."""

    kind = "exec"

    def __init__(self, service, command, expect_rc=0, stdout_regex=None, user=None):
        self.service = service
        self.command = list(command)
        self.expect_rc = expect_rc
        self.stdout_re = re.compile(stdout_regex, re.M) if stdout_regex else None
        self.user = user

    def evaluate(self, engine, containers):
        name = "exec in %s: %s" % (self.service, " ".join(self.command))
        running = [c for c in containers if c.attrs.get("State", {}).get("Status") == "running"]
        if not running:
            return Result(name, self.kind, INCONCLUSIVE, "not run: no running container of %s" % self.service)
        rc, out, err = engine.exec(running[0], self.command, user=self.user)
        out, err = out.strip(), err.strip()
        if self.expect_rc is not None and rc != self.expect_rc:
            return Result(
                name, self.kind, PENDING, "returned %s, expected %s: %s" % (rc, self.expect_rc, (err or out)[:300])
            )
        if self.stdout_re and not self.stdout_re.search(out):
            return Result(name, self.kind, PENDING, "output %r does not match %r" % (out[:300], self.stdout_re.pattern))
        return Result(name, self.kind, PASSED, "returned %s%s" % (rc, ", output %r" % out[:80] if out else ""))


class HealthWaiter:
    """Samples the project until every check passes, a failure cannot heal, or time runs out.

    Between full rounds (every interval) a cheap poll of the containers' state and health, one
    API call every WATCH seconds, starts the next round as soon as anything changes: the verdict
    follows a container turning healthy by a fraction of a second, not by up to an interval.
    """

    WATCH = 0.2

    def __init__(
        self,
        engine,
        project,
        services,
        timeout,
        interval,
        container_checks,
        http_checks,
        log_checks,
        exec_checks,
        clock=time.monotonic,
        sleep=time.sleep,
    ):
        self.engine = engine
        self.project = project
        self.services = services
        self.timeout = timeout
        self.interval = interval
        self.container_checks = container_checks
        self.http_checks = http_checks
        self.log_checks = log_checks
        self.exec_checks = exec_checks
        self.clock = clock
        self.sleep = sleep

    def containers(self):
        found = {}
        for c in self.engine.project_containers(self.project):
            found.setdefault((c.labels or {}).get(SERVICE_LABEL), []).append(c)
        return found

    def state_signature(self):
        """What changes when a container starts, stops or changes health (one list call)."""
        return self.engine.project_states(self.project)

    def pause(self, seconds):
        """Sleep up to seconds; return early when the containers' state changes."""
        end = self.clock() + seconds
        before = self.state_signature()
        while True:
            left = end - self.clock()
            if left <= 0:
                return
            self.sleep(min(self.WATCH, left))
            if self.state_signature() != before:
                return

    def round(self):
        found = self.containers()
        states = {s: [container_state(c.attrs) for c in found.get(s, [])] for s in self.services}
        results = [check.evaluate(states[check.service]) for check in self.container_checks]
        permanent = any(r.status == FAILED for r in results)
        results += [check.evaluate(self.engine, found.get(check.service, [])) for check in self.log_checks]
        # HTTP checks run even while a container is pending: their answers say why. A data check
        # without a running container to run in is inconclusive.
        results += [check.evaluate() for check in self.http_checks]
        results += [check.evaluate(self.engine, found.get(check.service, [])) for check in self.exec_checks]
        permanent = permanent or any(r.status == FAILED for r in results)
        return states, results, permanent

    def wait(self):
        start = self.clock()
        deadline = start + self.timeout
        while True:
            round_start = self.clock()
            states, results, permanent = self.round()
            healthy = all(r.status == PASSED for r in results)
            now = self.clock()
            if healthy or permanent or now >= deadline:
                if not healthy:
                    # What is still pending at the deadline is a failure.
                    for r in results:
                        if r.status == PENDING:
                            r.status = FAILED
                return healthy, states, results, now - start
            self.pause(max(0.0, min(self.interval - (now - round_start), deadline - now)))


def summarize_services(states):
    out = {}
    for name, sts in states.items():
        if not sts:
            out[name] = {
                "state": "missing",
                "health": None,
                "restarts": 0,
                "exit_code": None,
                "image": None,
                "containers": 0,
            }
            continue
        first = sts[0]
        out[name] = {
            "state": first["state"],
            "health": first["health"],
            "restarts": max(s["restarts"] or 0 for s in sts),
            "exit_code": first["exit_code"],
            "image": first["image"],
            "containers": len(sts),
        }
    return out


class HealthInputError(Exception):
    """A service named that the project does not have, or a project with nothing to check."""


class ProjectHealth:
    """compose_health: build the checks from the module's options, wait, and say the verdict."""

    def __init__(self, params, engine, clock=time.time):
        self.params = params
        self.engine = engine
        # When the module started, on the managed host's clock: where the log scan starts by default.
        self.started = clock()

    def project_and_services(self):
        p = self.params
        unknown_engines = {
            s: e for s, e in ((p.get("logs") or {}).get("databases") or {}).items() if e not in DATABASE_CLIENT_ERRORS
        }
        if unknown_engines:
            raise HealthInputError(
                "logs.databases names %s: give each database service one of %s"
                % (
                    ", ".join("%s: %s" % item for item in sorted(unknown_engines.items())),
                    ", ".join(DATABASE_CLIENT_ERRORS),
                )
            )
        from_files = bool(p["project_src"] or p["files"])
        if from_files:
            model = Compose.from_params(self.engine, p).config()
            project = p["project_name"] or model.get("name")
            known = sorted(model.get("services", {}))
        else:
            project = p["project_name"]
            known = sorted(
                {(c.labels or {}).get(SERVICE_LABEL) for c in self.engine.project_containers(project)} - {None}
            )
        services = p["services"] or known
        unknown = sorted(set(services) - set(known)) if from_files else []
        if unknown:
            raise HealthInputError(
                "service(s) %s are not in project %s (it has %s)" % (", ".join(unknown), project, ", ".join(known))
            )
        if not services:
            raise HealthInputError("project %s has no service to check (no container of it exists)" % project)
        return project, services

    def waiter(self, project, services):
        p = self.params
        logs = p["logs"] or {}
        log_checks = []
        if logs.get("enabled", True):
            fail = logs.get("fail_patterns") or DEFAULT_FAIL_PATTERNS
            ignore = DEFAULT_IGNORE_PATTERNS if logs.get("ignore_patterns") is None else logs["ignore_patterns"]
            # From the step by default: a line weeks old (or the last run's) says nothing of this one.
            since = logs.get("since") if logs.get("since") is not None else self.started
            since = None if logs.get("whole_run") else since
            databases = logs.get("databases") or {}
            log_checks = [LogCheck(s, fail, ignore, since, databases.get(s)) for s in services]
        http_checks = [
            HttpCheck(
                h["url"],
                h.get("status", 200),
                h.get("body_regex"),
                h.get("timeout", 5),
                h.get("successes", 1),
                h.get("validate_certs", True),
            )
            for h in p["http"] or []
        ]
        exec_checks = [
            ExecCheck(e["service"], e["command"], e.get("expect_rc", 0), e.get("stdout_regex"), e.get("user"))
            for e in p["exec"] or []
        ]
        uptimes = p.get("min_uptime_services") or {}
        container_checks = [
            ContainerCheck(s, s in (p["allow_exited"] or []), float(uptimes.get(s, p.get("min_uptime") or 0)))
            for s in services
        ]
        return HealthWaiter(
            self.engine,
            project,
            services,
            p["timeout"],
            p["interval"],
            container_checks,
            http_checks,
            log_checks,
            exec_checks,
        )

    def run(self):
        project, services = self.project_and_services()
        waiter = self.waiter(project, services)
        healthy, states, results, elapsed = waiter.wait()
        failing = [r for r in results if r.status in (FAILED, INCONCLUSIVE)]
        if healthy:
            msg = "project %s is healthy after %.1f s (%d checks passed)" % (project, elapsed, len(results))
        else:
            msg = "project %s is NOT healthy after %.1f s: %s" % (
                project,
                elapsed,
                "; ".join("%s: %s" % (r.name, r.reason) for r in failing),
            )
        result = dict(
            changed=False,
            healthy=healthy,
            services=summarize_services(states),
            checks=[r.as_dict() for r in results],
            elapsed=round(elapsed, 3),
            msg=msg,
            project=project,
            # What each service was judged by, for a report an operator can weigh.
            judged_by={c.service: c.judged_by for c in waiter.container_checks if c.judged_by},
        )
        if self.params.get("downtime_since") is not None:
            answered = {k: float(v) for k, v in (self.params.get("downtime_answered") or {}).items()}
            routes = self.params.get("downtime_routes")
            if routes:
                routes = dict(
                    services=routes["services"],
                    switches=[(float(s["at"]), s["project"]) for s in routes["switches"]],
                )
            record = None
            if self.params.get("downtime_record"):
                try:
                    record = read_record(self.params["downtime_record"])
                except RecorderError as exc:
                    record = Record(error=str(exc))  # an incomplete measurement, not a failed verification
            result["downtime"] = measure(
                self.engine, project, self.params["downtime_since"], time.time(), answered, routes, record
            )
        return result
