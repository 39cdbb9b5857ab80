"""The fault matrix's own cases (tests/testbed/faults.py): faults no other test file puts to the
collection, end to end through the playbooks - the ledger damaged by hand or by a crash, the target's
image unreachable at preflight, runs killed at each step and at random moments, a host's Docker
daemon stopped mid-rollback, Caddy failing at a blue-green switch, a backup directory too small."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time

import pytest
import testbed
import testhosts
from faults import CONVERGES, REFUSED, REVERTED, said
from shop import LEDGER, RECREATE_PLAYBOOK, host_state
from testbed import assert_ok
from writer import rows_written_throughout


def assert_refused(result, *words):
    text = result.stdout + result.stderr
    assert result.returncode != 0, text[-6000:]
    missing = [w for w in words if w not in text]
    assert not missing, "the error does not say %s:\n%s" % (missing, text[-6000:])


def unchanged_state(shop):
    """host_state without the lock's guard file: an empty file the first lock creates for flock and
    every later one reuses (it holds nothing and is never removed)."""
    return {path: value for path, value in host_state(shop).items() if not path.endswith("/lock.guard")}


def failure_line(result, *words):
    """What the playbook said with all of words (faults.said); fails when it said nothing so."""
    line = said(result.stdout, *words)
    assert line, "no line of the output says %s:\n%s" % (words, result.stdout[-6000:])
    return line


# -- the ledger damaged ----------------------------------------------------------------------------
# Each: v1 and v2 deployed and recorded, then one ledger file damaged as a crash or a hand edit
# leaves it; the rollback to v1 must refuse before anything changes and name the file; the repair
# that README.md's "Repairing the ledger" gives must then let the rollback through.


def damage_history(ledger, v1):
    """A crash in the middle of a line: the last event cut in half."""
    path = ledger / "history.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - len(data.splitlines()[-1]) // 2 - 1])
    return path, "line %d is damaged" % len(data.splitlines())


def damage_release_file(ledger, v1):
    """The target's release.json truncated."""
    path = ledger / "releases" / v1 / "release.json"
    path.write_bytes(path.read_bytes()[:100])
    return path, "is damaged"


def edit_release_file(ledger, v1):
    """The target's release.json edited by hand: valid JSON, another image for the app."""
    path = ledger / "releases" / v1 / "release.json"
    release = json.loads(path.read_text())
    release["services"]["app"]["image_id"] = "sha256:" + "0" * 64
    path.write_text(json.dumps(release, indent=2, sort_keys=True) + "\n")
    return path, "does not match its checksum"


def edit_stored_file(ledger, v1):
    """The ledger's copy of the target's compose.yml edited by hand."""
    path = ledger / "releases" / v1 / "files" / "compose.yml"
    path.write_text(path.read_text() + "# edited\n")
    return path.parent.parent, "does not match its checksum"


DAMAGES = {
    "history-cut-in-half": damage_history,
    "release-truncated": damage_release_file,
    "release-edited": edit_release_file,
    "stored-file-edited": edit_stored_file,
}


@pytest.mark.fault("the ledger damaged: {damage}", where="recreate playbook, before any change", expected=REFUSED)
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_ledger_is_refused_naming_the_file_and_nothing_changes(shop, damage, fault_case):
    v1 = shop.deploy("v1")
    shop.write("row 1")
    shop.deploy("v2")
    ledger = LEDGER / "projects" / shop.stack.name
    path, words = DAMAGES[damage](ledger, v1)
    before = unchanged_state(shop)
    with rows_written_throughout(shop.stack.container_id("db")):
        result = shop.rollback()
    assert_refused(result, str(path), words)
    fault_case.observed(failure_line(result, words))
    assert unchanged_state(shop) == before, "a refused rollback changed the host"
    assert shop.version() == "v2" and shop.rows() == ["row 1"]
    if damage == "history-cut-in-half":
        # README.md, "Repairing the ledger": a copy kept, the damaged line deleted, and the running
        # release (the cut line was its deploy) recorded again; the rollback then goes through.
        history = ledger / "history.jsonl"
        lines = history.read_bytes().splitlines(keepends=True)
        history.write_bytes(b"".join(lines[:-1]))
        shop.record("v2")
        with rows_written_throughout(shop.stack.container_id("db")):
            assert_ok(shop.rollback())
        assert shop.version() == "v1" and shop.rows() == ["row 1"]


