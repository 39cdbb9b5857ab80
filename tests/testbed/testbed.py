"""Python side of the test bed: image names, free ports, compose stacks, running Ansible.

Used by the integration tests, the benchmarks and the demo. Everything here talks to the real
Docker engine and the real `docker compose` CLI; nothing is faked.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

TESTBED_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTBED_DIR.parent.parent
VENV_BIN = REPO_ROOT / ".venv" / "bin"
COLLECTIONS_PATH = REPO_ROOT / ".build" / "collections"


# The "shop" used by the rollback tests and benchmarks: the app and PostgreSQL with rows. The
# app's image tag and secrets come from .env; app-extra.env (which a test may point outside the
# project, where no release records it) lets a test drift one version's config.
SHOP_COMPOSE = """\
services:
  db:
    image: {postgres}
    environment:
      POSTGRES_PASSWORD: ${{DB_PASSWORD}}
      POSTGRES_DB: shop
    volumes:
      - dbdata:/var/lib/postgresql/data
  app:
    image: {app}:${{APP_TAG}}
    env_file:
      - path: ./app-extra.env
        required: false
    environment:
      DATABASE_URL: postgresql://postgres:${{DB_PASSWORD}}@db/shop
      APP_SECRET: ${{APP_SECRET}}
    ports:
      - "127.0.0.1:{port}:8080"
    depends_on:
      db:
        condition: service_healthy
volumes:
  dbdata:
"""


# A second PostgreSQL whose data is a bind mount of an absolute path outside the project.
ARCHIVE_DATABASE = """\
  archive:
    image: {postgres}
    environment:
      POSTGRES_PASSWORD: ${{DB_PASSWORD}}
      POSTGRES_DB: archive
    volumes:
      - {archive_dir}:/var/lib/postgresql/data
"""


def shop_on_bind_mounts(postgres, app, port, archive_dir=None):
    """The shop with its database on a relative bind mount (./pgdata) and a read-only config mount
    (./conf): data that is a directory of the project, and a mount that is not data. With
    `archive_dir`, a second PostgreSQL (service `archive`) keeps its data there."""
    compose = (
        SHOP_COMPOSE.format(postgres=postgres, app=app, port=port)
        .replace("      - dbdata:/var/lib/postgresql/data\n", "      - ./pgdata:/var/lib/postgresql/data\n")
        .replace("volumes:\n  dbdata:\n", "")
        .replace("    ports:\n", "    volumes:\n      - ./conf:/etc/shop:ro\n    ports:\n")
    )
    if archive_dir:
        archive = ARCHIVE_DATABASE.format(postgres=postgres, archive_dir=archive_dir)
        compose = compose.replace("  app:\n", archive + "  app:\n", 1)
    return compose


def archive_rows(stack):
    """The rows of the `archive` database (its table made on first use)."""
    sql = "CREATE TABLE IF NOT EXISTS notes (body text); SELECT count(*) FROM notes;"
    out = stack.compose("exec", "-T", "archive", "psql", "-U", "postgres", "-d", "archive", "-tAc", sql).stdout
    return int(out.split()[-1])


def add_archive_row(stack, body):
    sql = "CREATE TABLE IF NOT EXISTS notes (body text); INSERT INTO notes VALUES ('%s');" % body
    stack.compose("exec", "-T", "archive", "psql", "-U", "postgres", "-d", "archive", "-c", sql)


def servers_on(directory):
    """The running containers that bind-mount a directory (the engine's volume filter matches a bind's source)."""
    return run(["docker", "ps", "-q", "--filter", "volume=%s" % directory]).stdout.split()


# The same shop on MariaDB (the `mariadb` engine of the databases declaration).
SHOP_MARIADB_COMPOSE = """\
services:
  db:
    image: {mariadb}
    environment:
      MARIADB_DATABASE: shop
      MARIADB_USER: shop
      MARIADB_PASSWORD: ${{DB_PASSWORD}}
    volumes:
      - dbdata:/var/lib/mysql
  app:
    image: {app}:${{APP_TAG}}
    environment:
      DATABASE_URL: mysql+pymysql://shop:${{DB_PASSWORD}}@db/shop
      APP_SECRET: ${{APP_SECRET}}
    ports:
      - "127.0.0.1:{port}:8080"
    depends_on:
      db:
        condition: service_healthy
