"""The blue_green role and playbooks/rollback_blue_green.yml: app + PostgreSQL behind a real Caddy.

The shop runs v2 (blue) and rolls back to v1 (green) while a bounded load generator sends
requests to 127.0.0.1 through Caddy, which runs in a container on the host network (the field
guide's setup: green gets alternate host ports).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import testbed
from loadgen import LoadGenerator, longest_outage, run_under_probes, summarize
from proxy import HostCaddy, host_migrates_queued_connections
from shop import (
    LEDGER,
    BlueGreenShop,
    host_state,
    rolled_back_over_a_moved_latest_the_project_directory_keeps_v1,
    two_releases_with_archive_notes,
    versions_in_order,
)
from testbed import assert_ok
from writer import rows_written_throughout

# Tests that count failed requests under load are marked serial: they run alone (make integration's
# serial part), as another test's load would skew the count. The others run beside other tests.


def under_load(shop, action, min_requests=1500, within=30, margin=1.0):
    """Run action() with 120 requests/s going through Caddy, from `margin` s before it to at least
    `margin` s after it and until min_requests answers (at most `within` s more); return
    (its result, samples)."""
    load = LoadGenerator(shop.caddy.url + "/version", rate=120, max_requests=18000, max_seconds=150).start()
    try:
        time.sleep(margin)
        result = action()
        load.wait_for_samples(min_requests, within)
        time.sleep(margin)
    finally:
        samples = load.stop()
    return result, samples


class DbWatch:
    """Counts the shop's running db containers every 0.2 s while the rollback runs (bounded)."""

    def __init__(self, shop, max_seconds=300):
        self.shop, self.max_seconds = shop, max_seconds
        self.most = 0
        self.ids = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        ends = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < ends:
            # Both projects' db containers: the green one's names start with the shop's name too.
            mine = testbed.run(
                [
                    "docker",
                    "ps",
                    "-q",
                    "--filter",
                    "status=running",
                    "--filter",
                    "name=" + self.shop.stack.name,
                    "--filter",
                    "label=com.docker.compose.service=db",
                ]
            ).stdout.split()
            self.most = max(self.most, len(mine))
            self.ids.update(mine)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.mark.smoke
@pytest.mark.serial
def test_rollback_under_load_fails_no_request_and_keeps_one_database(bg_shop, monkeypatch):
    # A controller east of UTC: a window opened an hour early would take in the deploys before it.
    monkeypatch.setenv("TZ", "Europe/Berlin")
    shop = bg_shop
    v1 = shop.deploy("v1")
    shop.write("before v2")
    v2 = shop.deploy("v2")
    shop.write("written by v2")
    assert shop.served() == "v2"

    db = DbWatch(shop)

    events = testbed.EngineEventCount()

    def watched_rollback():
        with db, events:
            return shop.rollback()

    # The load goes on after the finalize until there are enough samples.
    result, samples = under_load(shop, watched_rollback, min_requests=5200, within=60, margin=2.0)
    summary = summarize(samples)
    print("blue-green rollback under load: %s" % summary)
    assert_ok(result)
    assert summary["requests"] >= 5000 and summary["rate"] >= 100, summary
    assert summary["failed"] == 0, summary
    assert versions_in_order(samples) == ["v2", "v1"]
    assert db.most == 1 and len(db.ids) == 1, "the database ran as %d containers (%s)" % (db.most, db.ids)
    assert shop.rows() == ["before v2", "written by v2"]
    # The host looks like a normal deployment of v1: no green left, Caddy on the original port.
    assert shop.containers(shop.stack.name + "-green") == []
    assert shop.caddy.running_dials() == [["127.0.0.1:%d" % shop.port]]
    assert shop.version() == "v1"
    listing = shop.info()
    assert listing["current"]["id"] == v1
    assert "rolled back blue-green from %s (v2) to %s (v1)" % (v2, v1) in result.stdout
    # Measured from the engine's event stream, followed over the window, and Caddy's confirmed
    # switches: complete however many events the engine emitted (it keeps its last 256), and within
    # 0.3 s of the probes' 0.
    details = listing["history"][-1]["details"]
    print("%d engine events during the run" % events.count)
    assert "measured from engine events and the switches Caddy confirmed" in result.stdout, result.stdout[-3000:]
    assert float(details["downtime_seconds"]) < 0.3 and details["downtime_services"] == {}, details
    # Stable before healthy: the report says what judged the services that moved.
    assert "verified by: app: health check" in result.stdout, result.stdout[-3000:]


