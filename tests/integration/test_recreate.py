"""The recreate role and playbooks/rollback_recreate.yml against real stacks (app + PostgreSQL)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import testbed
from loadgen import longest_outage, run_under_probes, summarize
from shop import (
    LEDGER,
    RecreateShop,
    host_state,
    rolled_back_over_a_moved_latest_the_project_directory_keeps_v1,
    two_releases_with_archive_notes,
)
from testbed import assert_ok
from writer import rows_written_throughout

PLAYBOOK = testbed.REPO_ROOT / "playbooks" / "rollback_recreate.yml"
DEPLOY_EXAMPLE = testbed.REPO_ROOT / "docs" / "examples" / "deploy.yml"


# Tests marked serial run alone (make integration's second part): they read each service's downtime
# from the engine's events, which the engine keeps 256 of (another test's health checks push them
# out: measured, the report then says so and gives its bound). The revert tests give the target a
# short health timeout, so that it fails quickly; the way back has its own, generous one
# (recreate_revert_health_timeout), which another test's load cannot eat: they run in parallel.


def reads_a_host_env_file(shop):
    """Make the shop's app read an env file of the host, outside the project directory: a file no
    release can record (each names it as unrecorded), so a test can make an old release drift."""
    host_env = shop.dir.parent / (shop.stack.name + "-host.env")
    host_env.write_text("APP_CRASH_ON_START=0\n")
    compose = shop.dir / "compose.yml"
    compose.write_text(compose.read_text().replace("./app-extra.env", str(host_env)))
    return host_env


def stops_reading_it(shop, host_env):
    """The next release's compose file reads an env file of its own instead."""
    compose = shop.dir / "compose.yml"
    compose.write_text(compose.read_text().replace(str(host_env), "./app-v2-extra.env"))


def v1_reading_a_host_env_file_then_v2(shop):
    """v1 deployed reading a host env file (reads_a_host_env_file), a row written, then v2 that does
    not read it; returns (that file, for the test to make v1 drift, v2's release id)."""
    host_env = reads_a_host_env_file(shop)
    shop.deploy("v1")
    shop.write("row 1")
    stops_reading_it(shop, host_env)
    return host_env, shop.deploy("v2")


def recap_changed(result):
    line = next(x for x in result.stdout.splitlines() if x.startswith("localhost") and "changed=" in x)
    return int(line.split("changed=")[1].split()[0])


@pytest.mark.serial
@pytest.mark.smoke
def test_rollback_to_previous_keeps_every_row_and_is_idempotent(shop, monkeypatch):
    # A controller west of UTC: a window opened hours late would hold no event at all.
    monkeypatch.setenv("TZ", "America/New_York")
    v1 = shop.deploy("v1")
    shop.write("before v2")
    v2 = shop.deploy("v2")
    shop.write("written by v2")

    result = shop.rollback()
    assert_ok(result)
    assert shop.version() == "v1"
    assert shop.rows() == ["before v2", "written by v2"]
    assert "rolled back from %s (v2) to %s (v1)" % (v2, v1) in result.stdout
    assert "backups: %s" % shop.backups in result.stdout
    listing = shop.info()
    assert listing["current"]["id"] == v1
    assert listing["history"][-1]["event"] == "rollback"
    assert [e["event"] for e in shop.audit()] == ["rollback"]
    details = listing["history"][-1]["details"]
    # Measured from the engine's events: the database stopped for its backup, the app swapped.
    measured = {service: float(seconds) for service, seconds in details["downtime_services"].items()}
    assert set(measured) == {"app", "db"}, details
    assert 0 < measured["app"] < 10 and 0 < measured["db"] < 30, measured
    assert float(details["downtime_seconds"]) == max(measured.values())
    assert "measured from engine events" in result.stdout
    # Stable before healthy: the report says what judged each service (both have health checks).
    assert "verified by: app: health check, db: health check" in result.stdout, result.stdout[-3000:]

    again = shop.rollback()
    assert_ok(again)
    assert "already on release %s" % v1 in again.stdout
    assert recap_changed(again) == 0, again.stdout[-3000:]


def rolled_back_under_probes(shop, **variables):
    """v1, v2 deployed, then rolled back with 50 requests/s on the app from 1 s before to 1 s after;
    returns (the playbook's result, the app's reported downtime, the probes' longest outage)."""
    shop.deploy("v1")
    shop.write("row 1")
    shop.deploy("v2")
    result, samples = run_under_probes(shop.url + "/version", lambda: shop.rollback(**variables))
    assert_ok(result)
    assert shop.version() == "v1" and shop.rows() == ["row 1"]
    # Complete: the report gives the measured figure, not the role's own bound.
    assert "measured from engine events)" in result.stdout, result.stdout[-3000:]
    details = shop.info()["history"][-1]["details"]
    reported, probed = float(details["downtime_services"]["app"]), longest_outage(samples)
    assert probed > 0, "the probes saw no outage: the test would pass whatever the report said"
    assert abs(reported - probed) <= 0.3, (reported, probed, summarize(samples))
    return result, reported, probed


@pytest.mark.serial
@pytest.mark.parametrize("offset", [30, -30], ids=["controller-30s-ahead", "controller-30s-behind"])
def test_a_controller_clock_off_the_hosts_changes_neither_the_downtime_nor_the_verdict(shop, offset):
    """Every window opens on the managed host's clock: with the controller's 30 s ahead, a window
    opened on it would miss every stop; 30 s behind, it would take in the deploy just before."""
    _result, reported, probed = rolled_back_under_probes(shop, clock_offset=offset)
    print("controller clock %+d s: app down %.3f s reported, %.3f s seen by the probes" % (offset, reported, probed))


