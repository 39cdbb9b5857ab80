"""Downtime from the engine's records: each service's windows with no container serving."""

from __future__ import annotations

from ansible_collections.stackops.rollback.plugins.module_utils._downtime import (
    apply_answers,
    measure,
    routed_windows,
    service_windows,
    summarize,
)
from ansible_collections.stackops.rollback.plugins.module_utils._events import Record

HEALTHY = "health_status: healthy"


def windows(events, running=None, healthcheck=None):
    return service_windows(events, running or {}, healthcheck or {})


def test_a_replaced_service_is_down_from_the_old_stop_to_the_new_first_passing_check():
    events = [
        (10.0, "old", "app", "kill"),
        (10.2, "old", "app", "die"),
        (10.3, "old", "app", "stop"),
        (10.5, "new", "app", "start"),
        (11.7, "new", "app", HEALTHY),
    ]
    assert windows(events, healthcheck={"new": True}) == {"app": [(10.0, 11.7)]}


def test_without_a_health_check_the_start_counts():
    events = [(10.0, "old", "app", "kill"), (10.1, "old", "app", "die"), (10.4, "new", "app", "start")]
    assert windows(events, healthcheck={"new": False}) == {"app": [(10.0, 10.4)]}


def test_a_database_stopped_for_a_backup_has_its_stop_window():
    events = [
        (5.0, "db1", "db", "kill"),
        (5.3, "db1", "db", "die"),
        (8.0, "db1", "db", "start"),
        (9.1, "db1", "db", HEALTHY),
        (12.0, "old", "app", "kill"),
        (13.0, "new", "app", HEALTHY),
    ]
    result = summarize(windows(events, healthcheck={"db1": True, "new": True}), 100.0)
    assert result["services"]["db"]["seconds"] == 4.1
    assert result["services"]["app"]["seconds"] == 1.0
    assert result["seconds"] == 4.1


def test_a_service_with_another_container_serving_is_not_down():
    events = [(10.0, "a", "web", "kill"), (10.1, "a", "web", "die")]
    assert windows(events, running={"b": "web"}) == {}


def test_health_check_exec_events_do_not_count():
    events = [
        (9.0, "db1", "db", "exec_create: pg_isready"),
        (9.1, "db1", "db", "exec_die"),
        (10.0, "db1", "db", "kill"),
        (11.0, "db1", "db", "start"),
        (11.5, "db1", "db", HEALTHY),
    ]
    assert windows(events, healthcheck={"db1": True}) == {"db": [(10.0, 11.5)]}


def test_a_service_still_down_at_the_end_has_an_open_window():
    events = [(10.0, "old", "app", "kill"), (10.5, "new", "app", "start")]
    result = summarize(windows(events, healthcheck={"new": True}), 20.0)
    assert result["services"]["app"]["windows"] == [{"down": 10.0, "up": None, "seconds": 10.0}]


def test_an_unhealthy_container_is_down_until_it_passes_again():
    events = [(10.0, "c", "app", "health_status: unhealthy"), (14.0, "c", "app", HEALTHY)]
    assert windows(events, healthcheck={"c": True}) == {"app": [(10.0, 14.0)]}


def test_nothing_stopped_is_no_downtime():
    assert summarize(windows([]), 1.0) == {"seconds": 0.0, "services": {}}


def test_a_service_seen_answering_is_up_from_that_moment():
    spans = {"app": [(10.0, 12.0), (20.0, None)], "db": [(5.0, 6.0)]}
    assert apply_answers(spans, {"app": 10.4}) == {"app": [(10.0, 10.4), (20.0, None)], "db": [(5.0, 6.0)]}
    # An answer outside every window (before the stop, after the health check) changes nothing.
    assert apply_answers(spans, {"app": 9.0, "db": 6.5}) == spans
    assert apply_answers(spans, {"app": 21.0})["app"] == [(10.0, 12.0), (20.0, 21.0)]


