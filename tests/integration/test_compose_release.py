"""Release ledger against real stacks: record, list, resolve, restore, lock."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import testbed
from faults import CONVERGES, REFUSED

COMPOSE = """\
services:
  app:
    image: {app}:${{APP_TAG}}
    environment:
      APP_SECRET: ${{APP_SECRET}}
    ports:
      - "127.0.0.1:{port}:8080"
"""


@pytest.fixture
def app_stack(compose_stack, images, free_port, tmp_path):
    port = free_port()
    stack = compose_stack(
        COMPOSE.format(app=images["APP_IMAGE"], port=port), {".env": "APP_TAG=v1\nAPP_SECRET=hunter2\n"}
    )
    stack.port = port
    stack.ledger = str(tmp_path / "ledger")
    stack.up()
    return stack


def deploy(stack, tag):
    (stack.dir / ".env").write_text("APP_TAG=%s\nAPP_SECRET=hunter2-%s\n" % (tag, tag))
    stack.up()
    testbed.wait_http("http://127.0.0.1:%d/version" % stack.port, body_contains=tag)


def record(run_module, stack, **extra):
    args = dict(project_src=str(stack.dir), project_name=stack.name, ledger_dir=stack.ledger)
    args.update(extra)
    return run_module("compose_release", args)


def info(run_module, stack, **extra):
    args = dict(project_src=str(stack.dir), project_name=stack.name, ledger_dir=stack.ledger)
    args.update(extra)
    return run_module("compose_release_info", args)


def test_record_is_idempotent_and_private(run_module, app_stack):
    first = record(run_module, app_stack, version="v1")
    assert first["changed"] and first["new_release"], first
    assert first["release"]["images"]["app"].startswith(testbed.IMAGES["APP_IMAGE"] + "@sha256:")
    again = record(run_module, app_stack, version="v1")
    assert not again["changed"], again
    assert again["release_id"] == first["release_id"]
    # The ledger keeps secrets: nothing in it is readable by others.
    for root, dirs, files in os.walk(app_stack.ledger):
        for name in dirs + files:
            mode = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
            assert mode & 0o077 == 0, "%s is %o" % (os.path.join(root, name), mode)
    assert "hunter2" not in json.dumps(first)


def test_previous_and_restore_put_back_files_and_digests(run_module, app_stack):
    v1 = record(run_module, app_stack, version="v1")["release_id"]
    deploy(app_stack, "v2")
    v2 = record(run_module, app_stack, version="v2")["release_id"]
    assert v1 != v2
    listing = info(run_module, app_stack, target="previous", compare_deployed=True)
    assert listing["current"]["id"] == v2
    assert listing["previous"]["id"] == v1
    assert listing["target"]["id"] == v1
    assert listing["deployed_id"] == v2
    # The version label given at deploy names the release, as a release id does.
    assert info(run_module, app_stack, target="v1")["target"]["id"] == v1

    env_before = (app_stack.dir / ".env").read_text()
    checked = testbed.run_module(
        "compose_release",
        dict(
            project_src=str(app_stack.dir),
            project_name=app_stack.name,
            ledger_dir=app_stack.ledger,
            state="restored",
            release="previous",
        ),
        check=True,
        diff=True,
    )
    assert checked["changed"], checked
    assert (app_stack.dir / ".env").read_text() == env_before, "check mode wrote a file"
    assert "hunter2" not in json.dumps(checked), "the env file's content leaked into the output"

    restored = run_module(
        "compose_release",
        dict(
            project_src=str(app_stack.dir),
            project_name=app_stack.name,
            ledger_dir=app_stack.ledger,
            state="restored",
            release="previous",
        ),
    )
    assert restored["changed"] and restored["pinned"], restored
    # The digest is pinned where the tag is defined: a plain compose up runs v1, a deploy's new tag replaces it.
    digest = v1_digest(run_module, app_stack, v1).partition("@")[2]
    assert (app_stack.dir / ".env").read_text() == "APP_TAG=v1@%s\nAPP_SECRET=hunter2\n" % digest
    assert restored["pins"] == [{"services": ["app"], "file": ".env", "line": 1, "how": "APP_TAG"}], restored
    assert restored["not_pinned"] == [] and restored["compose_files"] == [str(app_stack.dir / "compose.yml")]
    assert restored["by_hand"].startswith("cd %s && docker compose " % app_stack.dir), restored["by_hand"]
    assert restored["by_hand"].endswith(" up -d"), restored["by_hand"]
    app_stack.up()
    testbed.wait_http("http://127.0.0.1:%d/version" % app_stack.port, body_contains="v1")
    assert app_stack.container_image("app") == "%s:v1@%s" % (testbed.IMAGES["APP_IMAGE"], digest)
    recorded = record(run_module, app_stack, event="rollback")
    assert recorded["release_id"] == v1 and not recorded["new_release"], "a pinned file is still release v1's"
    again = run_module(
        "compose_release",
        dict(
            project_src=str(app_stack.dir),
            project_name=app_stack.name,
            ledger_dir=app_stack.ledger,
            state="restored",
            release=v1,
        ),
    )
    assert not again["changed"], again
    unpinned = record(run_module, app_stack, state="unpinned")
    assert unpinned["changed"] and unpinned["written"] == [".env"], unpinned
    assert (app_stack.dir / ".env").read_text() == "APP_TAG=v1\nAPP_SECRET=hunter2\n"
    assert not record(run_module, app_stack, state="unpinned")["changed"]


def v1_digest(run_module, stack, release_id):
    listing = info(run_module, stack)
    return next(r for r in listing["releases"] if r["id"] == release_id)["services"]["app"]["repo_digest"]


def test_a_failed_rollback_never_becomes_current_or_previous(run_module, app_stack):
    # deploy v1, deploy v2, then a rollback that failed and whose revert left v3 running
    v1 = record(run_module, app_stack, version="v1")["release_id"]
    deploy(app_stack, "v2")
    v2 = record(run_module, app_stack, version="v2")["release_id"]
    deploy(app_stack, "v3")
    failed = record(run_module, app_stack, event="failed_rollback", version="v3")
    assert failed["changed"], failed
    listing = info(run_module, app_stack, target="current")
    assert (listing["current"]["id"], listing["previous"]["id"]) == (v2, v1), listing
    assert listing["target"]["id"] == v2, "a rollback to current would go to the failed state"
    failed_events = [(e["event"], e["release"]) for e in listing["failed_rollbacks"]]
    assert failed_events == [("failed_rollback", failed["release_id"])]
    assert [e["event"] for e in listing["history"]] == ["deploy", "deploy", "failed_rollback"]


def test_git_ref_resolves_to_the_release_recorded_from_it(run_module, app_stack):
    git = ["git", "-C", str(app_stack.dir), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "compose.yml", ".env"], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    v1 = record(run_module, app_stack, version="v1")
    assert v1["release"]["git"]["commit"]
    deploy(app_stack, "v2")
    subprocess.run([*git, "commit", "-qam", "v2"], check=True)
    record(run_module, app_stack, version="v2")
    listing = info(run_module, app_stack, target="HEAD~1")
    assert listing["target"]["id"] == v1["release_id"]


def test_a_changed_service_env_file_makes_the_git_work_tree_dirty(run_module, app_stack):
    """The release is the project as Compose loads it: a service env_file that differs from its
    commit makes the release dirty, like a changed compose file."""
    compose = app_stack.dir / "compose.yml"
    compose.write_text(
        compose.read_text().replace("    environment:\n", "    env_file: app.env\n    environment:\n", 1)
    )
    (app_stack.dir / "app.env").write_text("GREETING=hello\n")
    git = ["git", "-C", str(app_stack.dir), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "compose.yml", ".env", "app.env"], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    clean = record(run_module, app_stack, version="v1")
    assert "app.env" in clean["release"]["files"], clean["release"]["files"]
    assert clean["release"]["git"]["dirty"] is False, clean["release"]["git"]
    (app_stack.dir / "app.env").write_text("GREETING=changed by hand\n")
    dirty = record(run_module, app_stack, version="v1-edited")
    assert dirty["release"]["git"]["dirty"] is True, dirty["release"]["git"]


@pytest.mark.fault(
    "a target that names no release, and a version label on two releases",
    where="compose_release_info target",
    expected=REFUSED,
)
def test_unknown_target_and_a_label_on_two_releases_are_clear_errors(run_module, app_stack, fault_case):
    first = record(run_module, app_stack, version="v1")["release_id"]
    result = info(run_module, app_stack, target="0123456789ab")
    assert result.get("failed"), result
    assert "neither a release id" in result["msg"] and app_stack.name in result["msg"]
    fault_case.observed(result["msg"])
    # Other content recorded under the same version label: which one is meant cannot be told.
    deploy(app_stack, "v2")
    second = record(run_module, app_stack, version="v1")["release_id"]
    twice = info(run_module, app_stack, target="v1")
    assert twice.get("failed"), twice
    assert "target 'v1' is the version label of 2 releases of project %s" % app_stack.name in twice["msg"]
    assert first in twice["msg"] and second in twice["msg"] and "name the release id instead" in twice["msg"]
    fault_case.observed(twice["msg"])


@pytest.mark.fault("target=previous with one release recorded", where="compose_release_info target", expected=REFUSED)
def test_no_previous_release_is_a_clear_error(run_module, app_stack, fault_case):
    record(run_module, app_stack)
    result = info(run_module, app_stack, target="previous")
    assert result.get("failed"), result
    assert "has no previous release" in result["msg"]
    fault_case.observed(result["msg"])


@pytest.mark.fault("recording a project that has no container", where="compose_release state=present", expected=REFUSED)
def test_recording_an_undeployed_project_fails_and_writes_nothing(run_module, app_stack, fault_case):
    app_stack.compose("down", "-t", "1")
    result = record(run_module, app_stack)
    assert result.get("failed"), result
    assert "have no container" in result["msg"]
    fault_case.observed(result["msg"])
    assert not os.path.exists(os.path.join(app_stack.ledger, "projects", app_stack.name, "releases"))


def lock(run_module, ledger, token, **extra):
    return run_module("rollback_lock", dict(project="shop", ledger_dir=ledger, token=token, **extra))


@pytest.mark.fault(
    "a second run takes, or removes, the lock a live run holds",
    where="rollback_lock state=present, state=absent",
    expected=REFUSED,
)
def test_lock_names_its_live_holder(run_module, tmp_path, fault_case):
    ledger = str(tmp_path / "ledger")
    # This test process stands for a play that is still running on this controller.
    alive = dict(holder="alice's play", controller_pid=os.getpid())
    asked = time.time()
    first = lock(run_module, ledger, "run-1", **alive)
    assert first["changed"], first
    # The managed host's clock (here the same machine), where the roles open their windows.
    assert asked <= first["host_time"] <= time.time(), (asked, first["host_time"])
    assert not lock(run_module, ledger, "run-1", **alive)["changed"]
    other = lock(run_module, ledger, "run-2", holder="bob's play")
    assert other.get("failed"), other
    assert "alice's play" in other["msg"] and "another rollback holds the lock" in other["msg"]
    fault_case.observed(other["msg"])
    wrong = lock(run_module, ledger, "run-2", state="absent")
    assert wrong.get("failed") and "not removing it" in wrong["msg"], wrong
    fault_case.observed(wrong["msg"])
    assert lock(run_module, ledger, "run-1", state="absent")["changed"]
    assert lock(run_module, ledger, "run-2")["changed"]


@pytest.mark.fault(
    "the run holding the lock died (its controller process is gone)",
    where="rollback_lock state=present",
    expected=CONVERGES,
)
def test_lock_of_a_dead_run_is_taken_over_with_its_record(run_module, tmp_path, fault_case):
    ledger = str(tmp_path / "ledger")
    finished = subprocess.Popen(["true"])
    finished.wait()
    held = lock(run_module, ledger, "run-1", controller_pid=finished.pid, data={"phase": "switched", "to": "abc"})
    assert held["changed"], held
    taken = lock(run_module, ledger, "run-2", holder="the next run")
    assert taken["changed"] and "took over the lock of a run that died" in taken["msg"], taken
    fault_case.observed(taken["msg"])
    assert taken["resumed"]["phase"] == "switched" and taken["resumed"]["to"] == "abc"
    assert taken["holder"]["token"] == "run-2"


@pytest.mark.fault(
    "a lock held by a run on another controller (its process cannot be seen)",
    where="rollback_lock state=present",
    expected=REFUSED,
)
def test_lock_of_another_controller_is_not_taken_over(run_module, tmp_path, fault_case):
    ledger = str(tmp_path / "ledger")
    held = lock(run_module, ledger, "run-1", controller="elsewhere", controller_pid=1)
    assert held["changed"], held
    refused = lock(run_module, ledger, "run-2")
    assert refused.get("failed") and "controller elsewhere" in refused["msg"], refused
    fault_case.observed(refused["msg"])
    forced = lock(run_module, ledger, "run-2", state="absent", force=True)
    assert forced["changed"], forced


HOLD_LOCK = testbed.REPO_ROOT / "tests" / "integration" / "playbooks" / "hold_lock.yml"


@pytest.mark.fault(
    "the controller holding the lock is killed mid-run; a second controller asks for the lock",
    where="rollback_lock state=present",
    expected=CONVERGES,
)
def test_a_second_controller_waits_then_takes_over_once_the_lease_has_ended(tmp_path, fault_case):
    """Two controllers of different hostnames, as two AWX jobs: the second waits for the first's
    lock, then fails naming it; once the first is killed, the second takes the lock over when the
    first's lease has ended (its process cannot be seen from the second controller)."""
    ledger = str(tmp_path / "ledger")
    lease, grace = 30, 3  # the second controller's refusal comes well within the lease
    first = testbed.start_playbook(
        HOLD_LOCK,
        dict(
            hold_project="shop",
            hold_ledger=ledger,
            hold_holder="job 41",
            hold_token="run-1",
            hold_lease=lease,
            hold_grace=grace,
            hold_from="aaaaaaaaaaaa",
            hold_to="bbbbbbbbbbbb",
        ),
        "localhost,",
        str(tmp_path / "first.log"),
        controller="awx-job-41",
    )
    lock_file = Path(ledger) / "projects" / "shop" / "lock"
    try:
        testbed.wait_for(lambda: "run-1" in (lock_file.read_text() if lock_file.exists() else ""), 60, "the first lock")
        second = dict(project="shop", ledger_dir=ledger, token="run-2", holder="job 42", lease=lease, grace=grace)
        started = time.monotonic()
        refused = testbed.run_module("rollback_lock", dict(second, wait_timeout=3), controller="awx-job-42")
        waited = time.monotonic() - started
        assert refused.get("failed"), refused
        for part in ("(waited 3s)", "job 41", "awx-job-41", "from release aaaaaaaaaaaa to bbbbbbbbbbbb", "force=true"):
            assert part in refused["msg"], refused["msg"]
        fault_case.observed(refused["msg"])
        assert waited >= 3, waited
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    expires = json.loads(lock_file.read_text())["lease_expires"]
    taken = testbed.run_module("rollback_lock", dict(second, wait_timeout=60), controller="awx-job-42")
    assert taken.get("changed") and not taken.get("failed"), taken
    assert time.time() >= expires + grace, "taken over before the lease and its grace had ended"
    assert taken["resumed"]["token"] == "run-1" and taken["resumed"]["plan"]["to"] == "bbbbbbbbbbbb", taken
    assert "took over the lock of a run whose lease ended (job 41, controller awx-job-41" in taken["msg"], taken
    fault_case.observed(taken["msg"])
    assert taken["holder"]["controller"] == "awx-job-42"