@pytest.mark.serial
def test_on_a_busy_engine_the_downtime_is_complete_and_matches_the_probes(shop, compose_stack, images):
    """30 health-checked containers checking every second: the engine's own history holds about 3 s,
    so the window is read from its event stream, followed from before the first stop."""
    busy = compose_stack(testbed.BUSY_ENGINE_COMPOSE.format(busybox=images["BUSYBOX_IMAGE"]))
    busy.up()
    events = testbed.EngineEventCount()
    with events:
        _result, reported, probed = rolled_back_under_probes(shop)
    print(
        "busy engine, %d events: app down %.3f s reported, %.3f s seen by the probes" % (events.count, reported, probed)
    )
    assert events.count > testbed.ENGINE_EVENTS_KEPT, "the engine was not busy: %d events" % events.count


@pytest.mark.parametrize("target_kind", ["release_id", "git_ref"])
def test_rollback_to_a_named_release(shop, target_kind):
    git = ["git", "-C", str(shop.dir), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    # The usual flow: commit the config, deploy it, record the release.
    shop.deploy("v1", record=False, secret="first")
    subprocess.run([*git, "add", "compose.yml", ".env"], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    v1 = shop.record("v1")
    shop.deploy("v2", record=False)
    subprocess.run([*git, "commit", "-qam", "v2"], check=True)
    shop.record("v2")
    shop.deploy("v3")
    target = v1 if target_kind == "release_id" else "HEAD~1"

    result = shop.rollback(recreate_target=target)
    assert_ok(result)
    assert shop.version() == "v1"
    # The target's .env came back with it (not only its image).
    env = (shop.dir / ".env").read_text()
    assert re.fullmatch(r"APP_TAG=v1@sha256:[0-9a-f]{64}\nDB_PASSWORD=pw-shop\nAPP_SECRET=first\n", env), env
    assert shop.info()["current"]["id"] == v1


@pytest.mark.parametrize("where", ["image", "variable"])
def test_a_tag_moved_since_brings_back_the_old_image_and_the_project_directory_keeps_it(shop, images, where):
    rolled_back_over_a_moved_latest_the_project_directory_keeps_v1(shop, images, where, shop.version)


def test_target_that_fails_to_start_is_reverted_with_a_report(shop):
    # v1 reads an env file of the host, outside the project; v2 does not. After v2 is deployed,
    # that file drifts (no release can record it) and v1 now crashes on start.
    host_env, v2 = v1_reading_a_host_env_file_then_v2(shop)
    shop.write("row 2")
    host_env.write_text("APP_CRASH_ON_START=1\n")

    result = shop.rollback(recreate_health_timeout=20)
    assert result.returncode != 0
    assert "FAILED at step 'start'" in result.stdout
    assert "put back on release %s and it serves again (verified)" % v2 in result.stdout
    assert shop.version() == "v2"
    assert shop.rows() == ["row 1", "row 2"]
    listing = shop.info()
    assert listing["current"]["id"] == v2
    assert shop.audit()[-1]["event"] == "failed_rollback"
    assert listing["lock"] is None, "the lock was not released"


def test_target_that_fails_verification_is_reverted(shop):
    shop.deploy("v1")
    shop.write("row 1")
    v2 = shop.deploy("v2")
    # v1 fails the check within the target's short timeout; v2, put back, passes it within the
    # revert's own (recreate_revert_health_timeout), however long the restarted database takes.
    result = shop.rollback(
        recreate_health_timeout=10,
        recreate_health_http=[{"url": shop.url + "/version", "body_regex": "^v2$"}],
    )
    assert result.returncode != 0
    assert "FAILED at step 'verify'" in result.stdout, result.stdout[-4000:]
    assert "put back on release %s" % v2 in result.stdout, result.stdout[-4000:]
    assert shop.version() == "v2"
    assert shop.rows() == ["row 1"]


def test_target_that_crash_loops_a_few_seconds_after_it_starts_is_reverted_naming_the_service(shop):
    # v1 reads an env file of the host that drifts after v2 is deployed: v1 then serves and passes
    # its health check, and exits 3 s later, over and over (restart: always). Without HTTP checks,
    # as the README's first command runs, the verification must still see it: stable before healthy.
    compose = shop.dir / "compose.yml"
    compose.write_text(compose.read_text().replace("    env_file:\n", "    restart: always\n    env_file:\n", 1))
    host_env, v2 = v1_reading_a_host_env_file_then_v2(shop)
    host_env.write_text("APP_CRASH_AFTER=3\n")

    result = shop.rollback(recreate_health_http=[], recreate_health_timeout=30)
    assert result.returncode != 0, result.stdout[-4000:]
    assert re.search(r"FAILED at step '(start|verify)'", result.stdout), result.stdout[-4000:]
    assert re.search(r"service app: (crash loop|restarting|exited with code 3)", result.stdout), result.stdout[-4000:]
    assert "put back on release %s and it serves again (verified)" % v2 in result.stdout, result.stdout[-4000:]
    assert shop.version() == "v2"
    assert shop.rows() == ["row 1"]
    assert shop.info()["current"]["id"] == v2


def db_started_at(shop):
    return testbed.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", shop.stack.container_id("db")]).stdout


def test_declared_database_is_dumped_online_and_loaded_back_by_a_revert(shop):
    """recreate_backup_method auto: the database is dumped while it serves, never stopped; with
    recreate_revert_data always, the revert of a target that fails verification loads the dump
    back, its row counts checked, after a safety dump of what it replaces, and says which writes
    it did not carry over."""
    shop.databases = testbed.SHOP_DATABASES["postgres"]
    shop.deploy("v1")
    shop.write("row 1")
    v2 = shop.deploy("v2")
    shop.write("row 2")
    started = db_started_at(shop)
    failing = shop.rollback(
        recreate_databases=shop.databases,
        recreate_revert_data="always",
        recreate_health_timeout=10,  # the target's; the way back has its own (see the test above)
        recreate_health_http=[{"url": shop.url + "/version", "body_regex": "^v2$"}],
    )
    assert failing.returncode != 0 and "FAILED at step 'verify'" in failing.stdout, failing.stdout[-4000:]
    assert (
        "databases dumped online, serving throughout: db; volumes copied, their containers stopped: none"
        in failing.stdout
    )
    assert "Load each database's dump back" in failing.stdout and "db/shop" in failing.stdout
    assert "put back on release %s" % v2 in failing.stdout
    assert "because recreate_revert_data is always: writes made between" in failing.stdout, failing.stdout[-4000:]
    assert shop.version() == "v2" and shop.rows() == ["row 1", "row 2"]
    dumps = sorted(shop.backups.glob("db-shop-*.sql.zst"))
    assert dumps, sorted(p.name for p in shop.backups.iterdir())
    manifest = json.loads(Path(str(dumps[0]) + ".manifest.json").read_text())
    assert manifest["kind"] == "dump" and manifest["rows"]["records"] == 2, manifest
    assert not list(shop.backups.glob("*_dbdata-*.tar*")), "the database's volume was copied as well"
    details = shop.audit()[-1]["details"]
    assert details["safety_archives"] and all(Path(a).exists() for a in details["safety_archives"]), details
    assert all(a in failing.stdout for a in details["safety_archives"]), "the report does not name the safety dump"

    result = shop.rollback(recreate_databases=shop.databases)
    assert_ok(result)
    assert shop.version() == "v1" and shop.rows() == ["row 1", "row 2"]
    details = shop.info()["history"][-1]["details"]
    assert set(details["downtime_services"]) == {"app"}, details
    assert db_started_at(shop) == started, "the database was restarted"


def test_revert_keeps_every_row_written_during_the_rollback(shop):
    """The database declared, the same schema in both releases, a target whose web cannot start,
    a client writing a numbered row every 40 ms all through: the rollback did not change the data,
    so the revert leaves it as it is and no row the database acknowledged is lost."""
    shop.databases = testbed.SHOP_DATABASES["postgres"]
    host_env = reads_a_host_env_file(shop)
    shop.deploy("v1")
    stops_reading_it(shop, host_env)
    v2 = shop.deploy("v2")
    host_env.write_text("APP_CRASH_ON_START=1\n")

    with rows_written_throughout(shop.stack.container_id("db"), at_least=100):
        result = shop.rollback(recreate_databases=shop.databases, recreate_health_timeout=20)
    assert result.returncode != 0 and "FAILED at step 'start'" in result.stdout, result.stdout[-4000:]
    assert "put back on release %s and it serves again (verified)" % v2 in result.stdout
    assert "Data: left as it was, with every write made during the rollback" in result.stdout
    assert shop.version() == "v2"
    record = shop.audit()[-1]
    assert record["event"] == "failed_rollback" and record["details"]["reverted_healthy"] in (True, "True"), record
    assert shop.info()["current"]["id"] == v2


def damage_archive_once_serving(shop, version, pattern):
    """A thread that, once the target serves `version` (its backups are written and read back),
    flips bytes in the middle of the backup archive matching `pattern`: damaged after the backup."""
    damaged = []

    def serving():
        return testbed.http_get(shop.url + "/version")[1].strip() == version

    def damage():
        testbed.wait_for(serving, 120, "the target serving %s" % version)
        archive = next(p for p in shop.backups.glob(pattern) if not p.name.endswith(".manifest.json"))
        with open(archive, "r+b") as fh:
            fh.seek(archive.stat().st_size // 2)
            chunk = fh.read(64)
            fh.seek(-len(chunk), os.SEEK_CUR)
            fh.write(bytes(b ^ 0xFF for b in chunk))
        damaged.append(archive)

    thread = threading.Thread(target=damage, daemon=True)
    thread.start()
    return thread, damaged


def assert_served_again_without_its_data(shop, result, v2):
    """The revert could not put the data back, and said so; the pre-rollback version serves, recorded."""
    assert result.returncode != 0 and "FAILED at step 'verify'" in result.stdout, result.stdout[-4000:]
    assert "putting the data back from the backups FAILED" in result.stdout, result.stdout[-4000:]
    assert "put back on release %s and it serves again (verified)" % v2 in result.stdout, result.stdout[-4000:]
    assert shop.version() == "v2" and shop.rows() == ["row 1", "row 2"]
    record = shop.audit()[-1]
    assert record["event"] == "failed_rollback" and "FAILED" in record["details"]["data"], record


def test_revert_whose_volume_restore_is_refused_still_puts_the_pre_rollback_version_back(shop):
    """The database's volume copy is damaged after the backup: the revert's restore refuses it,
    and the pre-rollback version is started and verified all the same, its data as it is, with a
    record, the lock released and a report naming what was not put back; the next run converges."""
    shop.deploy("v1")
    shop.write("row 1")
    v2 = shop.deploy("v2")
    shop.write("row 2")
    with rows_written_throughout(shop.stack.container_id("db")):
        thread, damaged = damage_archive_once_serving(shop, "v1", "*_dbdata-*.tar*")
        result = shop.rollback(
            recreate_revert_data="always",
            recreate_health_timeout=20,
            recreate_health_http=[{"url": shop.url + "/version", "body_regex": "^v2$"}],
        )
        thread.join(timeout=5)
        # Inside the block: without the damage the restore succeeds and takes the rows written
        # meanwhile with it, as revert_data always asks; that is not what this test is about.
        assert damaged, "the archive was not damaged during the rollback"
    assert_served_again_without_its_data(shop, result, v2)
    listing = shop.info()
    assert listing["current"]["id"] == v2 and listing["lock"] is None, listing

    again = shop.rollback()
    assert_ok(again)
    assert shop.version() == "v1" and shop.rows() == ["row 1", "row 2"]


def test_full_disk_during_the_reverts_safety_copy_still_puts_the_pre_rollback_version_back(shop, tmp_path):
    """The backup disk fills up once the target serves: the revert's restore cannot write its
    safety copy, so it touches nothing, and the pre-rollback version is started all the same,
    with a record and a report naming what was not put back; the next run converges."""
    shop.deploy("v1")
    shop.write("row 1")
    v2 = shop.deploy("v2")
    shop.write("row 2")
    with testbed.small_filesystem(tmp_path / "small", size="256m") as small:
        shop.backups = small
        filled = []

        def fill_once_serving():
            testbed.wait_for(lambda: testbed.http_get(shop.url + "/version")[1].strip() == "v1", 120, "the target")
            with open(small / "filler", "wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * (1 << 20))
                        fh.flush()
                except OSError:
                    pass  # the disk is full
            filled.append(True)

        thread = threading.Thread(target=fill_once_serving, daemon=True)
        with rows_written_throughout(shop.stack.container_id("db")):
            thread.start()
            result = shop.rollback(
                recreate_revert_data="always",
                recreate_backup_margin_mb=0,
                recreate_health_timeout=20,
                recreate_health_http=[{"url": shop.url + "/version", "body_regex": "^v2$"}],
            )
            thread.join(timeout=5)
            assert filled, "the disk was not filled during the rollback"
    assert_served_again_without_its_data(shop, result, v2)
    assert shop.info()["lock"] is None

    shop.backups = tmp_path / "backups"  # the full disk is gone: the next run backs up to a roomy one
    again = shop.rollback()
    assert_ok(again)
    assert shop.version() == "v1" and shop.rows() == ["row 1", "row 2"]


@contextlib.contextmanager
def dump_load_cut_half_way(container, table="records"):
    """The first dump load that runs in the block is ended half-way by the server: a session of
    this test holds a share lock on `table`, so the load, once its transaction has begun emptying
    the database, waits there; its session is then terminated. Yields the pids it ended."""
    psql = ["docker", "exec", "-i", container, "psql", "-X", "-q", "-A", "-t", "-U", "postgres", "-d", "shop"]
    holder = subprocess.Popen(psql, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    holder.stdin.write(b"BEGIN;\nLOCK TABLE %s IN ACCESS SHARE MODE;\nSELECT 'held';\n" % table.encode())
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == b"held", "could not hold a lock on %s" % table
    # The load empties the database with DROP SCHEMA ... CASCADE in its transaction (see _dump).
    ended = []
    end_waiting_load = (
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND wait_event_type = 'Lock' AND query LIKE '%DROP SCHEMA%'"
    )

    def end_a_waiting_load():
        out = subprocess.run([*psql, "-c", end_waiting_load], capture_output=True, timeout=30, check=False)
        ended.extend(int(line.split("|")[0]) for line in out.stdout.decode().split() if line.endswith("|t"))
        return bool(ended)

    try:
        with testbed.repeated(end_a_waiting_load, every=0.5):
            yield ended
    finally:
        with contextlib.suppress(OSError):
            holder.stdin.write(b"COMMIT;\n")
            holder.stdin.close()
        holder.wait(timeout=30)


def test_dump_load_failing_half_way_leaves_every_row_and_puts_the_pre_rollback_version_back(shop):
    """The database declared, recreate_revert_data always, a target that fails verification: the
    revert's load of the dump is ended half-way by the server, its transaction rolls back, and the
    database keeps every row written before and during the rollback; the pre-rollback version is
    started and verified all the same, with a record, the lock released and a report naming what
    was not put back; the next run converges."""
    shop.databases = testbed.SHOP_DATABASES["postgres"]
    shop.deploy("v1")
    shop.write("row 1")
    v2 = shop.deploy("v2")
    shop.write("row 2")
    db = shop.stack.container_id("db")
    with rows_written_throughout(db), dump_load_cut_half_way(db) as ended:
        result = shop.rollback(
            recreate_databases=shop.databases,
            recreate_revert_data="always",
            recreate_health_timeout=20,
            recreate_health_http=[{"url": shop.url + "/version", "body_regex": "^v2$"}],
        )
    assert ended, "no dump load was ended during the rollback: %s" % result.stdout[-4000:]
    assert_served_again_without_its_data(shop, result, v2)
    assert "its transaction rolled back" in result.stdout, result.stdout[-4000:]
    listing = shop.info()
    assert listing["current"]["id"] == v2 and listing["lock"] is None, listing

    again = shop.rollback(recreate_databases=shop.databases)
    assert_ok(again)
    assert shop.version() == "v1" and shop.rows() == ["row 1", "row 2"]


def test_revert_that_does_not_serve_leaves_its_plan_and_the_next_run_finishes_it(shop):
    """Neither the target nor the pre-rollback version passes the verification: the lock keeps
    the plan (put v2 back), marked unfinished; the next run takes it over at once, finishes it, and
    the ledger's current and previous stay v2 and v1 (deploy v1, deploy v2, failed rollback, revert)."""
    v1 = shop.deploy("v1")
    shop.write("row 1")
    v2 = shop.deploy("v2")
    # Neither can pass: the way back needs no more than the target's short timeout to fail.
    result = shop.rollback(
        recreate_health_timeout=10,
        recreate_revert_health_timeout=10,
        recreate_health_http=[{"url": shop.url + "/version", "body_regex": "^v3$"}],
    )
    assert result.returncode != 0 and "FAILED at step 'verify'" in result.stdout, result.stdout[-4000:]
    assert "did NOT verify healthy" in result.stdout and "The project lock keeps the plan" in result.stdout
    lock = shop.lock()
    assert lock and lock["unfinished"] and lock["plan"] == {"from": v2, "to": v2}, lock
    assert shop.audit()[-1]["event"] == "failed_rollback"
    listing = shop.info()
    assert (listing["current"]["id"], listing["previous"]["id"]) == (v2, v1), listing

    shop.rollback_finishing_an_unfinished_plan(v2, within=120)
    assert shop.version() == "v2" and shop.rows() == ["row 1"]
    listing = shop.info()
    assert (listing["current"]["id"], listing["previous"]["id"], listing["lock"]) == (v2, v1, None), listing


def test_run_killed_during_the_revert_is_finished_by_the_next_run(shop, tmp_path):
    shop.deploy("v1")
    shop.write("row 1")
    v2 = shop.deploy("v2")
    with rows_written_throughout(shop.stack.container_id("db"), max_seconds=400):
        log = tmp_path / "killed.log"
        run = shop.start_rollback(
            log,
            recreate_health_timeout=10,
            recreate_health_http=[{"url": shop.url + "/version", "body_regex": "^v2$"}],
        )
        try:

            def reverting():
                return run.poll() is not None or (shop.lock() or {}).get("step") == "revert"

            testbed.wait_for(reverting, 180, "the revert")
            assert run.poll() is None, "the run ended before its revert: %s" % log.read_text()[-3000:]
        finally:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=30)
        assert shop.lock()["plan"] == {"from": v2, "to": v2}, shop.lock()

        result = shop.rollback()
    assert_ok(result)
    assert "it was rolling back from release %s to %s" % (v2, v2) in result.stdout, result.stdout[-4000:]
    assert shop.version() == "v2" and shop.rows() == ["row 1"]
    assert shop.info()["current"]["id"] == v2 and shop.lock() is None


def test_rollback_whose_record_fails_keeps_its_plan_and_the_next_run_records_it(shop):
    """The rollback is done and verified, but its record cannot be written (the project's ledger
    history became unwritable while the target was verified): the play fails saying that the host
    serves the target and what was not recorded, the audit log says unrecorded_rollback (not a
    failed rollback), and the lock keeps the plan marked unfinished; once the ledger can be written
    again, the next run records the rollback without touching the containers."""
    v1 = shop.deploy("v1")
    v2 = shop.deploy("v2")
    history = LEDGER / "projects" / shop.stack.name / "history.jsonl"
    saved = history.with_name("history.saved")
    broken = []

    def break_history_once_verifying():
        testbed.wait_for(lambda: (shop.lock() or {}).get("step") == "verify", 180, "the verification")
        history.rename(saved)
        history.mkdir()
        broken.append(True)

    thread = threading.Thread(target=break_history_once_verifying, daemon=True)
    thread.start()
    result = shop.rollback(recreate_health_http=[{"url": shop.url + "/health", "successes": 5}])
    thread.join(timeout=5)
    assert broken, "the ledger was not broken during the rollback"
    assert result.returncode != 0, result.stdout[-3000:]
    assert "and verified: it serves. But the record of the rollback could NOT be written" in result.stdout, (
        result.stdout[-4000:]
    )
    assert shop.version() == "v1"
    audited = shop.audit()[-1]
    assert audited["event"] == "unrecorded_rollback" and audited["details"]["to"] == v1, audited
    lock = shop.lock()
    assert lock and lock["unfinished"] and lock["plan"] == {"from": v2, "to": v1}, lock

    history.rmdir()
    saved.rename(history)
    app = shop.stack.container_id("app")
    again = shop.rollback()
    assert_ok(again)
    assert "took over the lock of a run that ended unfinished" in again.stdout, again.stdout[-4000:]
    assert shop.version() == "v1" and shop.stack.container_id("app") == app
    listing = shop.info()
    assert (listing["current"]["id"], listing["lock"]) == (v1, None), listing
    assert [e["event"] for e in listing["history"]][-2:] == ["deploy", "rollback"], listing["history"]
    assert shop.audit()[-1]["event"] == "rollback"


def test_second_rollback_waits_its_turn_then_fails_naming_the_holder(shop, tmp_path):
    shop.deploy("v1")
    shop.deploy("v2")
    carol = dict(project=shop.stack.name, token="other-run")
    held = testbed.run_module(
        # This test process stands for carol's play, still running on this controller.
        "rollback_lock",
        dict(carol, holder="carol's rollback", controller_pid=os.getpid()),
    )
    assert held["changed"], held
    result = shop.rollback(recreate_lock_timeout=3)
    assert result.returncode != 0
    assert "carol's rollback" in result.stdout and "another rollback holds the lock" in result.stdout
    assert "(waited 3s)" in result.stdout, result.stdout[-3000:]
    assert shop.version() == "v2"
    refused = shop.audit()[-1]
    assert refused["event"] == "refused_rollback" and "carol's rollback" in refused["details"]["reason"], refused

    # Carol's run ends while this one waits at the lock: this one goes on.
    log = tmp_path / "waiting.log"
    run = shop.start_rollback(log, recreate_lock_timeout=120)
    try:
        testbed.wait_for(lambda: "Take the project lock" in log.read_text(), 120, "the run at the lock")
        time.sleep(3)
        assert run.poll() is None, "the run did not wait for the lock: %s" % log.read_text()[-3000:]
        testbed.run_module("rollback_lock", dict(carol, state="absent"))
        assert run.wait(timeout=300) == 0, log.read_text()[-6000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert shop.version() == "v1"


def test_check_mode_prints_the_plan_and_changes_nothing(shop):
    v1 = shop.deploy("v1")
    v2 = shop.deploy("v2")
    env_before = (shop.dir / ".env").read_text()
    history_before = shop.info()["history"]
    before = host_state(shop)
    result = shop.rollback(check=True, diff=True)
    assert_ok(result)
    assert "from release %s (v2)" % v2 in result.stdout
    assert "to   release %s (v1)" % v1 in result.stdout
    assert "volumes copied, their containers stopped: %s_dbdata" % shop.stack.name in result.stdout
    assert "files put back: compose.yml, .env" in result.stdout
    assert "would roll back from %s (v2) to %s (v1)" % (v2, v1) in result.stdout
    assert "secret-v1" not in result.stdout and "secret-v2" not in result.stdout
    assert shop.version() == "v2"
    assert (shop.dir / ".env").read_text() == env_before
    assert shop.info()["history"] == history_before
    assert not shop.backups.exists() or not any(shop.backups.iterdir())
    assert host_state(shop) == before, "check mode changed the ledger, the project directory or a container"


def test_deploy_example_rolls_back_by_itself_when_the_new_version_fails(shop):
    common = {"shop_dir": str(shop.dir), "shop_health_url": shop.url + "/health"}
    (shop.dir / ".env").write_text("APP_TAG=v1\nDB_PASSWORD=pw-shop\nAPP_SECRET=s\n")
    first = testbed.run_playbook(DEPLOY_EXAMPLE, dict(common, shop_version="v1"), inventory=str(shop.inventory))
    assert_ok(first)
    shop.write("kept")
    second = testbed.run_playbook(DEPLOY_EXAMPLE, dict(common, shop_version="v2"), inventory=str(shop.inventory))
    assert_ok(second)
    v2 = shop.info()["current"]["id"]
    broken = testbed.run_playbook(DEPLOY_EXAMPLE, dict(common, shop_version="broken"), inventory=str(shop.inventory))
    assert broken.returncode != 0
    assert "broken did not pass its health check" in broken.stdout
    assert "the shop was rolled back to release %s" % v2 in broken.stdout, broken.stdout[-4000:]
    assert shop.version() == "v2"
    assert shop.rows() == ["kept"]
    # Recorded as a failed deploy, the broken release never becomes previous: after the next good
    # deploy, previous is v2.
    failed = shop.info()["failed_deploys"]
    assert [e["version"] for e in failed] == ["broken"], failed
    third = testbed.run_playbook(DEPLOY_EXAMPLE, dict(common, shop_version="v3"), inventory=str(shop.inventory))
    assert_ok(third)
    listing = shop.info()
    assert listing["previous"]["id"] == v2 and listing["current"]["version"] == "v3", listing


def fail_to_log_in(shop):
    """One login to the shop's database with a wrong password (PostgreSQL logs it as FATAL)."""
    wrong = ["psql", "postgresql://postgres:wrong-password@127.0.0.1/shop", "-c", "select 1"]
    container = "%s-db-1" % shop.stack.name
    subprocess.run(["docker", "exec", container, *wrong], capture_output=True, timeout=30, check=False)


@contextlib.contextmanager
def a_client_failing_to_log_in(shop, every=0.3, at_most=1000):
    """A client that keeps trying the shop's database with a wrong password, in the background
    (bounded: `at_most` tries, one every `every` s), as a misconfigured job does; yields the
    number of tries so far (a list of one)."""
    tries = [0]

    def try_once():
        fail_to_log_in(shop)
        tries[0] += 1
        return tries[0] >= at_most

    with testbed.repeated(try_once, every=every):
        yield tries


def wrong_passwords_logged(shop, since):
    """The database's 'password authentication failed' lines since an epoch time (the host's clock)."""
    logs = testbed.run(["docker", "logs", "--since", "%.3f" % since, "%s-db-1" % shop.stack.name])
    return (logs.stdout + logs.stderr).count("password authentication failed")


def test_a_client_failing_to_log_in_to_the_database_fails_neither_deploy_nor_rollback(shop):
    """PostgreSQL logs FATAL for a client's wrong password: an old such line, and a client that
    keeps failing during the deploy and the rollback, are the client's errors, not the database's."""
    common = {"shop_dir": str(shop.dir), "shop_health_url": shop.url + "/health"}
    (shop.dir / ".env").write_text("APP_TAG=v1\nDB_PASSWORD=pw-shop\nAPP_SECRET=s\n")
    first = testbed.run_playbook(DEPLOY_EXAMPLE, dict(common, shop_version="v1"), inventory=str(shop.inventory))
    assert_ok(first)
    shop.write("row 1")
    before = time.time()
    fail_to_log_in(shop)
    assert wrong_passwords_logged(shop, before) == 1, "the old FATAL line was not written"
    time.sleep(1.5)  # the old line is older than any step that follows

    with a_client_failing_to_log_in(shop) as tries:
        second = testbed.run_playbook(DEPLOY_EXAMPLE, dict(common, shop_version="v2"), inventory=str(shop.inventory))
        assert_ok(second)
        assert shop.info()["current"]["version"] == "v2"
        rollback_started = time.time()
        result = shop.rollback(recreate_databases=testbed.SHOP_DATABASES["postgres"])
        assert_ok(result)
    assert shop.version() == "v1" and shop.rows() == ["row 1"]
    assert shop.info()["current"]["version"] == "v1"
    # The test can fail: the client did fail to log in while the rollback ran, and the log says so.
    assert tries[0] > 5 and wrong_passwords_logged(shop, rollback_started) > 0, tries


# A project as operators write them: COMPOSE_FILE in .env adds a production overlay (a port and an
# environment value per release), COMPOSE_PROFILES enables the app's profile, and the app reads a
# service env_file beside the compose file.
WHOLE_PROJECT = """\
services:
  app:
    image: {app}:${{APP_TAG}}
    profiles: [web]
    env_file: app.env
"""
PROD_OVERLAY = """\
services:
  app:
    environment:
      MODE: prod-{tag}
    ports:
      - "127.0.0.1:{port}:8080"
"""


def test_the_whole_project_is_rolled_back_env_file_overlay_and_profile(compose_stack, images, free_port, tmp_path):
    ports = {"v1": free_port(), "v2": free_port()}
    stack = compose_stack(WHOLE_PROJECT.format(app=images["APP_IMAGE"]))

    def deploy(tag):
        stack.write(
            WHOLE_PROJECT.format(app=images["APP_IMAGE"]),
            {
                "compose.prod.yml": PROD_OVERLAY.format(tag=tag, port=ports[tag]),
                ".env": "COMPOSE_FILE=compose.yml:compose.prod.yml\nCOMPOSE_PROFILES=web\nAPP_TAG=%s\n" % tag,
                "app.env": "GREETING=hello-%s\n" % tag,
            },
        )
        stack.up()  # a plain `docker compose up` in the project directory, as the deploy ran it
        testbed.wait_http("http://127.0.0.1:%d/version" % ports[tag], body_contains=tag)
        recorded = testbed.run_module(
            "compose_release", dict(project_src=str(stack.dir), project_name=stack.name, version=tag)
        )
        assert not recorded.get("failed"), recorded
        return recorded

    v1 = deploy("v1")
    assert sorted(v1["release"]["files"]) == [".env", "app.env", "compose.prod.yml", "compose.yml"], v1["release"]
    assert v1["release"]["settings"] == {"COMPOSE_FILE": "compose.yml:compose.prod.yml", "COMPOSE_PROFILES": "web"}
    v2 = deploy("v2")
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    variables = {
        "recreate_project_src": str(stack.dir),
        "recreate_backup_dir": str(tmp_path / "backups"),
        "recreate_health_http": [{"url": "http://127.0.0.1:%d/health" % ports["v1"]}],
    }
    try:
        plan = testbed.run_playbook(PLAYBOOK, variables, inventory=str(inventory), check=True)
        assert_ok(plan)
        assert "files put back: compose.yml, compose.prod.yml, .env, app.env" in plan.stdout, plan.stdout[-4000:]
        assert (stack.dir / "app.env").read_text() == "GREETING=hello-v2\n", "check mode wrote a file"
        result = testbed.run_playbook(PLAYBOOK, variables, inventory=str(inventory))
        assert_ok(result)
        assert "rolled back from %s (v2) to %s (v1)" % (v2["release_id"], v1["release_id"]) in result.stdout
        assert (stack.dir / "app.env").read_text() == "GREETING=hello-v1\n"
        for attempt in ("after the rollback", "after a plain docker compose up in the project directory"):
            env = stack.container_env("app")
            assert (env["GREETING"], env["MODE"]) == ("hello-v1", "prod-v1"), (attempt, env)
            assert testbed.http_get("http://127.0.0.1:%d/version" % ports["v1"])[1].strip() == "v1", attempt
            stack.up()
    finally:
        shutil.rmtree(LEDGER / "projects" / stack.name, ignore_errors=True)


@pytest.fixture
def bind_mounted_shop(compose_stack, images, free_port, tmp_path):
    """The shop on bind mounts (testbed.shop_on_bind_mounts), with a second PostgreSQL on an absolute
    one elsewhere (declared in recreate_data_paths by the tests)."""
    port = free_port()
    archive_dir = tmp_path / "archive-pgdata"
    compose = testbed.shop_on_bind_mounts(images["POSTGRES_IMAGE"], images["APP_IMAGE"], port, archive_dir)
    stack = compose_stack(compose, files={"conf/shop.ini": "[shop]\n"})
    shop = RecreateShop(stack, port, tmp_path)
    shop.archive_dir = archive_dir
    yield shop
    shutil.rmtree(LEDGER / "projects" / stack.name, ignore_errors=True)


def test_bind_mounted_data_is_backed_up_listed_in_the_plan_and_every_row_kept(bind_mounted_shop):
    shop = bind_mounted_shop
    pgdata, archive_dir = str(shop.dir / "pgdata"), str(shop.archive_dir)
    v2 = two_releases_with_archive_notes(shop)
    variables = {"recreate_data_paths": [archive_dir]}

    plan = shop.rollback(check=True, **variables)
    assert_ok(plan)
    copied = "data directories copied, their containers stopped: %s" % ", ".join(sorted([pgdata, archive_dir]))
    assert copied in plan.stdout, plan.stdout[-4000:]
    assert "bind mounts not backed up: %s (app: read-only)" % (shop.dir / "conf") in plan.stdout, plan.stdout[-4000:]
    assert not shop.backups.exists() or not list(shop.backups.iterdir()), "check mode wrote a backup"

    result = shop.rollback(**variables)
    assert_ok(result)
    assert "rolled back from %s (v2)" % v2 in result.stdout, result.stdout[-4000:]
    assert shop.version() == "v1"
    assert shop.rows() == ["row 1", "row 2"] and testbed.archive_rows(shop.stack) == 2
    for directory in (pgdata, archive_dir):
        assert len(testbed.servers_on(directory)) == 1, "not one database server on %s" % directory
        key = "dir-%s-" % Path(directory).name
        mine = [a for a in shop.backups.glob(key + "*.tar*") if not a.name.endswith(".json")]
        assert len(mine) == 1, sorted(p.name for p in shop.backups.iterdir())
        manifest = json.loads(Path(str(mine[0]) + ".manifest.json").read_text())
        assert manifest["volume"] == dict(manifest["volume"], name=directory, directory=True), manifest["volume"]
        assert manifest["files"] > 100, "not a PostgreSQL data directory: %s" % manifest["files"]
        assert oct(mine[0].stat().st_mode & 0o777) == "0o600"
        verified = testbed.run_module("volume_backup", {"archive": str(mine[0]), "state": "verify"})
        assert not verified.get("failed"), verified
    assert not list(shop.backups.glob("dir-conf-*")), "the read-only config mount was backed up"


def test_a_revert_that_puts_the_data_back_restores_a_bind_mounted_directory(bind_mounted_shop):
    """recreate_revert_data always: the target fails verification and the revert puts the
    bind-mounted data directory back from its backup, after a safety copy of what it replaces."""
    shop = bind_mounted_shop
    shop.deploy("v1")
    shop.write("row 1")
    v2 = shop.deploy("v2")
    shop.write("row 2")
    failing = shop.rollback(
        recreate_revert_data="always",
        recreate_data_paths=[str(shop.archive_dir)],
        recreate_health_timeout=10,
        recreate_health_http=[{"url": shop.url + "/version", "body_regex": "^v2$"}],
    )
    assert failing.returncode != 0 and "FAILED at step 'verify'" in failing.stdout, failing.stdout[-4000:]
    assert "Restore each volume and data directory from its backup" in failing.stdout
    assert str(shop.dir / "pgdata") in failing.stdout
    assert "put back on release %s" % v2 in failing.stdout, failing.stdout[-4000:]
    assert shop.version() == "v2" and shop.rows() == ["row 1", "row 2"]
    details = shop.audit()[-1]["details"]
    safety = [a for a in details["safety_archives"] if Path(a).name.startswith("dir-pgdata-")]
    assert safety and Path(safety[0]).exists(), details
    assert len(testbed.servers_on(str(shop.dir / "pgdata"))) == 1


BUILT_APP = """\
services:
  app:
    image: {image}:${{APP_TAG}}
    build: ./app
    environment:
      APP_SECRET: s
    ports:
      - "127.0.0.1:{port}:8080"
"""


def test_a_built_image_comes_back_by_its_id_and_once_gone_the_rollback_is_refused_naming_its_context(
    compose_stack, images, free_port, tmp_path
):
    """A service built on the host (no registry digest): the rollback pins the release's image by its
    id while the host has it; once it is gone, the rollback is refused before anything changes,
    naming the build context (building it would build the newer version's sources)."""
    port = free_port()
    image = "stackops-built-%s" % tmp_path.name.lower().replace("_", "-")
    stack = compose_stack(BUILT_APP.format(image=image, port=port))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    url = "http://127.0.0.1:%d/version" % port

    def deploy(tag):
        # Built here, never pushed: no registry digest (`up` does not build an image that is there).
        (stack.dir / "app").mkdir(exist_ok=True)
        (stack.dir / "app" / "Dockerfile").write_text("FROM %s:%s\nLABEL built=%s\n" % (images["APP_IMAGE"], tag, tag))
        testbed.run(["docker", "build", "-q", "-t", "%s:%s" % (image, tag), str(stack.dir / "app")])
        (stack.dir / ".env").write_text("APP_TAG=%s\n" % tag)
        stack.up()
        testbed.wait_http(url, body_contains=tag)
        recorded = testbed.run_module(
            "compose_release", dict(project_src=str(stack.dir), project_name=stack.name, version=tag)
        )
        assert not recorded.get("failed"), recorded
        return recorded["release"]

    variables = {"recreate_project_src": str(stack.dir), "recreate_backup_dir": str(tmp_path / "backups")}
    try:
        v1 = deploy("v1")
        assert v1["services"]["app"]["repo_digest"] is None, v1["services"]
        assert {"service": "app", "path": "app", "kind": "build"}.items() <= v1["unrecorded"][0].items()
        deploy("v2")
        back = testbed.run_playbook(PLAYBOOK, variables, inventory=str(inventory))
        assert_ok(back)
        assert "not recorded, left as they are: app" in back.stdout, back.stdout[-4000:]
        assert testbed.http_get(url)[1].strip() == "v1"

        v3 = deploy("v3")
        testbed.run(["docker", "image", "rm", "%s:v1" % image])  # v1's image is gone from the host
        before = stack.container_id("app")
        for check in (True, False):
            refused = testbed.run_playbook(
                PLAYBOOK, dict(variables, recreate_target=v1["id"]), inventory=str(inventory), check=check
            )
            assert refused.returncode != 0, refused.stdout[-4000:]
            assert "no registry digest and are no longer there: app" in refused.stdout, refused.stdout[-4000:]
            assert "A rollback does not build them again (built app from app" in refused.stdout
            assert stack.container_id("app") == before and (stack.dir / ".env").read_text() == "APP_TAG=v3\n"
            assert testbed.http_get(url)[1].strip() == "v3"
        assert v3["id"] != v1["id"]
    finally:
        shutil.rmtree(LEDGER / "projects" / stack.name, ignore_errors=True)
        stack.down()
        testbed.run(["docker", "image", "rm", "-f", *("%s:%s" % (image, t) for t in ("v1", "v2", "v3"))], check=False)