@pytest.mark.fault(
    "the ledger damaged: the lock file holds garbage", where="recreate playbook, lock", expected=CONVERGES
)
def test_a_damaged_lock_file_is_taken_over_once_its_grace_has_passed_and_the_rollback_finishes(shop, fault_case):
    shop.deploy("v1")
    shop.write("row 1")
    shop.deploy("v2")
    lock = LEDGER / "projects" / shop.stack.name / "lock"
    lock.write_bytes(b'{"holder": "web1", "tok')
    with rows_written_throughout(shop.stack.container_id("db")):
        result = shop.rollback(recreate_lock_grace=3, recreate_lock_timeout=60)
    assert_ok(result)
    fault_case.observed(failure_line(result, "took over the lock", "damaged lock file"))
    assert shop.version() == "v1" and shop.rows() == ["row 1"]
    assert shop.lock() is None and not lock.exists(), "the lock was not released"


# -- the target's image unreachable at preflight ---------------------------------------------------


def image_of_its_own(source, repository, tag, label):
    """source rebuilt with a label (so an image id of its own, which no other test's image shares),
    tagged repository:tag."""
    build = testbed.run(
        ["docker", "build", "-q", "-t", "%s:%s" % (repository, tag), "--label", "fault=" + label, "-"],
        input="FROM %s\n" % source,
    )
    return build.stdout.strip()


@pytest.mark.fault(
    "the target's image {how} (and no longer on the host)", where="recreate playbook, preflight", expected=REFUSED
)
@pytest.mark.parametrize("how", ["deleted from its registry", "behind a registry that does not answer"])
def test_a_target_image_that_cannot_be_pulled_stops_the_rollback_before_anything_stops(
    make_shop, images, tmp_path, how, fault_case
):
    with testbed.private_registry(tmp_path / "registry") as registry:
        repository = registry.address + "/shop-app"
        try:
            image_of_its_own(images["APP_IMAGE"] + ":v1", repository, "v1", tmp_path.name)
            testbed.run(["docker", "tag", images["APP_IMAGE"] + ":v2", repository + ":v2"])
            for tag in ("v1", "v2"):
                testbed.run(["docker", "push", "-q", "%s:%s" % (repository, tag)])
            shop = make_shop(app=repository)
            v1 = shop.deploy("v1")
            shop.write("row 1")
            shop.deploy("v2")
            release = next(r for r in shop.info()["releases"] if r["id"] == v1)
            digest = release["services"]["app"]["repo_digest"]
            assert digest and digest.startswith(repository + "@sha256:"), digest
            testbed.run(["docker", "image", "rm", repository + ":v1"])  # gone from the host
            if how == "deleted from its registry":
                registry.delete("shop-app", digest.split("@")[1])
            else:
                registry.stop()
            before = unchanged_state(shop)
            with rows_written_throughout(shop.stack.container_id("db")):
                result = shop.rollback()
            assert_refused(result, digest)
            fault_case.observed(failure_line(result, "cannot pull image", digest))
            assert "nothing was stopped" in result.stdout.lower(), result.stdout[-4000:]
            assert unchanged_state(shop) == before, "a refused rollback changed the host"
            assert shop.version() == "v2" and shop.rows() == ["row 1"]
        finally:
            testbed.run(["docker", "image", "rm", "-f", repository + ":v1", repository + ":v2"], check=False)


# -- the recreate playbook killed ------------------------------------------------------------------
# SIGKILL to the whole process group (ansible-playbook, its workers and the module running on the
# host, as a closed laptop or an AWX job's container gone), then the same command again: it must
# find the dead run's plan in the lock and finish it.


def assert_converged(shop, result, version, release):
    """One version serving, the ledger says so, the lock released, no leftover copy in the ledger."""
    assert_ok(result)
    assert shop.version() == version
    listing = shop.info()
    history = [(e["event"], e["release"]) for e in listing["history"]]
    assert listing["current"]["id"] == release and listing["lock"] is None, (release, history, listing["lock"])
    leftovers = list((LEDGER / "projects" / shop.stack.name / "releases").glob(".new-*"))
    assert leftovers == [], leftovers
    running = testbed.run(["docker", "ps", "-a", "--filter", "name=" + shop.stack.name, "--format", "{{.State}}"])
    assert sorted(running.stdout.split()) == ["running", "running"], running.stdout