def rolled_back_under_probes(shop, **variables):
    """v1, v2 deployed, then rolled back with 50 requests/s through Caddy from 1 s before to 1 s
    after; returns (the playbook's result, the reported downtime, the probes' longest outage)."""
    shop.deploy("v1")
    shop.deploy("v2")
    result, samples = run_under_probes(shop.caddy.url + "/version", lambda: shop.rollback(**variables))
    assert_ok(result)
    assert shop.served() == "v1"
    details = shop.info()["history"][-1]["details"]
    assert "measured from engine events and the switches Caddy confirmed" in result.stdout, result.stdout[-3000:]
    reported, probed = float(details["downtime_seconds"]), longest_outage(samples)
    assert summarize(samples)["requests"] > 100, summarize(samples)
    assert abs(reported - probed) <= 0.3, (reported, probed, summarize(samples))
    return result, reported, probed


@pytest.mark.serial
@pytest.mark.parametrize("offset", [30, -30], ids=["controller-30s-ahead", "controller-30s-behind"])
def test_a_controller_clock_off_the_hosts_changes_neither_the_downtime_nor_the_verdict(bg_shop, offset):
    """The window and the switches' times are the managed host's: the controller's clock, 30 s
    ahead or behind, changes neither the verdict nor the downtime the probes see (none)."""
    _result, reported, probed = rolled_back_under_probes(bg_shop, clock_offset=offset)
    print("controller clock %+d s: down %.3f s reported, %.3f s seen by the probes" % (offset, reported, probed))


@pytest.mark.serial
def test_on_a_busy_engine_the_downtime_is_complete_and_matches_the_probes(bg_shop, compose_stack, images):
    """30 health-checked containers checking every second: the engine's own history holds about 3 s,
    so the window is read from its event stream, followed from the first switch."""
    busy = compose_stack(testbed.BUSY_ENGINE_COMPOSE.format(busybox=images["BUSYBOX_IMAGE"]))
    busy.up()
    events = testbed.EngineEventCount()
    with events:
        _result, reported, probed = rolled_back_under_probes(bg_shop)
    print("busy engine, %d events: down %.3f s reported, %.3f s seen by the probes" % (events.count, reported, probed))
    assert events.count > testbed.ENGINE_EVENTS_KEPT, "the engine was not busy: %d events" % events.count


@pytest.mark.serial
def test_unhealthy_green_is_removed_and_blue_keeps_serving(bg_shop):
    shop = bg_shop
    broken = shop.deploy_unrecorded_broken()
    v2 = shop.deploy("v2")
    caddyfile = shop.caddy.caddyfile.read_bytes()
    dials = shop.caddy.running_dials()

    result, samples = under_load(shop, lambda: shop.rollback(blue_green_target=broken, blue_green_health_timeout=15))
    summary = summarize(samples)
    print("unhealthy green under load: %s" % summary)
    assert result.returncode != 0, result.stdout[-3000:]
    assert "blue (release %s) and Caddy were not touched: blue still serves" % v2 in result.stdout, result.stdout[
        -5000:
    ]
    assert summary["failed"] == 0 and summary["requests"] >= 1500, summary
    assert versions_in_order(samples) == ["v2"]
    assert shop.caddy.caddyfile.read_bytes() == caddyfile
    assert shop.caddy.running_dials() == dials
    assert shop.containers(shop.stack.name + "-green") == []
    assert shop.info()["lock"] is None
    assert shop.info()["current"]["id"] == v2


