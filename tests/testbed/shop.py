"""The test shop, app + PostgreSQL, shared by the rollback tests of both strategies."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import testbed

LEDGER = Path("/var/lib/stackops-rollback")
BLUE_GREEN_PLAYBOOK = testbed.REPO_ROOT / "playbooks" / "rollback_blue_green.yml"
RECREATE_PLAYBOOK = testbed.REPO_ROOT / "playbooks" / "rollback_recreate.yml"


class Shop:
    """The test shop (app + PostgreSQL) on the local engine: deploy, record, write and read rows."""

    def __init__(self, stack, port, tmp_path, databases=None):
        self.stack = stack
        # Declared, every record() stores the database's schema with the release.
        self.databases = databases or []
        self.port = port
        self.url = "http://127.0.0.1:%d" % port
        self.backups = tmp_path / "backups"
        self.tmp_path = tmp_path
        self.inventory = tmp_path / "inventory.ini"
        self.inventory.write_text(
            "[shops]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable
        )

    @property
    def dir(self):
        return self.stack.dir

    def deploy(self, tag, record=True, secret=None, expect=None, compose_settings=None, **record_options):
        """Deploy `tag` with a plain `docker compose up` (.env written; `compose_settings`, such as
        COMPOSE_FILE, added to it) and record it unless record=False."""
        env = self.dir / ".env"
        settings = "".join("%s=%s\n" % item for item in sorted((compose_settings or {}).items()))
        env.write_text(settings + "APP_TAG=%s\nDB_PASSWORD=pw-shop\nAPP_SECRET=%s\n" % (tag, secret or "secret-" + tag))
        env.chmod(0o600)
        self.stack.up()
        testbed.wait_http(self.url + "/version", body_contains=expect or tag)
        return self.record(tag, **record_options) if record else None

    def record(self, version, **options):
        args = dict(project_src=str(self.dir), project_name=self.stack.name, version=version, **options)
        if self.databases:
            args.setdefault("databases", self.databases)
        result = testbed.run_module("compose_release", args)
        assert not result.get("failed"), result
        return result["release_id"]

    def write(self, body):
        status, answer = testbed.http_post(self.url + "/records", body)
        assert status == 201, answer

    def version(self):
        return testbed.http_get(self.url + "/version")[1].strip()

    def rows(self):
        status, body = testbed.http_get(self.url + "/records")
        assert status == 200, body
        return [r["body"] for r in json.loads(body)]

    def info(self, **extra):
        return testbed.run_module(
            "compose_release_info", dict(project_src=str(self.dir), project_name=self.stack.name, **extra)
        )

    def lock(self):
        """The project's lock record, or None when free."""
        try:
            return json.loads((LEDGER / "projects" / self.stack.name / "lock").read_text())
        except (OSError, ValueError):
            return None

    def audit(self):
        path = LEDGER / "audit.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(x) for x in lines if json.loads(x).get("project") == self.stack.name]

    # The strategy's playbook and its variables: set by each kind of shop.
    playbook = None

    def variables(self, **variables):
        raise NotImplementedError

    def rollback(self, check=False, diff=False, clock_offset=None, **variables):
        """Run the strategy's playbook; with `clock_offset`, on a controller whose clock is that many
        seconds off the host's (the managed side, its modules, keeps the host's real clock)."""
        args = ["--diff"] if diff else []
        inventory = self.inventory
        if clock_offset is not None:
            inventory = self.tmp_path / "inventory-real-clock.ini"
            python = testbed.real_clock_python(self.tmp_path)
            inventory.write_text("[shops]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % python)
        return testbed.run_playbook(
            self.playbook,
            self.variables(**variables),
            inventory=str(inventory),
            check=check,
            extra_args=args,
            clock_offset=clock_offset,
        )

    def rollback_finishing_an_unfinished_plan(self, release, within, **variables):
        """The run after one that left its plan (put `release` back) in the lock, marked
        unfinished: it takes the lock over at once, not after the lease, and finishes that plan."""
        started = time.monotonic()
        result = self.rollback(**variables)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
        assert time.monotonic() - started < within, "the run waited for the unfinished lock"
        assert "took over the lock of a run that ended unfinished" in result.stdout, result.stdout[-4000:]
        assert "it was rolling back from release %s to %s" % (release, release) in result.stdout, result.stdout[-4000:]
        return result

    def start_rollback(self, log_path, **variables):
        """Start a rollback in the background (to be killed); its output goes to log_path."""
        return testbed.start_playbook(self.playbook, self.variables(**variables), str(self.inventory), str(log_path))

    def killed_when(self, run, log_path, condition, within=180):
        """SIGKILL a started rollback's whole process group (ansible-playbook, its workers, the module
        on the host) once condition(lock record) holds, polled every 50 ms; returns the lock record
        as the kill left it. Fails when the run ended first."""
        deadline = time.monotonic() + within
        try:
            while time.monotonic() < deadline and run.poll() is None:
                if condition(self.lock() or {}):
                    break
                time.sleep(0.05)
            assert run.poll() is None, "the run ended before it was killed: %s" % Path(log_path).read_text()[-3000:]
        finally:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=30)
        return self.lock() or {}