@pytest.mark.fault(
    "the recreate playbook killed (SIGKILL, process group) at step '{step}', then run again",
    where="recreate playbook, step {step}",
    expected=CONVERGES,
)
@pytest.mark.parametrize("step", ["backup", "restore config", "start", "verify"])
def test_a_run_killed_at_each_step_is_finished_by_the_same_command(shop, tmp_path, step, fault_case):
    v1 = shop.deploy("v1")
    shop.write("row 1")
    v2 = shop.deploy("v2")
    with rows_written_throughout(shop.stack.container_id("db"), max_seconds=400):
        log = tmp_path / "killed.log"
        run = shop.start_rollback(log)
        left = shop.killed_when(run, log, lambda lock: lock.get("step") == step)
        assert left.get("step") == step and left.get("plan") == {"from": v2, "to": v1}, left
        result = shop.rollback()
    assert_converged(shop, result, "v1", v1)
    assert shop.rows() == ["row 1"]
    fault_case.observed(failure_line(result, "it was rolling back from release %s to %s" % (v2, v1)))


# At least ten runs killed mid-way, as the issue asks; every second re-run is killed too.
KILL_LOOP_RUNS = 10
Kill = collections.namedtuple("Kill", "moment where mid_way")


def run_killed_at(shop, log, moment, **variables):
    """Start a rollback and SIGKILL its process group `moment` seconds in; returns the seconds it
    took when it ended before that (not killed), else None."""
    started = time.monotonic()
    run = shop.start_rollback(log, **variables)
    try:
        run.wait(timeout=moment)
        return time.monotonic() - started
    except subprocess.TimeoutExpired:
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):  # a run that ended has no group left
            os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)


@pytest.mark.fault(
    "the recreate playbook killed at a random moment, %d runs killed mid-way (holding the lock), every second "
    "re-run killed too" % KILL_LOOP_RUNS,
    where="recreate playbook, anywhere",
    expected=CONVERGES,
)
def test_runs_killed_at_random_moments_always_converge(shop, tmp_path, fault_case):
    """Back and forth between v1 and v2 (by release id); each run killed at a moment drawn from the
    first nine tenths of the shortest whole fresh run seen so far (so nearly every draw lands inside
    a run; a re-run that only finished a plan is not whole), then the same command finishes it,
    until ten runs were killed mid-way: holding the project's lock, which they leave behind (a kill
    before the lock is taken is kept in the count of moments, not of runs killed mid-way). The seed
    is in the observed outcome (KILL_SEED=... repeats it)."""
    releases = {"v1": shop.deploy("v1")}
    shop.write("row 1")
    releases["v2"] = shop.deploy("v2")
    seed = int(os.environ.get("KILL_SEED") or time.time())
    print("KILL_SEED=%d; releases %s" % (seed, releases))
    draw = random.Random(seed)
    killed_at, whole_runs = [], []

    def finished(target):
        assert_converged(shop, shop.rollback(recreate_target=releases[target]), target, releases[target])

    with rows_written_throughout(shop.stack.container_id("db"), interval=0.1, max_rows=30000, max_seconds=1200):
        started = time.monotonic()
        finished("v1")
        whole_runs.append(time.monotonic() - started)  # then each fresh run that ended before its kill
        serving = "v1"
        for number in range(3 * KILL_LOOP_RUNS):
            if len([kill for kill in killed_at if kill.mid_way]) >= KILL_LOOP_RUNS:
                break
            target = "v2" if serving == "v1" else "v1"
            for attempt in range(2 if number % 2 == 1 else 1):
                moment = draw.uniform(0.5, 0.9 * min(whole_runs))
                log = tmp_path / ("killed-%d-%d.log" % (number, attempt))
                before = shop.lock()  # a killed run's, when this one is the re-run killed too
                took = run_killed_at(shop, log, moment, recreate_target=releases[target])
                if took is not None and attempt == 0:  # a fresh run; a re-run may only finish a plan
                    whole_runs.append(took)
                left = shop.lock() if took is None else None
                if left == before:  # this run did not take the lock (over)
                    left = None
                where = "had ended" if took is not None else "before the lock"
                if left is not None:
                    where = left.get("step") or left.get("phase") or "lock taken, no step yet"
                killed_at.append(Kill(moment, where, left is not None))
            finished(target)
            serving = target
    killed = len([kill for kill in killed_at if kill.mid_way])
    assert killed >= KILL_LOOP_RUNS, "only %d runs were killed mid-way: %s" % (killed, killed_at)
    assert shop.rows() == ["row 1"]
    where = collections.Counter(kill.where for kill in killed_at)
    fault_case.observed(
        "KILL_SEED=%d; whole runs %.1f-%.1f s; %d of %d runs killed mid-way, holding the lock (at %s s); "
        "where: %s; every next run converged"
        % (
            seed,
            min(whole_runs),
            max(whole_runs),
            killed,
            len(killed_at),
            ", ".join("%.1f" % kill.moment for kill in killed_at if kill.mid_way),
            ", ".join("%s: %d" % item for item in sorted(where.items())),
        )
    )


