# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Downtime measured from the engine's own records, pure: when each service of a project had no
container serving, from its containers' events (Engine.project_events).

A container stops serving when the engine signals it (`kill`) or it exits (`die`), or when its
health check turns `unhealthy`. It serves again from its first passing health check
(`health_status: healthy`), or, for a container without a health check, from its `start`.
A service is down while none of its containers serves: the window from the last one going down
to the first one serving again. That covers a service replaced by a rollback (the old
container's stop to the replacement's first passing check) and a service stopped for a backup
(its stop window) alike. A service seen answering earlier than its next health check (the
caller asked it) serves again from that moment.
"""

from __future__ import annotations

from ansible_collections.stackops.rollback.plugins.module_utils._docker import SERVICE_LABEL

DOWN_ACTIONS = ("kill", "die", "health_status: unhealthy")
HEALTHY = "health_status: healthy"


def service_windows(events, running, has_healthcheck, until):
    """{service: [(down, up or None)]} from (time, container, service, action) events, oldest first.

    `running` is {container id: service} of containers that serve now and had no event in the
    window (they served throughout); `has_healthcheck` is {container id: bool} for the containers
    that exist now (a removed container only ever goes down).
    """
    up = {}  # service -> containers serving
    first_action = {}
    events = [e for e in events if e[3] in DOWN_ACTIONS or e[3] in ("start", HEALTHY)]
    for _when, container, service, action in events:
        if container not in first_action:
            first_action[container] = (service, action)
    for container, (service, action) in first_action.items():
        # A container whose first event is going down was serving when the window began.
        if action in DOWN_ACTIONS:
            up.setdefault(service, set()).add(container)
    for container, service in running.items():
        if container not in first_action:
            up.setdefault(service, set()).add(container)
    windows, down_since = {}, {}
    for when, container, service, action in events:
        if service is None:
            continue
        serving = up.setdefault(service, set())
        if action in DOWN_ACTIONS:
            if container in serving:
                serving.discard(container)
                if not serving:
                    down_since[service] = when
        elif (action == HEALTHY or (action == "start" and not has_healthcheck.get(container, False))) and (
            container not in serving
        ):
            serving.add(container)
            if service in down_since:
                windows.setdefault(service, []).append((down_since.pop(service), when))
    for service, since in down_since.items():
        windows.setdefault(service, []).append((since, None))
    return windows


def apply_answers(windows, answered):
    """Close each service's window at the moment it first answered, when that falls inside it.

    A health check runs every few seconds; the caller that asked the service itself (compose_release
    first_answer, every 20 ms) knows better when it served again.
    """
    closed = {}
    for service, spans in windows.items():
        at = answered.get(service)
        inside = [at is not None and down <= at and (up is None or at < up) for down, up in spans]
        closed[service] = [(down, at) if early else (down, up) for (down, up), early in zip(spans, inside)]
    return closed


def summarize(windows, until):
    """{seconds: the longest unavailability of any service, services: {service: {seconds, windows}}}."""
    services = {}
    for service, spans in sorted(windows.items()):
        lengths = [((up if up is not None else until) - down) for down, up in spans]
        services[service] = {
            "seconds": round(max(lengths), 3),
            "total_seconds": round(sum(lengths), 3),
            "windows": [
                {"down": round(down, 3), "up": round(up, 3) if up is not None else None, "seconds": round(length, 3)}
                for (down, up), length in zip(spans, lengths)
            ],
        }
    longest = max((s["seconds"] for s in services.values()), default=0.0)
    return {"seconds": longest, "services": services}


def measure(engine, project, since, until, answered=None):
    """The downtime of a project's services between two epoch times, from the engine's records;
    `answered` ({service: epoch}) closes a window where the service was seen answering first."""
    events, oldest = engine.project_events(project, since, until)
    with_events = {container for _w, container, _s, _a in events}
    running, has_healthcheck = {}, {}
    for container in engine.project_containers(project):
        attrs = container.attrs
        has_healthcheck[container.id] = bool((attrs.get("State") or {}).get("Health"))
        service = (container.labels or {}).get(SERVICE_LABEL)
        if container.status == "running" and container.id not in with_events:
            running[container.id] = service
    windows = apply_answers(service_windows(events, running, has_healthcheck, until), answered or {})
    result = summarize(windows, until)
    # The engine keeps its last 256 events only: a window older than them may have lost a stop.
    complete = oldest is not None and oldest <= since
    result.update(since=round(since, 3), until=round(until, 3), source="engine events", complete=complete)
    return result