def test_a_service_expected_but_not_yet_serving_is_down_from_the_start():
    events = [(12.0, "g1", "web", "start"), (13.5, "g1", "web", HEALTHY)]
    assert service_windows(events, {}, {"g1": True}, since=10.0, expected=["web"]) == {"web": [(10.0, 13.5)]}
    # Not expected: a container that only starts in the window is no downtime.
    assert service_windows(events, {}, {"g1": True}, since=10.0) == {}


# Blue-green behind Caddy: blue (project shop) until 20, green (shop-green) until 40, then the
# target under the standard name (shop again).
SWITCHES = [(10.0, "shop"), (20.0, "shop-green"), (40.0, "shop")]


def test_a_side_down_while_it_has_no_traffic_is_no_downtime():
    by_project = {
        # blue stopped at 25, the target healthy at 35: both while green had the traffic.
        "shop": {"web": [(25.0, 35.0)]},
        "shop-green": {},
    }
    assert routed_windows(by_project, SWITCHES, ["web"], 10.0, 50.0) == {}


def test_traffic_sent_to_a_side_that_does_not_serve_is_downtime():
    by_project = {
        "shop": {"web": [(25.0, 35.0)]},
        # green crashed at 30 and came back at 33, while it had the traffic.
        "shop-green": {"web": [(30.0, 33.0)]},
    }
    assert routed_windows(by_project, SWITCHES, ["web"], 10.0, 50.0) == {"web": [(30.0, 33.0)]}


def test_a_switch_before_the_side_serves_counts_until_it_does():
    by_project = {
        # the target only passed its health check at 42, two seconds after it got the traffic.
        "shop": {"web": [(25.0, 42.0)]},
        "shop-green": {},
    }
    assert routed_windows(by_project, SWITCHES, ["web"], 10.0, 50.0) == {"web": [(40.0, 42.0)]}


def test_windows_that_meet_across_a_switch_are_one():
    by_project = {
        "shop": {"web": [(15.0, None)]},  # blue down at 15, for good
        "shop-green": {"web": [(10.0, 22.0)]},  # green only serving from 22
    }
    assert routed_windows(by_project, [(10.0, "shop"), (20.0, "shop-green")], ["web"], 10.0, 50.0) == {
        "web": [(15.0, 22.0)]
    }
    # Still down at the end: an open window.
    by_project["shop-green"]["web"] = [(10.0, None)]
    assert routed_windows(by_project, [(10.0, "shop"), (20.0, "shop-green")], ["web"], 10.0, 50.0) == {
        "web": [(15.0, None)]
    }


class FakeContainer:
    def __init__(self, cid, service, status="running", health=True):
        self.id, self.status = cid, status
        self.labels = {"com.docker.compose.service": service}
        self.attrs = {"State": {"Health": {"Status": "healthy"}} if health else {}}


class FakeEngine:
    """Events and containers per project, as Engine.project_events and project_containers give them."""

    def __init__(self, events, containers, oldest=0.0):
        self.events, self.containers, self.oldest = events, containers, oldest

    def project_events(self, project, since, until):
        return [e[1:] for e in self.events if e[0] == project and since <= e[1] <= until], self.oldest

    def project_containers(self, project):
        return self.containers.get(project, [])


def blue_green_engine(green_crash=False):
    events = [
        ("shop", 25.0, "blue", "web", "kill"),
        ("shop", 25.2, "blue", "web", "die"),
        ("shop", 30.0, "target", "web", "start"),
        ("shop", 35.0, "target", "web", HEALTHY),
        # Health checks of a container that serves throughout: no start, stop or status change.
        ("shop-green", 21.0, "green", "web", "exec_create: wget -q -O- http://localhost:8080/health"),
        ("shop-green", 21.1, "green", "web", "exec_die"),
    ]
    if green_crash:
        events += [("shop-green", 31.0, "green", "web", "die"), ("shop-green", 32.0, "green", "web", "start")]
    containers = {
        "shop": [FakeContainer("target", "web"), FakeContainer("db1", "db")],
        # Green without a health check: it serves again from its start.
        "shop-green": [FakeContainer("green", "web", health=False)],
    }
    return FakeEngine(events, containers)