@pytest.mark.serial
def test_target_not_answering_through_caddy_switches_back_to_blue(bg_shop):
    shop = bg_shop
    shop.deploy("v1")
    v2 = shop.deploy("v2")
    shop.write("kept")
    caddyfile = shop.caddy.caddyfile.read_text()

    result, samples = under_load(shop, lambda: shop.rollback(blue_green_proxy_expect="^no-such-version$"))
    summary = summarize(samples)
    print("failure after the switch, under load: %s" % summary)
    assert result.returncode != 0, result.stdout[-3000:]
    assert "FAILED at step 'verify through Caddy'" in result.stdout, result.stdout[-5000:]
    assert "Caddy was switched back to blue (release %s)" % v2 in result.stdout
    assert summary["failed"] == 0 and summary["requests"] >= 1500, summary
    # Traffic went to green (v1) and came back to blue (v2).
    assert versions_in_order(samples) in (["v2", "v1", "v2"], ["v2"])
    assert versions_in_order(samples)[-1] == "v2"
    assert shop.caddy.caddyfile.read_text() == caddyfile
    assert shop.caddy.running_dials() == [["127.0.0.1:%d" % shop.port]]
    assert shop.containers(shop.stack.name + "-green") == []
    assert shop.rows() == ["kept"]
    assert shop.audit()[-1]["event"] == "failed_rollback"


@pytest.mark.parametrize(
    "phase",
    ["planned", "green_started", "switched_to_alternate", "blue_stopped", "primary_started", "switched_to_primary"],
)
def test_run_killed_at_a_step_is_finished_by_the_next_run(bg_shop, tmp_path, phase):
    shop = bg_shop
    v1 = shop.deploy("v1")
    shop.deploy("v2")
    shop.write("kept")

    log = tmp_path / "killed-run.log"
    left = shop.killed_when(shop.start_rollback(log), log, lambda lock: lock.get("phase") == phase)
    assert left.get("phase") == phase, "the lock does not record phase %s" % phase

    result = shop.rollback()
    assert_ok(result)
    assert "it was rolling back from release" in result.stdout
    assert shop.served() == "v1"
    assert shop.version() == "v1"
    assert shop.containers(shop.stack.name + "-green") == []
    assert shop.caddy.running_dials() == [["127.0.0.1:%d" % shop.port]]
    assert [state for service, _image, state in shop.containers() if service == "db"] == ["running"]
    assert shop.rows() == ["kept"]
    listing = shop.info()
    assert listing["current"]["id"] == v1 and listing["lock"] is None


def rollback_breaking_blues_compose_file(shop, damage):
    """A rollback during which damage(path) breaks blue's compose file once Caddy has switched
    to green (as a deploy running beside it would), numbered rows written throughout and none
    lost; it must fail at blue's stop. The drain gives the damage time to land before the stop."""
    compose = shop.dir / "compose.yml"
    damaged = []

    def damage_once_switched():
        testbed.wait_for(lambda: (shop.lock() or {}).get("phase") == "switched_to_alternate", 180, "the switch")
        damage(compose)
        damaged.append(True)

    thread = threading.Thread(target=damage_once_switched, daemon=True)
    with rows_written_throughout(shop.stack.container_id("db")):
        thread.start()
        result = shop.rollback(blue_green_drain_seconds=5)
        thread.join(timeout=5)
    assert damaged, "the compose file was not damaged during the rollback"
    assert result.returncode != 0, result.stdout[-3000:]
    assert "FAILED at step 'stop blue'" in result.stdout, result.stdout[-5000:]
    return result