# -- the Docker daemon stopped ---------------------------------------------------------------------
# On a Docker-in-Docker test host (its own engine; the test bed's engine, every other test's, is
# never touched): the shop deployed at v1 and v2 there by Molecule's own prepare playbook, then a
# rollback whose host's dockerd is stopped (SIGTERM, as systemctl stop does) at a step; the daemon
# started again, the same command run again until it succeeds (at most twice).

SHOP_DIR = "/srv/shop"
PREPARE_SHOP = testbed.REPO_ROOT / "molecule" / "shared" / "prepare_shop.yml"


@pytest.fixture
def dind_shop(images, tmp_path):
    """A test host with the shop at v2 (v1 before it), rows written; yields (host, inventory, variables)."""
    with testhosts.DockerHost.started() as host:
        host.load([images["APP_IMAGE"] + ":v1", images["APP_IMAGE"] + ":v2", images["POSTGRES_IMAGE"]])
        inventory = host.inventory(tmp_path / "inventory.ini")
        registry = images["APP_IMAGE"].rsplit("/stackops/", 1)[0]
        assert_ok(
            testbed.run_playbook(
                PREPARE_SHOP, {"shop_dir": SHOP_DIR, "testbed_registry": registry}, inventory=str(inventory)
            )
        )
        variables = {
            "recreate_project_src": SHOP_DIR,
            "recreate_backup_dir": "/var/backups/shop",
            "recreate_health_http": [{"url": "http://127.0.0.1:8080/health", "successes": 2}],
            "recreate_health_timeout": 60,
        }
        yield host, inventory, variables


@pytest.mark.fault(
    "the host's Docker daemon stopped during the rollback's {step}, then started again",
    where="recreate playbook, step {step} (Docker-in-Docker host)",
    expected=CONVERGES,
)
@pytest.mark.parametrize("step", ["backup", "start"])
def test_a_docker_daemon_stopped_mid_rollback_then_started_converges_on_the_next_run(
    dind_shop, tmp_path, step, fault_case
):
    host, inventory, variables = dind_shop
    with rows_written_throughout("shop-db-1", docker=host.docker, interval=0.1, max_seconds=900) as writer:
        log = tmp_path / "stopped.log"
        returncode = testhosts.fault_at_step(
            host, step, host.stop_engine, RECREATE_PLAYBOOK, variables, inventory, log, within=180
        )
        first = log.read_text()
        assert returncode != 0, first[-4000:]
        failed = re.search(r"FAILED at step '[^']+'", first)
        assert failed, first[-4000:]
        assert "The project lock keeps the plan" in first, first[-4000:]
        fault_case.observed("run 1 %s, its way back too (no engine), saying the lock keeps the plan" % failed.group(0))
        host.start_engine()
        # Each run after it succeeds and leaves every container running: the first finishes the
        # dead run's plan (put the release it started from back), the next one rolls back.
        outcomes = []
        for number in range(3):
            result = testbed.run_playbook(RECREATE_PLAYBOOK, variables, inventory=str(inventory))
            (tmp_path / ("rerun-%d.log" % number)).write_text(result.stdout)
            assert_ok(result)
            states = testbed.run([*host.docker, "ps", "-a", "--format", "{{.Names}} {{.State}}"]).stdout
            assert sorted(states.splitlines()) == ["shop-app-1 running", "shop-db-1 running"], (
                states,
                result.stdout[-5000:],
            )
            assert host.lock() == {}, "the lock was not released"
            done = re.search(
                r"(rolled back from \S+ \(\S+\) to \S+ \(\S+\)|already on release \S+ \(\S+\))", result.stdout
            )
            outcomes.append("run %d: %s" % (number + 2, done.group(1) if done else "ok"))
            if host.http_get("http://127.0.0.1:8080/version")[1].strip() == "v1":
                break
        writer_rows = len(writer.acknowledged)
    assert host.http_get("http://127.0.0.1:8080/version")[1].strip() == "v1", outcomes
    fault_case.observed("after the daemon started: " + "; ".join(outcomes))
    assert writer_rows > 0