@pytest.mark.fault(
    "a second controller asks for the lock while a live run's step lasts longer than its lease",
    where="rollback_lock state=present (lease renewed by compose_health)",
    expected=REFUSED,
)
def test_a_live_run_is_not_taken_over_during_a_step_longer_than_its_lease(app_stack, fault_case):
    """A health wait three times longer than the run's lease: the module keeps the lease while it
    waits, so a second controller is refused all through the step; once the step has ended, the
    lease runs out and the second controller takes the lock over."""
    lease, grace, step_seconds = 10, 5, 40
    first = dict(project=app_stack.name, ledger_dir=app_stack.ledger, token="run-1", holder="job 41")
    held = testbed.run_module("rollback_lock", dict(first, lease=lease, grace=grace), controller="awx-job-41")
    assert held["changed"], held
    waited = []
    step = threading.Thread(
        target=lambda: waited.append(
            testbed.run_module(
                "compose_health",
                dict(
                    project_src=str(app_stack.dir),
                    project_name=app_stack.name,
                    timeout=step_seconds,
                    http=[{"url": "http://127.0.0.1:%d/never-there" % app_stack.port, "timeout": 2}],
                    logs={"enabled": False},
                    fail_on_unhealthy=False,
                    ledger_dir=app_stack.ledger,
                    renew_lock={"project": app_stack.name, "token": "run-1"},
                ),
                controller="awx-job-41",
            )
        ),
        daemon=True,
    )
    step.start()
    second = dict(first, token="run-2", holder="job 42", lease=lease, grace=grace, wait_timeout=0)
    time.sleep(lease + grace + 3)  # unrenewed, the first run's lock would be free by now
    for attempt in (1, 2):
        refused = testbed.run_module("rollback_lock", second, controller="awx-job-42")
        assert refused.get("failed") and "job 41" in refused["msg"], (attempt, refused)
        time.sleep(3)
    fault_case.observed(refused["msg"])
    assert step.is_alive(), "the step ended before the second controller had tried twice"
    step.join(timeout=step_seconds + 60)
    assert waited and waited[0]["healthy"] is False and not waited[0].get("failed"), waited
    assert not waited[0].get("warnings"), waited[0]
    taken = testbed.run_module("rollback_lock", dict(second, wait_timeout=lease + grace + 30), controller="awx-job-42")
    assert taken.get("changed") and taken["resumed"]["token"] == "run-1", taken