volumes:
  dbdata:
"""
# How the tests declare the shop's database (see stackops.rollback.compose_schema).
SHOP_DATABASES = {
    "postgres": [
        {"service": "db", "engine": "postgres", "database": "shop", "user": "postgres", "password": "pw-shop"}
    ],
    "mariadb": [{"service": "db", "engine": "mariadb", "database": "shop", "user": "shop", "password": "pw-shop"}],
}


def shop_compose(engine, images, port):
    """The shop's compose file on PostgreSQL or MariaDB."""
    if engine == "mariadb":
        return SHOP_MARIADB_COMPOSE.format(mariadb=images["MARIADB_IMAGE"], app=images["APP_IMAGE"], port=port)
    return SHOP_COMPOSE.format(postgres=images["POSTGRES_IMAGE"], app=images["APP_IMAGE"], port=port)


def load_images():
    """Image names from images.env (the same file the shell scripts source)."""
    env = {"STACKOPS_REGISTRY": os.environ.get("STACKOPS_REGISTRY", "127.0.0.1:5000")}
    names = {}
    for line in (TESTBED_DIR / "images.env").read_text().splitlines():
        m = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if not m:
            continue
        value = re.sub(
            r"\$\{STACKOPS_REGISTRY:-([^}]*)\}", lambda x: env["STACKOPS_REGISTRY"] or x.group(1), m.group(2)
        )
        value = re.sub(r"\$([A-Z][A-Z0-9_]*)", lambda x: names.get(x.group(1), ""), value)
        names[m.group(1)] = value
    return names


IMAGES = load_images()


def docker_ready():
    """None when the engine answers, else the reason it does not."""
    try:
        out = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if out.returncode != 0:
        return (out.stderr or out.stdout).strip()
    return None


def _port_range():
    """Ports below the kernel's ephemeral range, split between parallel test workers (pytest -n)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") else 0
    size = (32000 - 12000) // max(count, 1)
    return 12000 + index * size, 12000 + (index + 1) * size


_HANDED_OUT = set()


def free_port():
    """A port on 127.0.0.1 nothing listens on, from this worker's own range, and never one this
    process handed out before (a test that takes several before it binds any gets different ones)."""
    low, high = _port_range()
    for _attempt in range(200):
        port = random.randrange(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port on 127.0.0.1 in %d-%d after 200 tries" % (low, high))


# Every compose project, container and volume the test bed makes is named with one of these
# prefixes, so that leftovers.py can find what a killed run left behind (and nothing else).
PREFIXES = ("st-", "bench-")


def unique_name(prefix="st"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def engine_name(prefix):
    """unique_name for something made on the engine: its prefix must be one of PREFIXES."""
    name = unique_name(prefix)
    if not name.startswith(PREFIXES):
        raise ValueError(
            "test bed name %r must start with one of %s (leftovers.py finds them by it)" % (name, PREFIXES)
        )
    return name


def http_get(url, timeout=2.0):
    """(status, body) of a GET; status 0 with the error text when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
        # HTTPException: a server restarted mid-answer (IncompleteRead, BadStatusLine) is no answer
        return 0, "%s: %s" % (exc.__class__.__name__, exc)