class RecreateShop(Shop):
    """The shop, rolled back by playbooks/rollback_recreate.yml."""

    playbook = RECREATE_PLAYBOOK

    def variables(self, **variables):
        extra = {
            "recreate_project_src": str(self.dir),
            "recreate_backup_dir": str(self.backups),
            "recreate_health_http": [{"url": self.url + "/health", "successes": 2}],
            "recreate_health_timeout": 60,
        }
        extra.update(variables)
        return extra


class BlueGreenShop(Shop):
    """The shop behind Caddy, rolled back by playbooks/rollback_blue_green.yml."""

    playbook = BLUE_GREEN_PLAYBOOK

    def __init__(self, stack, port, tmp_path, caddy, databases=None):
        super().__init__(stack, port, tmp_path, databases)
        self.caddy = caddy
        self.green_port = testbed.free_port()

    def variables(self, **variables):
        extra = {
            "blue_green_project_src": str(self.dir),
            "blue_green_proxy_service": "app",
            "blue_green_proxy_port": 8080,
            "blue_green_port_map": {str(self.port): self.green_port},
            "blue_green_caddyfile": str(self.caddy.caddyfile),
            "blue_green_caddy_site": self.caddy.site,
            "blue_green_caddy_container": self.caddy.container,
            "blue_green_caddy_admin_url": self.caddy.admin_url,
            "blue_green_proxy_url": self.caddy.url + "/version",
            "blue_green_health_timeout": 60,
            "blue_green_drain_seconds": 1,
        }
        extra.update(variables)
        return extra

    def deploy_unrecorded_broken(self):
        """Deploy the image whose /health fails, record it as a release, then go back to v2."""
        env = self.dir / ".env"
        env.write_text("APP_TAG=broken\nDB_PASSWORD=pw-shop\nAPP_SECRET=s\n")
        self.stack.up(wait=False)
        testbed.wait_http(self.url + "/version", body_contains="broken")
        return self.record("broken")

    def served(self):
        return testbed.http_get(self.caddy.url + "/version")[1].strip()

    def containers(self, project=None):
        """(service, image tag, status) of the project's containers, from the engine."""
        out = testbed.run(
            [
                "docker",
                "ps",
                "-a",
                "--filter",
                "label=com.docker.compose.project=%s" % (project or self.stack.name),
                "--format",
                '{{.Label "com.docker.compose.service"}} {{.Image}} {{.State}}',
            ]
        ).stdout
        return sorted(tuple(line.split()) for line in out.splitlines() if line.strip())


def two_releases_with_archive_notes(shop):
    """Deploy v1 then v2, writing a row and a note in the `archive` database after each (the shop on
    bind mounts, testbed.shop_on_bind_mounts with archive_dir); returns v2's release id."""
    shop.deploy("v1")
    shop.write("row 1")
    testbed.add_archive_row(shop.stack, "note 1")
    v2 = shop.deploy("v2")
    shop.write("row 2")
    testbed.add_archive_row(shop.stack, "note 2")
    return v2


def versions_in_order(samples):
    """The versions served, consecutive repeats folded: ['v2', 'v1'] for one switch."""
    order = []
    for sample in samples:
        if sample.ok and (not order or order[-1] != sample.body.strip()):
            order.append(sample.body.strip())
    return order