@pytest.mark.fault(
    "an empty lock file (a crash right after it was created)", where="rollback_lock state=present", expected=CONVERGES
)
def test_an_empty_lock_file_is_taken_over_after_its_grace(run_module, tmp_path, fault_case):
    lock_file = tmp_path / "ledger" / "projects" / "shop" / "lock"
    lock_file.parent.mkdir(parents=True)
    lock_file.touch()  # created, never written: a crash right after it was created
    written = time.time() - 100
    os.utime(lock_file, (written, written))
    args = dict(project="shop", ledger_dir=str(tmp_path / "ledger"), token="run-2")
    refused = run_module("rollback_lock", dict(args, grace=600))  # written 100 s ago: within its grace
    assert refused.get("failed") and "empty or damaged lock file" in refused["msg"], refused
    fault_case.observed(refused["msg"])
    taken = run_module("rollback_lock", dict(args, grace=60))  # past its grace
    assert taken["changed"] and "an empty or damaged lock file" in taken["msg"], taken
    fault_case.observed(taken["msg"])
    assert taken["holder"]["token"] == "run-2"


def test_pulled_brings_back_a_removed_image_by_digest(run_module, compose_stack, images, free_port, tmp_path):
    repo = "%s/stackops/app-pull-%s" % (images["REGISTRY"], testbed.unique_name("t"))
    testbed.run(["docker", "tag", images["APP_IMAGE"] + ":v1", repo + ":v1"])
    testbed.run(["docker", "push", "-q", repo + ":v1"])
    stack = compose_stack(COMPOSE.format(app=repo, port=free_port()), {".env": "APP_TAG=v1\nAPP_SECRET=x\n"})
    stack.up()
    ledger = str(tmp_path / "ledger")
    args = dict(project_src=str(stack.dir), project_name=stack.name, ledger_dir=ledger)
    recorded = run_module("compose_release", args)
    digest = recorded["release"]["services"]["app"]["repo_digest"]
    stack.compose("down", "-t", "1")
    testbed.run(["docker", "rmi", repo + ":v1"])
    try:
        checked = testbed.run_module("compose_release", dict(args, state="pulled", release="current"), check=True)
        assert checked["changed"] and checked["pulled"] == ["app"], checked
        pulled = run_module("compose_release", dict(args, state="pulled", release="current"))
        assert pulled["changed"] and pulled["pulled"] == ["app"], pulled
        testbed.run(["docker", "image", "inspect", digest])
        again = run_module("compose_release", dict(args, state="pulled", release="current"))
        assert not again["changed"] and again["present"] == ["app"], again
    finally:
        subprocess.run(["docker", "rmi", "-f", repo + ":v1", digest], capture_output=True, check=False)