def test_failing_stop_of_blue_puts_blue_back_with_a_record_and_every_row(bg_shop):
    """Blue's stop fails (its compose file is damaged once Caddy has switched to green, as a deploy
    running beside the rollback would): blue is started again on the original ports and gets the
    traffic back, green goes, a failed_rollback is recorded, every acknowledged row is kept, the
    lock is released and the next run converges."""
    shop = bg_shop
    v1 = shop.deploy("v1")
    v2 = shop.deploy("v2")
    result = rollback_breaking_blues_compose_file(shop, lambda compose: compose.write_text("services: [not compose\n"))
    assert "Blue (release %s) was started again on the original" % v2 in result.stdout, result.stdout[-5000:]
    assert shop.served() == "v2" and shop.version() == "v2"
    assert shop.caddy.running_dials() == [["127.0.0.1:%d" % shop.port]]
    assert shop.containers(shop.stack.name + "-green") == []
    record = shop.audit()[-1]
    assert record["event"] == "failed_rollback" and record["details"]["failed_step"] == "stop blue", record
    listing = shop.info()
    assert listing["current"]["id"] == v2 and listing["lock"] is None, listing

    again = shop.rollback()
    assert_ok(again)
    assert shop.served() == "v1" and shop.info()["current"]["id"] == v1


def test_way_back_that_fails_too_keeps_its_plan_and_the_next_run_finishes_it(bg_shop):
    """Blue's stop fails and so does putting blue back (the compose file became a directory once
    Caddy switched to green, which no restore can write over): the report names both failures and
    where the traffic goes (green, which serves), one failed_rollback record holds both, every
    acknowledged row is kept, and the lock keeps the plan (put blue back) marked unfinished. Once
    the file is put right, the next run takes the lock over at once and ends on blue."""
    shop = bg_shop
    v1 = shop.deploy("v1")
    v2 = shop.deploy("v2")
    compose = shop.dir / "compose.yml"
    original = compose.read_text()

    def directory(path):
        path.unlink()
        path.mkdir()

    result = rollback_breaking_blues_compose_file(shop, directory)
    assert "Putting blue (release %s) back FAILED too" % v2 in result.stdout, result.stdout[-5000:]
    assert "Caddy sends the traffic to green" in result.stdout and "The project lock keeps the plan" in result.stdout
    assert shop.served() == "v1"
    lock = shop.lock()
    assert lock and lock["unfinished"] and lock["plan"] == {"from": v2, "to": v2}, lock
    # The ledger's record reads the project's files, broken here: the audit line stands for it.
    assert "could NOT be recorded in the ledger" in result.stdout, result.stdout[-4000:]
    record = shop.audit()[-1]
    assert record["event"] == "failed_rollback" and record["details"]["failed_step"] == "stop blue", record
    assert record["details"]["undo_failure"] and record["details"]["reason"] != record["details"]["undo_failure"]
    listing = shop.info()
    assert (listing["current"]["id"], listing["previous"]["id"]) == (v2, v1), listing

    compose.rmdir()
    compose.write_text(original)
    shop.rollback_finishing_an_unfinished_plan(v2, within=240)
    assert shop.served() == "v2" and shop.version() == "v2"
    assert shop.caddy.running_dials() == [["127.0.0.1:%d" % shop.port]]
    assert shop.containers(shop.stack.name + "-green") == []
    listing = shop.info()
    assert (listing["current"]["id"], listing["lock"]) == (v2, None), listing


def test_second_copy_of_a_service_with_a_volume_is_refused_and_nothing_changes(bg_shop):
    shop = bg_shop
    shop.deploy("v1")
    v2 = shop.deploy("v2")
    caddyfile = shop.caddy.caddyfile.read_bytes()
    before = shop.containers()

    result = shop.rollback(blue_green_services=["app", "db"])
    assert result.returncode != 0
    volume = "it mounts volume dbdata,"
    assert "second copy of service db" in result.stdout and volume in result.stdout, result.stdout[-4000:]
    assert shop.containers() == before
    assert shop.containers(shop.stack.name + "-green") == []
    assert shop.caddy.caddyfile.read_bytes() == caddyfile
    assert shop.served() == "v2"
    listing = shop.info()
    assert listing["current"]["id"] == v2 and listing["lock"] is None
    refused = shop.audit()[-1]
    assert refused["event"] == "refused_rollback" and volume in refused["details"]["reason"], refused