def http_post(url, body, timeout=5.0):
    """(status, body) of a POST with a text body."""
    req = urllib.request.Request(url, data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def wait_for(condition, timeout, what, interval=0.1):
    """Wait until condition() is true; fail naming what did not happen within timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError("%s: not within %ss" % (what, timeout))


def wait_http(url, expect_status=200, body_contains=None, timeout=60.0, interval=0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = http_get(url)
        if last[0] == expect_status and (body_contains is None or body_contains in last[1]):
            return last
        time.sleep(interval)
    raise AssertionError(
        "%s did not answer %s%s within %ss; last answer: %r"
        % (url, expect_status, " with %r" % body_contains if body_contains else "", timeout, last)
    )


def run(cmd, check=True, **kwargs):
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    result = subprocess.run(cmd, check=False, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            "command failed (rc=%s): %s\nstdout: %s\nstderr: %s"
            % (result.returncode, " ".join(map(str, cmd)), result.stdout, result.stderr)
        )
    return result


class ComposeStack:
    """A compose project in its own directory with a unique name; `down()` removes it all."""

    def __init__(self, directory, name, compose_yaml, files=None):
        self.dir = Path(directory)
        self.name = name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.compose_file = self.dir / "compose.yml"
        self.write(compose_yaml, files)

    def write(self, compose_yaml, files=None):
        self.compose_file.write_text(compose_yaml)
        for rel, content in (files or {}).items():
            path = self.dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)

    def compose(self, *args, check=True, timeout=300):
        # Run in the project directory, as an operator does: Compose resolves the paths of
        # COMPOSE_FILE from the working directory, not from --project-directory.
        return run(
            ["docker", "compose", "--project-directory", str(self.dir), "-p", self.name, *args],
            check=check,
            timeout=timeout,
            cwd=str(self.dir),
        )

    def up(self, *services, wait=True):
        args = ["up", "-d", "--quiet-pull"]
        if wait:
            args += ["--wait", "--wait-timeout", "120"]
        return self.compose(*args, *services)

    def ps(self):
        from_cli = self.compose("ps", "--all", "--format", "json").stdout
        text = from_cli.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def container_id(self, service):
        return self.compose("ps", "--all", "-q", service).stdout.strip()

    def container_env(self, service):
        """The environment the service's running container was started with, from the engine."""
        container = self.compose("ps", "--quiet", service).stdout.strip()
        assert container, "service %s of %s runs no container" % (service, self.name)
        env = json.loads(run(["docker", "inspect", "--format", "{{json .Config.Env}}", container]).stdout)
        return dict(item.split("=", 1) for item in env)

    def container_image(self, service):
        """The image reference the service's running container was started with (Config.Image)."""
        container = self.compose("ps", "--quiet", service).stdout.strip()
        assert container, "service %s of %s runs no container" % (service, self.name)
        return run(["docker", "inspect", "--format", "{{.Config.Image}}", container]).stdout.strip()

    def volume(self, name):
        return "%s_%s" % (self.name, name)

    def down(self):
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)


class Stacks:
    """Factory: stacks(yaml, files=None, prefix=None) -> ComposeStack (not started), under `work`.

    down() brings every stack made here down with its volumes, the last made first.
    """

    def __init__(self, work, default_prefix="bench"):
        self.work = work
        self.default_prefix = default_prefix
        self.made = []

    def __call__(self, yaml, files=None, prefix=None):
        name = engine_name(prefix or self.default_prefix)
        stack = ComposeStack(self.work / name, name, yaml, files)
        self.made.append(stack)
        return stack

    def down(self):
        for stack in reversed(self.made):
            stack.down()


def ansible_env(extra=None):
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS_PATH),
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
            "PATH": "%s:%s" % (VENV_BIN, env.get("PATH", "")),
        }
    )
    env.update(extra or {})
    return env


def as_controller(hostname, cmd):
    """cmd run with its own hostname (a UTS namespace): a second controller on this machine."""
    if not hostname:
        return cmd
    return ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *cmd]


