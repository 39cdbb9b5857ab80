"""Downtime from the engine's records: each service's windows with no container serving."""

from __future__ import annotations

from ansible_collections.stackops.rollback.plugins.module_utils._downtime import (
    apply_answers,
    service_windows,
    summarize,
)

HEALTHY = "health_status: healthy"


def windows(events, running=None, healthcheck=None, until=100.0):
    return service_windows(events, running or {}, healthcheck or {}, until)


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