def test_the_whole_project_is_rolled_back_env_file_overlay_and_profile(bg_shop):
    """COMPOSE_FILE in .env adds a production overlay (an environment value per release, the app in a
    profile that COMPOSE_PROFILES enables), and the app reads a service env_file whose content changes
    between releases: green is started from them all, and after the rollback the project directory
    runs v1 with v1's files, even for a plain compose up."""
    shop = bg_shop
    settings = {"COMPOSE_FILE": "compose.yml:compose.prod.yml", "COMPOSE_PROFILES": "web"}
    overlay = "services:\n  app:\n    profiles: [web]\n    environment:\n      MODE: prod-%s\n"
    releases = {}
    for tag in ("v1", "v2"):
        (shop.dir / "compose.prod.yml").write_text(overlay % tag)
        (shop.dir / "app-extra.env").write_text("GREETING=hello-%s\n" % tag)
        releases[tag] = shop.deploy(tag, compose_settings=settings)
    assert shop.stack.container_env("app")["MODE"] == "prod-v2"

    result = shop.rollback()
    assert_ok(result)
    assert "rolled back blue-green from %s (v2) to %s (v1)" % (releases["v2"], releases["v1"]) in result.stdout
    assert (shop.dir / "app-extra.env").read_text() == "GREETING=hello-v1\n"
    assert (shop.dir / "compose.prod.yml").read_text() == overlay % "v1"
    for attempt in ("after the rollback", "after a plain docker compose up in the project directory"):
        env = shop.stack.container_env("app")
        assert (env.get("GREETING"), env.get("MODE")) == ("hello-v1", "prod-v1"), (attempt, env)
        assert shop.served() == "v1", attempt
        shop.stack.up()


def test_check_mode_prints_the_plan_and_changes_nothing_anywhere(bg_shop):
    """--check --diff renders green for real (in a temporary folder) and prints the plan; the ledger,
    the project directory, Caddy's file and every container of the project are as they were."""
    shop = bg_shop
    v1 = shop.deploy("v1")
    v2 = shop.deploy("v2")
    plans = set(Path(tempfile.gettempdir()).glob("stackops-green-plan-*"))
    before = host_state(shop)
    result = shop.rollback(check=True, diff=True)
    assert_ok(result)
    assert "from release %s (v2)" % v2 in result.stdout and "to   release %s (v1)" % v1 in result.stdout
    assert re.search(r"green copies: app on ports 127\.0\.0\.1:\d+; single: db", result.stdout), result.stdout[-4000:]
    assert host_state(shop) == before, "check mode changed the ledger, the project directory, Caddy or a container"
    assert set(Path(tempfile.gettempdir()).glob("stackops-green-plan-*")) == plans, "the plan's folder was left"
    assert shop.served() == "v2"


@pytest.mark.parametrize("where", ["image", "variable"])
def test_a_tag_moved_since_brings_back_the_old_image_and_the_project_directory_keeps_it(bg_shop, images, where):
    rolled_back_over_a_moved_latest_the_project_directory_keeps_v1(bg_shop, images, where, bg_shop.served)


@pytest.fixture
def bind_mounted_bg_shop(compose_stack, images, free_port, tmp_path):
    """The shop with its database on a relative bind mount, a second one on an absolute bind mount
    outside the project, and a read-only config mount."""
    port = free_port()
    archive_dir = tmp_path / "archive-pgdata"
    compose = testbed.shop_on_bind_mounts(images["POSTGRES_IMAGE"], images["APP_IMAGE"], port, archive_dir)
    stack = compose_stack(compose, files={"conf/shop.ini": "[shop]\n"})
    with host_migrates_queued_connections():
        caddy = HostCaddy(compose_stack, images, tmp_path / "proxy", stack.name, "127.0.0.1:%d" % port)
        shop = BlueGreenShop(stack, port, tmp_path, caddy)
        shop.archive_dir = archive_dir
        yield shop
    shutil.rmtree(LEDGER / "projects" / stack.name, ignore_errors=True)


