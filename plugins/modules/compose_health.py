#!/usr/bin/python
# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_health
short_description: One verdict on whether a compose stack is really serving
version_added: 1.0.0
description:
  - Waits until a compose project is healthy, or the time runs out, and says why not. It does what
    the field guide checks by eye after a rollback, as one verdict a role can act on.
  - "Containers: every expected service has a running container; health checks pass (C(starting)
    at the deadline fails); no crash loop (a restart count that rises during the wait fails, even
    when the container looks running at every sample); a one-shot service may exit 0 when listed
    in O(allow_exited)."
  - "Stable before healthy: each container counts as up only once it has run O(min_uptime) seconds
    without a restart, health check or not; one without a health check that publishes a TCP port must
    also answer on it. RV(judged_by) says what judged each service."
  - "Logs: each service's log since the module started (or O(logs.since); since its container started
    with O(logs.whole_run)) has none of O(logs.fail_patterns) (unless a line also matches
    O(logs.ignore_patterns)). A database service also passes over the lines its engine writes for a
    client's own error, such as a wrong password (O(logs.databases))."
  - "HTTP: each URL of O(http) answers an expected status, and body, O(http[].successes) rounds in a row."
  - "Data: each command of O(exec) run in a service container returns the expected code and output
    (for example a C(psql) query that must return rows)."
  - A failure that cannot heal (an exited container, a crash loop, an error in the logs) ends the wait
    at once. The verdict comes within one O(interval) of the stack becoming healthy.
  - The project is named by O(project_src) (and O(files)), or by O(project_name) alone for one that
    is deployed; one of them is required.
  - The module never changes anything.
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.compose_project
  - stackops.rollback.docker
  - stackops.rollback.ledger
  - stackops.rollback.ledger.lease
attributes:
  check_mode:
    support: full
    details: The module only reads; check mode gives the same verdict.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: The module only reads.