def test_measure_behind_a_proxy_counts_only_the_side_in_effect():
    routes = {"services": ["web"], "switches": [(20.0, "shop-green"), (40.0, "shop")]}
    result = measure(blue_green_engine(), "shop", 10.0, 50.0, routes=routes)
    assert result["seconds"] == 0.0 and result["services"] == {} and result["complete"] is True
    # Measured without the routes, the same records show blue's stop to the target's check.
    assert measure(blue_green_engine(), "shop", 10.0, 50.0)["services"]["web"]["seconds"] == 10.0


def test_measure_behind_a_proxy_sees_the_side_in_effect_crash():
    routes = {"services": ["web"], "switches": [(20.0, "shop-green"), (40.0, "shop")]}
    result = measure(blue_green_engine(green_crash=True), "shop", 10.0, 50.0, routes=routes)
    assert result["services"]["web"]["windows"] == [{"down": 31.0, "up": 32.0, "seconds": 1.0}]


def test_measure_is_incomplete_when_the_engine_lost_older_events():
    engine = blue_green_engine()
    engine.oldest = 15.0
    routes = {"services": ["web"], "switches": [(20.0, "shop-green"), (40.0, "shop")]}
    assert measure(engine, "shop", 10.0, 50.0, routes=routes)["complete"] is False


def test_switches_out_of_order_never_count_a_moment_twice():
    # "c" only serves from 28; the switch to it is timed at 25, before the one to "b" at 30 (two clocks).
    by_project = {"a": {}, "b": {}, "c": {"web": [(10.0, 28.0)]}}
    switches = [(10.0, "a"), (30.0, "b"), (25.0, "c")]
    # "a" had the traffic until 30: c's time before it served is no downtime.
    assert routed_windows(by_project, switches, ["web"], 10.0, 50.0) == {}


def recorded(engine, ready=5.0, ended=None, error=None):
    """The engine's events as a recorder that followed the stream from `ready` wrote them."""
    record = Record(ready=ready, ended=ended, why="stopped" if ended else None, error=error)
    record.events = sorted((e[1], e[2], e[3], e[4], e[0]) for e in engine.events)
    return record


class ForgetfulEngine(FakeEngine):
    """An engine whose history lost everything (a busy host): only a recorder saw the events."""

    def project_events(self, project, since, until):
        return [], until


def test_measure_from_a_record_is_complete_where_the_engine_lost_the_window():
    engine = blue_green_engine(green_crash=True)
    routes = {"services": ["web"], "switches": [(20.0, "shop-green"), (40.0, "shop")]}
    forgetful = ForgetfulEngine(engine.events, engine.containers)
    lost = measure(forgetful, "shop", 10.0, 50.0, routes=routes)
    assert lost["complete"] is False and lost["followed"] is False and "last 256" in lost["gap"]
    followed = measure(forgetful, "shop", 10.0, 50.0, routes=routes, record=recorded(engine))
    assert followed["complete"] is True and followed["followed"] is True and "gap" not in followed
    assert followed["services"]["web"]["windows"] == [{"down": 31.0, "up": 32.0, "seconds": 1.0}]


def test_measure_from_a_record_that_broke_says_where():
    engine = blue_green_engine()
    broken = measure(engine, "shop", 10.0, 50.0, record=recorded(engine, ended=30.0, error="engine restarted"))
    assert broken["complete"] is False and "ended 20.000 s before the window closed" in broken["gap"], broken
    late = measure(engine, "shop", 10.0, 50.0, record=recorded(engine, ready=12.0))
    assert late["complete"] is False and "ready only 2.000 s after" in late["gap"], late