def test_a_database_on_a_bind_mount_stays_single_and_green_runs_on_the_project_s_files(bind_mounted_bg_shop):
    """No second PostgreSQL on ./pgdata: the database keeps running once, its rows kept; green's
    relative config mount is the project directory's, not an empty folder of the staging area."""
    shop = bind_mounted_bg_shop
    pgdata, conf = str(shop.dir / "pgdata"), str(shop.dir / "conf")
    v2 = two_releases_with_archive_notes(shop)
    servers = {d: testbed.servers_on(d) for d in (pgdata, str(shop.archive_dir))}
    assert all(len(ids) == 1 for ids in servers.values()), servers

    duplicate = shop.rollback(blue_green_services=["app", "db"])
    assert duplicate.returncode != 0
    assert "second copy of service db: it mounts directory %s" % pgdata in duplicate.stdout, duplicate.stdout[-4000:]
    assert shop.containers(shop.stack.name + "-green") == [] and shop.served() == "v2"

    result = shop.rollback()
    assert_ok(result)
    assert "single: archive, db" in result.stdout, result.stdout[-4000:]
    assert "rolled back blue-green from %s (v2)" % v2 in result.stdout, result.stdout[-4000:]
    assert shop.served() == "v1" and shop.rows() == ["row 1", "row 2"]
    assert testbed.archive_rows(shop.stack) == 2
    assert {d: testbed.servers_on(d) for d in servers} == servers, "a database server was started again or twice"
    green = json.loads((LEDGER / "projects" / shop.stack.name / "green.json").read_text())
    assert sorted(green["services"]) == ["app"], green["services"].keys()
    mounts = {m["target"]: m["source"] for m in green["services"]["app"]["volumes"]}
    assert mounts == {"/etc/shop": conf}, mounts


def test_green_listens_on_127_0_0_1_and_a_taken_offset_port_is_replaced_by_a_free_one(
    compose_stack, images, free_port, tmp_path
):
    """The primary publishes on every interface; green, rendered by compose_alternate and started,
    publishes on 127.0.0.1 only, and on a free port when the offset one is taken."""
    port = free_port()
    stack = compose_stack(
        testbed.SHOP_COMPOSE.format(postgres=images["POSTGRES_IMAGE"], app=images["APP_IMAGE"], port=port).replace(
            '"127.0.0.1:%d:8080"' % port, '"%d:8080"' % port
        ),
        {".env": "APP_TAG=v1\nDB_PASSWORD=pw-shop\nAPP_SECRET=s\n"},
    )
    stack.up()
    offset = free_port() - port
    with socket.socket() as taken:  # something already listens on the offset port
        taken.bind(("127.0.0.1", port + offset))
        taken.listen()
        rendered = testbed.run_module(
            "compose_alternate",
            dict(
                project_src=str(stack.dir),
                project_name=stack.name,
                alternate_name=stack.name + "-green",
                services=["app"],
                port_offset=offset,
                dest=str(tmp_path / "green.json"),
            ),
        )
        assert not rendered.get("failed"), rendered
        (moved,) = rendered["ports"]
        assert moved["chosen"] and moved["alternate"] != port + offset, moved
        assert moved["alternate_ip"] == "127.0.0.1", moved
        green = ["docker", "compose", "-p", stack.name + "-green", "-f", str(tmp_path / "green.json")]
        try:
            testbed.run([*green, "up", "-d", "--wait"], timeout=180)
            published = testbed.run([*green, "port", "app", "8080"]).stdout.strip()
            assert published == "127.0.0.1:%d" % moved["alternate"], published
            testbed.wait_http("http://127.0.0.1:%d/version" % moved["alternate"], body_contains="v1")
        finally:
            testbed.run([*green, "down", "--timeout", "5"], check=False)