def run_module(module, args, check=False, diff=False, env=None, timeout=600, controller=None):
    """Run stackops.rollback.<module> on localhost through real Ansible; return its result.

    The result dict has `failed`, `changed`, `msg` and whatever the module returned. With
    `controller`, Ansible runs under that hostname, as on another controller.
    """
    name = module if "." in module else "stackops.rollback." + module
    cmd = [
        str(VENV_BIN / "ansible"),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-m",
        name,
        "-a",
        json.dumps(args),
    ]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    proc = subprocess.run(
        as_controller(controller, cmd),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ansible_env(
            dict(
                {"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}, **(env or {})
            )
        ),
    )
    try:
        data = json.loads(proc.stdout)
        return data["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError) as exc:
        raise AssertionError(
            "could not read the result of %s: %s\nstdout: %s\nstderr: %s"
            % (name, exc, proc.stdout[-3000:], proc.stderr[-3000:])
        ) from exc


def playbook_command(playbook, extra_vars_file=None, inventory="localhost,", limit="all", check=False, extra_args=()):
    """The command line; `limit` chooses the hosts (the rollback playbooks refuse to run without a
    choice), unless extra_args carry a -l of their own or limit is None."""
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", inventory, str(playbook)]
    if extra_vars_file:
        cmd += ["-e", "@" + str(extra_vars_file)]
    if limit and not {"-l", "--limit"} & set(extra_args) and not any(a.startswith("--limit=") for a in extra_args):
        cmd += ["--limit", limit]
    if check:
        cmd.append("--check")
    return cmd + list(extra_args)


def write_vars(extra_vars, directory=None):
    """A JSON file of extra vars (ansible-playbook -e @file keeps their types)."""
    fd, path = tempfile.mkstemp(suffix=".json", dir=directory)
    with os.fdopen(fd, "w") as fh:
        json.dump(extra_vars, fh)
    return path


def shifted_clock(seconds):
    """The command prefix that runs a controller with its clock `seconds` off the host's (libfaketime,
    from Debian; tests/testbed/docker-host.sh installs it)."""
    faketime = shutil.which("faketime")
    assert faketime, "faketime is missing: run make testbed (it installs Debian's faketime) and run again"
    return [faketime, "-f", "%+ds" % seconds]


def real_clock_python(directory):
    """A Python interpreter for the managed side that runs on the host's real clock: libfaketime's
    LD_PRELOAD, inherited by every child of a shifted controller, is cleared before Python starts."""
    wrapper = Path(directory) / "python-on-the-hosts-clock"
    wrapper.write_text(
        '#!/bin/sh\nunset LD_PRELOAD FAKETIME FAKETIME_NO_CACHE DONT_FAKE_MONOTONIC\nexec %s "$@"\n' % sys.executable
    )
    wrapper.chmod(0o755)
    return wrapper


def assert_ok(result):
    """A finished command (a playbook's run) succeeded; else fail showing the end of its output."""
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-3000:]


def run_playbook(
    playbook,
    extra_vars=None,
    inventory="localhost,",
    limit="all",
    check=False,
    env=None,
    timeout=1200,
    extra_args=(),
    clock_offset=None,
):
    """Run ansible-playbook; returns the CompletedProcess (stdout holds the play's output). With
    `clock_offset`, the controller's clock runs that many seconds off the host's (shifted_clock)."""
    path = write_vars(extra_vars) if extra_vars else None
    cmd = playbook_command(playbook, path, inventory, limit, check, extra_args)
    if clock_offset is not None:
        cmd = shifted_clock(clock_offset) + cmd
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=ansible_env(env))
    finally:
        if path:
            os.unlink(path)


def start_playbook(playbook, extra_vars, inventory, log_path, controller=None):
    """Start ansible-playbook in its own process group (to be killed whole); output to log_path."""
    path = write_vars(extra_vars, os.path.dirname(log_path))
    with open(log_path, "w") as log:  # the child writes to its own copy of the descriptor
        return subprocess.Popen(
            as_controller(controller, playbook_command(playbook, path, inventory)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=ansible_env(),
            start_new_session=True,
        )


def docker_time(text):
    """Docker's RFC 3339 time with nanoseconds -> epoch seconds."""
    import datetime

    main, _dot, frac = text.rstrip("Z").split("+")[0].partition(".")
    when = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return when.timestamp() + (float("0." + frac[:9]) if frac else 0.0)


def healthy_since(container):
    """When the container's health check first passed (epoch seconds), from Docker's own log."""
    state = json.loads(run(["docker", "inspect", "--format", "{{json .State}}", container]).stdout)
    passed = [entry for entry in (state.get("Health") or {}).get("Log", []) if entry.get("ExitCode") == 0]
    if not passed:
        raise AssertionError("container %s has no passing health check in its log" % container)
    return docker_time(passed[0]["End"])


def postgres_rows_in_volume(volume, query="select count(*) from records", database="shop", attempts=60):
    """Start the test bed's PostgreSQL on a data volume (restored from an archive) and run a query: its text."""
    name = engine_name("st-pg-check")
    run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "-v",
            "%s:/var/lib/postgresql/data" % volume,
            "-e",
            "POSTGRES_PASSWORD=unused",
            IMAGES["POSTGRES_IMAGE"],
        ]
    )
    try:
        for _attempt in range(attempts):
            out = run(["docker", "exec", name, "psql", "-U", "postgres", "-d", database, "-tAc", query], check=False)
            if out.returncode == 0:
                return out.stdout.strip()
            time.sleep(0.5)
        raise AssertionError("PostgreSQL on volume %s did not answer %r: %s" % (volume, query, out.stderr))
    finally:
        run(["docker", "rm", "-f", name], check=False)


