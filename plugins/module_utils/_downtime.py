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

Behind a proxy (blue-green), a service's traffic goes to one compose project at a time, and the
project that receives it changes at each switch: the service is down while the project in effect
has no container of it serving (routed_windows).
"""

from __future__ import annotations

from ansible_collections.stackops.rollback.plugins.module_utils._docker import SERVICE_LABEL

DOWN_ACTIONS = ("kill", "die", "health_status: unhealthy")
HEALTHY = "health_status: healthy"


def service_windows(events, running, has_healthcheck, since=None, expected=()):
    """{service: [(down, up or None)]} from (time, container, service, action) events, oldest first.

    `running` is {container id: service} of containers that run now: those with no start, stop or
    health event in the window served throughout; `has_healthcheck` is {container id: bool}. A service in
    `expected` that no container serves at `since` is down from then (traffic sent to a project
    before its containers serve); any other service is only down once a serving container stops.
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
    for service in expected:
        if not up.get(service):
            down_since[service] = since
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


def routed_windows(windows_by_project, switches, services, since, until):
    """{service: [(down, up or None)]} for services behind a proxy, from each project's own windows.

    `switches` is [(at, project)] in time order: from `at` the services' traffic goes to that
    project (the first one's from `since`). Each moment counts against the project in effect then;
    pieces that meet across a switch are one window.
    """
    segments, floor = [], since
    for index, (at, project) in enumerate(switches):
        # A switch timed before the one it follows (two clocks) starts where that one's ended.
        start = since if index == 0 else max(at, floor)
        end = switches[index + 1][0] if index + 1 < len(switches) else until
        if end > start:
            segments.append((start, end, project))
            floor = end
    routed = {}
    for service in services:
        pieces = []
        for start, end, project in segments:
            for down, up in windows_by_project.get(project, {}).get(service, []):
                open_end = up is None and end >= until
                low, high = max(down, start), min(until if up is None else up, end)
                if high > low:
                    pieces.append([low, high, open_end])
        merged = []
        for low, high, open_end in sorted(pieces):
            if merged and low <= merged[-1][1]:
                merged[-1][1], merged[-1][2] = max(merged[-1][1], high), merged[-1][2] or open_end
            else:
                merged.append([low, high, open_end])
        if merged:
            routed[service] = [(low, None if open_end else high) for low, high, open_end in merged]
    return routed


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


def project_windows(engine, project, since, until, expected=(), record=None):
    """(service_windows of one project, the oldest event time its source holds): the events come from
    the recorder's `record` (_events.Record) when there is one, else from the engine's own history."""
    if record is not None:
        events, oldest = record.project_events(project, since, until), record.ready
    else:
        events, oldest = engine.project_events(project, since, until)
    # A removed container's health check shows in its events only.
    has_healthcheck = {container: True for _w, container, _s, action in events if action.startswith("health_status")}
    running = {}
    for container in engine.project_containers(project):
        attrs = container.attrs
        has_healthcheck[container.id] = bool((attrs.get("State") or {}).get("Health"))
        service = (container.labels or {}).get(SERVICE_LABEL)
        # service_windows takes one whose first event in the window is a start as not serving before it.
        if container.status == "running":
            running[container.id] = service
    return service_windows(events, running, has_healthcheck, since, expected), oldest


def measure(engine, project, since, until, answered=None, routes=None, record=None):
    """The downtime of a project's services between two epoch times, from the engine's records.

    `answered` ({service: epoch}) closes a window where the service was seen answering first.
    `routes` ({services, switches: [(at, project)]}) measures those services behind a proxy:
    against whichever project received their traffic at each moment (routed_windows).
    `record` (_events.Record), a recorder's file that followed the event stream over the window,
    is read instead of the engine's history, which keeps its last 256 events only.
    """
    windows, oldest = project_windows(engine, project, since, until, record=record)
    held = [oldest]
    if routes:
        by_project = {project: windows}
        for other in sorted({p for _at, p in routes["switches"]} - {project}):
            by_project[other], other_oldest = project_windows(
                engine, other, since, until, routes["services"], record=record
            )
            held.append(other_oldest)
        switches = [(since, project), *routes["switches"]]
        windows = {service: spans for service, spans in windows.items() if service not in routes["services"]}
        windows.update(routed_windows(by_project, switches, routes["services"], since, until))
    windows = apply_answers(windows, answered or {})
    result = summarize(windows, until)
    if record is not None:
        gap = record.gap(since, until)
        # followed: read from the stream as it happened, not from the engine's history afterwards.
        result.update(source="engine events", followed=True, complete=gap is None)
        if gap:
            result["gap"] = gap
    else:
        # The engine keeps its last 256 events only: a window older than them may have lost a stop.
        complete = all(t is not None and t <= since for t in held)
        result.update(source="engine events", followed=False, complete=complete)
        if not complete:
            result["gap"] = "the engine no longer holds the window's first events (it keeps its last 256)"
    result.update(since=round(since, 3), until=round(until, 3))
    return result