# -- Caddy failing at a blue-green switch ----------------------------------------------------------


def rollback_with_caddy_broken_once_green_runs(shop, fault_case, break_caddy):
    """v1, v2 deployed, a row kept; the rollback to v1 with break_caddy() done once green has started
    (before the switch to it). The run must fail at the switch, leave the Caddyfile as it was and
    blue serving on its own port; returns v2's release id."""
    shop.deploy("v1")
    v2 = shop.deploy("v2")
    shop.write("kept")
    caddyfile = shop.caddy.caddyfile.read_text()
    broken = []

    def break_once_green_runs():
        testbed.wait_for(lambda: (shop.lock() or {}).get("phase") == "green_started", 180, "green started")
        break_caddy()
        broken.append(True)

    thread = threading.Thread(target=break_once_green_runs, daemon=True)
    try:
        with rows_written_throughout(shop.stack.container_id("db")):
            thread.start()
            result = shop.rollback()
            thread.join(timeout=10)
    finally:
        testbed.run(["chattr", "-i", str(shop.caddy.caddyfile)], check=False)
    assert broken, "Caddy was not broken during the rollback"
    assert result.returncode != 0, result.stdout[-5000:]
    failed = re.search(r"FAILED at step '[^']+'[^.]*", result.stdout)
    assert failed, result.stdout[-5000:]
    fault_case.observed(failed.group(0))
    assert shop.caddy.caddyfile.read_text() == caddyfile
    assert shop.version() == "v2", "blue does not serve on its own port"
    return v2


def assert_blue_serves_through_caddy(shop, v2):
    assert shop.served() == "v2" and shop.rows() == ["kept"]
    assert shop.caddy.running_dials() == [["127.0.0.1:%d" % shop.port]]
    assert shop.containers(shop.stack.name + "-green") == []
    listing = shop.info()
    assert listing["current"]["id"] == v2 and listing["lock"] is None, listing


@pytest.mark.fault(
    "Caddy's file made immutable once green runs, before the switch to it",
    where="blue_green playbook, switch to green",
    expected=REVERTED,
)
def test_a_caddyfile_that_cannot_be_written_at_the_switch_leaves_blue_serving_and_removes_green(bg_shop, fault_case):
    shop = bg_shop
    v2 = rollback_with_caddy_broken_once_green_runs(
        shop, fault_case, lambda: testbed.run(["chattr", "+i", str(shop.caddy.caddyfile)])
    )
    assert_blue_serves_through_caddy(shop, v2)


@pytest.mark.fault(
    "Caddy stopped (its admin API gone) once green runs, before the switch to it; then started again",
    where="blue_green playbook, switch to green",
    expected=CONVERGES,
)
def test_caddy_gone_at_the_switch_keeps_the_plan_and_once_back_the_next_run_finishes(bg_shop, fault_case):
    shop = bg_shop
    v2 = rollback_with_caddy_broken_once_green_runs(shop, fault_case, lambda: shop.caddy.stack.compose("stop", "caddy"))
    shop.caddy.stack.compose("start", "caddy")
    testbed.wait_http(shop.caddy.admin_url + "/config/", timeout=60)
    if shop.lock() is not None:  # the way back could not confirm where Caddy sends the traffic
        again = shop.rollback()
        assert_ok(again)
        fault_case.observed("once Caddy is back, the next run: %s" % said(again.stdout, "took over the lock"))
    assert_blue_serves_through_caddy(shop, v2)


@pytest.mark.fault(
    "the backup directory on a filesystem too small for the backups (2 MiB)",
    where="recreate playbook, preflight",
    expected=REFUSED,
)
def test_a_backup_directory_too_small_is_refused_before_anything_stops(shop, tmp_path, fault_case):
    shop.deploy("v1")
    shop.write("row 1")
    shop.deploy("v2")
    with testbed.small_filesystem(tmp_path / "small", size="2m") as small:
        before = unchanged_state(shop)
        with rows_written_throughout(shop.stack.container_id("db")):
            result = shop.rollback(recreate_backup_dir=str(small / "backups"))
        assert_refused(result, "not enough free space", "nothing was changed")
        fault_case.observed(failure_line(result, "not enough free space"))
        assert unchanged_state(shop) == before, "a refused rollback changed the host"
        assert list(small.rglob("*.tar*")) == [], "an archive was left"
    assert shop.version() == "v2" and shop.rows() == ["row 1"]