@contextlib.contextmanager
def small_filesystem(path, size="2m", options=""):
    """A tmpfs of `size` mounted at path (created) while the block runs: a disk that fills up, or is read-only."""
    path.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", "size=%s%s" % (size, "," + options if options else ""), "tmpfs", str(path)])
    try:
        yield path
    finally:
        run(["umount", str(path)], check=False)


@contextlib.contextmanager
def private_registry(directory):
    """A registry of the test's own on a free port of 127.0.0.1 (the engine trusts 127.0.0.0/8 without
    TLS), storage under directory, deletes enabled: yields its address; `stop()` on it makes it
    unreachable. Stopped and its storage left to the test's tmp_path when the block ends."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n"
        "  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:%d\n" % (directory / "data", port)
    )
    log = open(directory / "registry.log", "wb")  # noqa: SIM115 - open for the process's life
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    address = "127.0.0.1:%d" % port
    try:
        wait_for(lambda: http_get("http://%s/v2/" % address)[0] == 200, 15, "the private registry on " + address)
        yield PrivateRegistry(address, process)
    finally:
        process.kill()
        process.wait()
        log.close()


class PrivateRegistry:
    def __init__(self, address, process):
        self.address = address
        self.process = process

    def stop(self):
        self.process.kill()
        self.process.wait()

    def delete(self, repository, digest):
        """Delete a manifest by digest (what `docker image rm` cannot do to a registry)."""
        request = urllib.request.Request(
            "http://%s/v2/%s/manifests/%s" % (self.address, repository, digest), method="DELETE"
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 202, answer.status


def remove_volume(name):
    run(["docker", "volume", "rm", "-f", name], check=False)


def have(cmd):
    return shutil.which(cmd) is not None


# The engine keeps its last 256 events only (moby's events buffer); a downtime measured from
# them is incomplete once more happened since its window opened.
ENGINE_EVENTS_KEPT = 256

# A busy engine: 30 containers whose health checks run every second, about 90 engine events a
# second (each check is an exec: create, start, die), so the 256 the engine keeps last 3 s.
BUSY_ENGINE_COMPOSE = """\
services:
  busy:
    image: {busybox}
    command: ["sleep", "3600"]
    scale: 30
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
      timeout: 2s
      retries: 3
"""


@contextlib.contextmanager
def repeated(step, every, max_seconds=300):
    """Run step() in a thread every `every` s while the block runs, until it returns True or
    max_seconds pass (bounded); the thread is joined when the block ends."""
    stop = threading.Event()

    def loop():
        deadline = time.monotonic() + max_seconds
        while not stop.is_set() and time.monotonic() < deadline:
            if step():
                return
            stop.wait(every)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)


class EngineEventCount:
    """Counts every event the engine emits while the block runs (a live stream: not limited to the
    256 the engine keeps), at most max_seconds. `count` after the block."""

    def __init__(self, max_seconds=600):
        self.max_seconds = max_seconds
        self.count = None

    def __enter__(self):
        now = time.time()
        # To a file, not a pipe: nobody reads while the block runs, and a full pipe would stall the
        # stream on a busy engine.
        self._out = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            # --since as well: with --until alone the engine first replays the events it keeps.
            [
                "docker",
                "events",
                "--since",
                "%.6f" % now,
                "--until",
                str(int(now) + self.max_seconds),
                "--format",
                "{{.TimeNano}}",
            ],
            stdout=self._out,
            stderr=subprocess.DEVNULL,
        )
        return self

    def __exit__(self, *exc):
        self._proc.terminate()
        self._proc.wait(timeout=30)
        with self._out:
            self._out.seek(0)
            self.count = len(self._out.read().split())
