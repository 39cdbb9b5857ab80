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
  - "Logs: each service's log since its container started has none of O(logs.fail_patterns)
    (unless a line also matches O(logs.ignore_patterns))."
  - "HTTP: each URL of O(http) answers an expected status, and body, O(http[].successes) rounds in a row."
  - "Data: each command of O(exec) run in a service container returns the expected code and output
    (for example a C(psql) query that must return rows)."
  - A failure that cannot heal (an exited container, a crash loop, an error in the logs) ends the wait
    at once. The verdict comes within one O(interval) of the stack becoming healthy.
  - The module never changes anything.
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.docker
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
  project_src:
    description:
      - Directory of the compose project. One of O(project_src) or O(project_name) is required.
    type: path
  project_name:
    description:
      - Compose project name. Defaults to the name Compose derives from O(project_src).
    type: str
  files:
    description:
      - Compose files, relative to O(project_src) or absolute.
    type: list
    elements: path
  env_files:
    description:
      - Environment files passed to Compose.
    type: list
    elements: path
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
        description: Scan from this time (epoch seconds) instead of the container's start.
        type: float
      fail_patterns:
        description: Regular expressions of error lines.
        type: list
        elements: str
        default:
          - '\bFATAL\b'
          - '\bpanic:'
          - 'Traceback \(most recent call last\)'
          - 'OutOfMemory'
          - '\bOOMKilled\b'
          - 'Segmentation fault'
      ignore_patterns:
        description: Regular expressions of lines to ignore even when they match O(logs.fail_patterns).
        type: list
        elements: str
        default: []
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
msg:
  description: The verdict, listing every failing check.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.stackops.rollback.plugins.module_utils._compose import (
    COMPOSE_PROJECT_ARGS,
    Compose,
    ComposeError,
)
from ansible_collections.stackops.rollback.plugins.module_utils._docker import DOCKER_COMMON_ARGS, get_client
from ansible_collections.stackops.rollback.plugins.module_utils._health import (
    DEFAULT_FAIL_PATTERNS,
    FAILED,
    INCONCLUSIVE,
    ContainerCheck,
    ExecCheck,
    HealthWaiter,
    HttpCheck,
    LogCheck,
    summarize_services,
)


class ComposeHealthChecker:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.client = get_client(module)

    def project_and_services(self):
        p = self.params
        if p["project_src"] or p["files"]:
            model = Compose.from_params(self.module).config()
            project = p["project_name"] or model.get("name")
            known = sorted(model.get("services", {}))
        else:
            project = p["project_name"]
            known = sorted(
                {
                    (c.labels or {}).get("com.docker.compose.service")
                    for c in self.client.containers.list(
                        all=True, filters={"label": "com.docker.compose.project=%s" % project}
                    )
                }
                - {None}
            )
        services = p["services"] or known
        unknown = sorted(set(services) - set(known)) if (p["project_src"] or p["files"]) else []
        if unknown:
            self.module.fail_json(
                msg="service(s) %s are not in project %s (it has %s)" % (", ".join(unknown), project, ", ".join(known)),
                healthy=False,
            )
        if not services:
            self.module.fail_json(
                msg="project %s has no service to check (no container of it exists)" % project, healthy=False
            )
        return project, services

    def run(self):
        p = self.params
        project, services = self.project_and_services()
        logs = p["logs"] or {}
        log_checks = []
        if logs.get("enabled", True):
            fail = logs.get("fail_patterns") or DEFAULT_FAIL_PATTERNS
            log_checks = [LogCheck(s, fail, logs.get("ignore_patterns") or [], logs.get("since")) for s in services]
        waiter = HealthWaiter(
            self.client,
            project,
            services,
            p["timeout"],
            p["interval"],
            [ContainerCheck(s, s in (p["allow_exited"] or [])) for s in services],
            [
                HttpCheck(
                    h["url"],
                    h.get("status", 200),
                    h.get("body_regex"),
                    h.get("timeout", 5),
                    h.get("successes", 1),
                    h.get("validate_certs", True),
                )
                for h in p["http"] or []
            ],
            log_checks,
            [
                ExecCheck(e["service"], e["command"], e.get("expect_rc", 0), e.get("stdout_regex"), e.get("user"))
                for e in p["exec"] or []
            ],
        )
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
        return dict(
            changed=False,
            healthy=healthy,
            services=summarize_services(states),
            checks=[r.as_dict() for r in results],
            elapsed=round(elapsed, 3),
            msg=msg,
            project=project,
        )


def main():
    argument_spec = dict(
        services=dict(type="list", elements="str"),
        allow_exited=dict(type="list", elements="str", default=[]),
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
                fail_patterns=dict(type="list", elements="str", default=list(DEFAULT_FAIL_PATTERNS)),
                ignore_patterns=dict(type="list", elements="str", default=[]),
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
    )
    argument_spec.update(COMPOSE_PROJECT_ARGS)
    argument_spec.update(DOCKER_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec, required_one_of=[("project_src", "project_name")], supports_check_mode=True
    )
    try:
        result = ComposeHealthChecker(module).run()
    except ComposeError as exc:
        module.fail_json(msg=str(exc), healthy=False)
    if not result["healthy"] and module.params["fail_on_unhealthy"]:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