options:
  profiles:
    description:
      - Compose profiles to enable.
    type: list
    elements: str
  services:
    description:
      - Services expected to serve. Defaults to every service of the compose file (or, with only
        O(project_name), every service that has a container).
    type: list
    elements: str
  min_uptime:
    description:
      - Seconds each container must have run without a restart before it counts as up, whether it has a
        health check or not - a service that exits two seconds after it starts was "running" at the first
        sample. The verdict names what judged each service (its health check, or running alone) and how
        long it had been up.
    type: float
    default: 5
  min_uptime_services:
    description:
      - "O(min_uptime) for some services (service name to seconds), for example V({worker: 15}) for one that
        crashes only once it reaches its queue."
    type: dict
    default: {}
  allow_exited:
    description:
      - One-shot services that may have exited with code 0 (migrations, init jobs).
    type: list
    elements: str
    default: []
  timeout:
    description:
      - Seconds to wait for the stack to become healthy.
    type: float
    default: 60
  interval:
    description:
      - Seconds between two samples of every check.
    type: float
    default: 1
  http:
    description:
      - HTTP checks. Each must pass O(http[].successes) samples in a row.
    type: list
    elements: dict
    default: []
    suboptions:
      url:
        description: URL to GET.
        type: str
        required: true
      status:
        description: Expected status code, or a list of them.
        type: raw
        default: 200
      body_regex:
        description: A regular expression the body must match.
        type: str
      timeout:
        description: Seconds for one request.
        type: float
        default: 5
      successes:
        description: Samples in a row that must pass.
        type: int
        default: 1
      validate_certs:
        description: Check the server's TLS certificate.
        type: bool
        default: true
  logs:
    description:
      - Log scan of each expected service.
    type: dict
    default: {}
    suboptions:
      enabled:
        description: Scan the logs.
        type: bool
        default: true
      since:
        description:
          - Scan from this time (epoch seconds, on the managed host's clock, as
            RV(stackops.rollback.rollback_lock#module:host_time) gives it), for example the start of
            the step being verified.
          - Defaults to the moment the module started, so that a line written before the step, weeks
            ago or by the previous run, does not fail it.
        type: float
      whole_run:
        description:
          - Scan each container's log since its current run started instead, whatever O(logs.since) says.
        type: bool
        default: false
      databases:
        description:
          - "Database services and their engine (V(postgres), V(mariadb), V(mysql)), for example
            V({db: postgres}): their logs also pass over the lines the engine writes for a client's own
            error - a wrong password, a database or role that does not exist, a client that goes away
            or is turned away while the server starts or stops."
          - A service not listed is taken for a database when its image is named like one
            (V(postgres), V(postgis), V(timescaledb), V(mariadb), V(mysql), V(percona)).
        type: dict
        default: {}
      fail_patterns:
        description: Regular expressions of error lines.
        type: list
        elements: str
        default:
          - '\bFATAL\b'
          - '\bPANIC\b'
          - '\bpanic:'
          - 'Traceback \(most recent call last\)'
          - 'OutOfMemory'
          - '\bOOMKilled\b'
          - 'Segmentation fault'
      ignore_patterns:
        description:
          - Regular expressions of lines to ignore even when they match O(logs.fail_patterns).
          - The default passes over the FATAL lines PostgreSQL writes for a client session it ends or
            turns away while it stops or starts, which a rollback's own stop of a database causes.
        type: list
        elements: str
        default:
          - 'FATAL:\s+terminating connection due to administrator command'
          - 'FATAL:\s+the database system is (?:starting up|shutting down|not yet accepting connections)'
  exec:
    description:
      - Data checks run in a service container with C(docker exec), as argument lists (no shell).
    type: list
    elements: dict
    default: []
    suboptions:
      service:
        description: Service whose container runs the command.
        type: str
        required: true
      command:
        description: The command, as a list of arguments.
        type: list
        elements: str
        required: true
      expect_rc:
        description: Expected return code.
        type: int
        default: 0
      stdout_regex:
        description: A regular expression the output must match (multi-line).
        type: str
      user:
        description: User to run the command as.
        type: str
  downtime_since:
    description:
      - An epoch time (seconds) from which to measure each service's downtime from the engine's events,
        returned as RV(downtime). Set it just before the first step that stops anything (a backup's stop,
        a swap).
      - It must be read on the managed host, as the engine's events are timed there -
        RV(stackops.rollback.engine_events#module:host_time) or RV(stackops.rollback.rollback_lock#module:host_time),
        never the controller's C(now()), whose clock may be seconds off.
    type: float
  downtime_record:
    description:
      - With O(downtime_since), the file a recorder wrote while it followed the engine's event stream
        over the window (M(stackops.rollback.engine_events), its RV(stackops.rollback.engine_events#module:record)).
        The downtime is measured from it instead of the engine's history, which keeps its last 256 events
        only - on a busy host, seconds' worth.
      - C(complete) in RV(downtime) is then false only when the recorder was not following the stream over
        the whole window; C(gap) says why.
    type: path
  downtime_answered:
    description:
      - With O(downtime_since), when services were seen answering again, as
        M(stackops.rollback.compose_release) returns it with
        O(stackops.rollback.compose_release#module:state=replaced), in
        RV(stackops.rollback.compose_release#module:answered) - service name to epoch seconds.
      - A service's window closes at that moment when it falls inside the window, rather than at its
        next passing health check.
    type: dict
    default: {}
  downtime_routes:
    description:
      - With O(downtime_since), services whose traffic reaches them through a proxy that was switched
        between compose projects in the window (blue-green). Each moment counts against the project
        that received the traffic then, and a service is down while that project has none of its
        containers serving (or has not started them yet).
      - Before the first switch, O(project_name)'s own containers receive the traffic.
    type: dict
    suboptions:
      services:
        description: The services behind the proxy.
        type: list
        elements: str
        required: true
      switches:
        description:
          - The switches in time order.
        type: list
        elements: dict
        required: true
        suboptions:
          project:
            description: The compose project that receives the traffic from O(downtime_routes.switches[].at).
            type: str
            required: true
          at:
            description:
              - The epoch time the switch took effect, as
                M(stackops.rollback.caddy_upstream) returns it in
                RV(stackops.rollback.caddy_upstream#module:switched_at).
            type: float
            required: true
  fail_on_unhealthy:
    description:
      - Fail when the stack is not healthy at the deadline. With V(false), return the verdict in RV(healthy).
    type: bool
    default: true
requirements:
  - Docker SDK for Python on the managed host
  - Docker Compose v2 (>= 2.18)
"""

EXAMPLES = r"""
# The field guide's five checks after a rollback, as one task.
- name: 1. All containers running (docker compose ps)
  stackops.rollback.compose_health:
    project_src: /srv/shop
    logs:
      enabled: false

- name: 2. Health checks passing (docker compose ps --format json | grep -c healthy)
  stackops.rollback.compose_health:
    project_src: /srv/shop
    timeout: 120

- name: 3. Logs clean (docker compose logs --tail=50 --no-color)
  stackops.rollback.compose_health:
    project_src: /srv/shop
    logs:
      fail_patterns: ['\bERROR\b', '\bFATAL\b', 'Traceback']
      ignore_patterns: ['ERROR: relation "sessions" does not exist']

- name: 4. Application responding (curl -s http://localhost:8080/health)
  stackops.rollback.compose_health:
    project_src: /srv/shop
    http:
      - url: http://127.0.0.1:8080/health
        successes: 3
      - url: http://127.0.0.1:8080/version
        body_regex: '^v1\.4\.'

- name: 5. Data integrity (spot-check recent records in the database)
  stackops.rollback.compose_health:
    project_src: /srv/shop
    exec:
      - service: db
        command:
          - psql
          - -U
          - postgres
          - -d
          - shop
          - -tAc
          - select count(*) from orders where created > now() - interval '1 day'

        stdout_regex: '^[1-9][0-9]*$'

- name: Get the verdict without failing, to decide what to do
  stackops.rollback.compose_health:
    project_src: /srv/shop
    fail_on_unhealthy: false
  register: shop_health
"""

RETURN = r"""
healthy:
  description: Whether every check passed.
  returned: always
  type: bool
services:
  description: Per expected service - C(state), C(health), C(restarts), C(exit_code), C(image), C(containers).
  returned: always
  type: dict
checks:
  description:
    - Per check - C(name), C(kind) (container, http, logs, exec), C(status) (passed, failed,
      inconclusive) and C(reason).
  returned: always
  type: list
  elements: dict
elapsed:
  description: Seconds the module waited.
  returned: always
  type: float
judged_by:
  description:
    - What judged each service at the last sample - C(health check) (its own, passing), C(port <address:port>)
      (no health check; its published TCP port must answer), or C(uptime only) (no health check, no published
      port; running for O(min_uptime) without a restart is all that was seen).
  returned: always
  type: dict
  sample: {"app": "health check", "worker": "uptime only", "web": "port 127.0.0.1:8080"}
msg:
  description: The verdict, listing every failing check.
  returned: always
  type: str
downtime:
  description:
    - With O(downtime_since), the downtime measured from the engine's own records (container events)
      between that time and the verdict - C(seconds), the longest time any service had no container
      serving, and per service under C(services) its C(seconds), C(total_seconds) and C(windows)
      (C(down), C(up), C(seconds)).
    - C(complete) is false when the window began before the oldest event the engine still holds (it
      keeps its last 256, and health checks add three each) - a stop may then be missing from the figure;
      with O(downtime_record), when the recorder did not follow the stream over the whole window.
      C(gap) then says why. C(followed) says whether the events came from a recorder.
    - A container stops serving at its C(kill) or C(die) event (or an C(unhealthy) health status) and
      serves again at its first passing health check, or at its C(start) when it has no health check.
  returned: when downtime_since is set
  type: dict
  sample:
    seconds: 1.21
    complete: true
    services:
      app:
        seconds: 1.21
        total_seconds: 1.21
        windows: [{"down": 1764633600.1, "up": 1764633601.31, "seconds": 1.21}]
"""

from ansible_collections.stackops.rollback.plugins.module_utils._compose import COMPOSE_PROJECT_ARGS
from ansible_collections.stackops.rollback.plugins.module_utils._docker import EngineError, docker_module
from ansible_collections.stackops.rollback.plugins.module_utils._health import (
    DEFAULT_FAIL_PATTERNS,
    DEFAULT_IGNORE_PATTERNS,
    HealthInputError,
    ProjectHealth,
)
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import LEASE_ARGS, run_keeping_lease


def main():
    argument_spec = dict(
        services=dict(type="list", elements="str"),
        allow_exited=dict(type="list", elements="str", default=[]),
        min_uptime=dict(type="float", default=5),
        min_uptime_services=dict(type="dict", default={}),
        timeout=dict(type="float", default=60),
        interval=dict(type="float", default=1),
        http=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                url=dict(type="str", required=True),
                status=dict(type="raw", default=200),
                body_regex=dict(type="str"),
                timeout=dict(type="float", default=5),
                successes=dict(type="int", default=1),
                validate_certs=dict(type="bool", default=True),
            ),
        ),
        logs=dict(
            type="dict",
            default={},
            options=dict(
                enabled=dict(type="bool", default=True),
                since=dict(type="float"),
                whole_run=dict(type="bool", default=False),
                databases=dict(type="dict", default={}),
                fail_patterns=dict(type="list", elements="str", default=list(DEFAULT_FAIL_PATTERNS)),
                ignore_patterns=dict(type="list", elements="str", default=list(DEFAULT_IGNORE_PATTERNS)),
            ),
        ),
        exec=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                service=dict(type="str", required=True),
                command=dict(type="list", elements="str", required=True),
                expect_rc=dict(type="int", default=0),
                stdout_regex=dict(type="str"),
                user=dict(type="str"),
            ),
        ),
        fail_on_unhealthy=dict(type="bool", default=True),
        downtime_since=dict(type="float"),
        downtime_answered=dict(type="dict", default={}),
        downtime_record=dict(type="path"),
        downtime_routes=dict(
            type="dict",
            options=dict(
                services=dict(type="list", elements="str", required=True),
                switches=dict(
                    type="list",
                    elements="dict",
                    required=True,
                    options=dict(project=dict(type="str", required=True), at=dict(type="float", required=True)),
                ),
            ),
        ),
    )
    argument_spec.update(COMPOSE_PROJECT_ARGS)
    argument_spec.update(profiles=dict(type="list", elements="str"))
    argument_spec.update(LEASE_ARGS)
    module, engine = docker_module(argument_spec, required_one_of=[("project_src", "project_name")])
    try:
        result = run_keeping_lease(module, ProjectHealth(module.params, engine).run)
    except (HealthInputError, EngineError) as exc:
        module.fail_json(msg=str(exc), healthy=False)
    if not result["healthy"] and module.params["fail_on_unhealthy"]:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