@contextlib.contextmanager
def latest_moved_from_v1_to_v2(shop, images, where):
    """The shop's app on a `latest` tag of its own repository, deployed and recorded as v1, then
    `latest` moved to v2 in the registry, pulled, deployed and recorded, as in the operators'
    reports. `where` the tag is written: "image" (a literal `image: repo:latest` line) or
    "variable" (`image: repo:${APP_TAG}`, APP_TAG=latest in .env). Yields (repo, v1 id, v2 id)."""
    repo = "%s/stackops/app-mutable-%s" % (images["REGISTRY"], testbed.unique_name("t"))
    tag = "latest" if where == "image" else "${APP_TAG}"
    try:
        testbed.run(["docker", "tag", images["APP_IMAGE"] + ":v1", repo + ":latest"])
        testbed.run(["docker", "push", "-q", repo + ":latest"])
        compose = shop.stack.compose_file.read_text().replace(images["APP_IMAGE"] + ":${APP_TAG}", repo + ":" + tag)
        shop.stack.write(compose)
        shop.deploy("latest", record=False, expect="v1")
        v1 = shop.record("v1")
        testbed.run(["docker", "tag", images["APP_IMAGE"] + ":v2", repo + ":latest"])
        testbed.run(["docker", "push", "-q", repo + ":latest"])
        shop.stack.compose("up", "-d", "--pull", "always", "--wait")
        v2 = shop.record("v2")
        yield repo, v1, v2
    finally:
        subprocess.run(["docker", "rmi", "-f", repo + ":latest"], capture_output=True, check=False)


def assert_the_project_directory_runs_v1_until_the_next_deploy(shop, result, repo, where, v2, served):
    """After a rollback from v2 to v1 on a moved `latest`: the digest is pinned where the tag is
    written, the report says so and how to run the project by hand; a plain `docker compose pull`
    and `up -d` in the project directory keep v1 and its env; the next deploy replaces the pin
    (a new .env; for a literal tag, compose_release state=unpinned before its pull) and is v2 again."""
    pinned = re.compile(r"%s:latest@sha256:[0-9a-f]{64}" % re.escape(repo))
    assert pinned.fullmatch(shop.stack.container_image("app")), shop.stack.container_image("app")
    if where == "image":
        assert pinned.search(shop.stack.compose_file.read_text()), shop.stack.compose_file.read_text()
        words = "images pinned by digest in the project files (compose.yml: image)"
    else:
        assert re.match(r"APP_TAG=latest@sha256:[0-9a-f]{64}\n", (shop.dir / ".env").read_text())
        words = "images pinned by digest in the project files (.env: APP_TAG)"
    assert words in result.stdout, result.stdout[-4000:]
    assert "by hand: cd %s && docker compose " % shop.dir in result.stdout, result.stdout[-4000:]
    secret = shop.stack.container_env("app")["APP_SECRET"]
    for attempt in ("after the rollback", "after a plain docker compose pull and up -d in the project directory"):
        assert served() == "v1", attempt
        assert shop.stack.container_env("app")["APP_SECRET"] == secret, attempt
        shop.stack.compose("pull", "--quiet")
        shop.stack.up()
    if where == "image":
        unpinned = testbed.run_module(
            "compose_release", dict(project_src=str(shop.dir), project_name=shop.stack.name, state="unpinned")
        )
        assert unpinned["written"] == ["compose.yml"], unpinned
        shop.stack.compose("up", "-d", "--pull", "always", "--wait")
        testbed.wait_http(shop.url + "/version", body_contains="v2")
        assert shop.record("v2") == v2, "the deploy after the rollback is release v2 again, its files unpinned"
    else:
        assert shop.deploy("latest", expect="v2") == v2, "a deploy writing its .env replaces the pin"


def rolled_back_over_a_moved_latest_the_project_directory_keeps_v1(shop, images, where, served):
    """The whole story for either strategy: v1 then v2 on a moved `latest`, a rollback to v1 that
    brings v1's image back, and the project directory keeps it until the next deploy."""
    with latest_moved_from_v1_to_v2(shop, images, where) as (repo, _v1, v2):
        assert served() == "v2"
        result = shop.rollback()
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
        assert served() == "v1", "the rollback followed the moved tag"
        assert_the_project_directory_runs_v1_until_the_next_deploy(shop, result, repo, where, v2, served)


def host_state(shop):
    """What a check-mode run must leave exactly as it was: every path under the project's ledger
    folder and the project directory (mode, and content hash for files), Caddy's file, and the
    project's containers (green's included: their names start with the project's) id for id."""
    state = {}
    for root in (LEDGER / "projects" / shop.stack.name, shop.dir):
        for path in sorted(root.rglob("*")):
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            state[str(path)] = (oct(info.st_mode), digest)
    caddy = getattr(shop, "caddy", None)
    if caddy is not None:
        state["caddyfile"] = hashlib.sha256(caddy.caddyfile.read_bytes()).hexdigest()
    mine = ["--filter", "name=" + shop.stack.name, "--format", "{{.ID}} {{.Names}} {{.State}}"]
    listed = testbed.run(["docker", "ps", "-a", "--no-trunc", *mine]).stdout
    state["containers"] = sorted(listed.splitlines())
    return state
