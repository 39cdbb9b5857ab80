# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The engine gateway: the one door through which the collection reaches a Docker engine.

`Engine` owns the Docker SDK client (connected on first use) and the docker / compose CLI
runner, and offers the few operations the collection needs. Every failure comes out as an
`EngineError` whose message says what was asked, what is wrong and what to do. Nothing else in
the collection imports the SDK, runs the docker CLI or touches the SDK's private attributes.

Private to this collection (the leading underscore): modules import it, users do not.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import threading
import time
import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.stackops.rollback.plugins.module_utils._events import start_recorder
from ansible_collections.stackops.rollback.plugins.module_utils._streams import coalesce

try:
    import docker
    from docker import errors as docker_errors
    from docker.utils import socket as docker_socket

    HAS_DOCKER_SDK = True
    DOCKER_SDK_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised on hosts without the SDK
    docker = None
    docker_errors = None
    docker_socket = None
    HAS_DOCKER_SDK = False
    DOCKER_SDK_IMPORT_ERROR = traceback.format_exc()

try:
    from requests import exceptions as requests_exceptions
except ImportError:  # pragma: no cover - requests comes with the docker SDK
    requests_exceptions = None

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
COMPOSE_MIN_VERSION = (2, 18, 0)
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"

# Options every module that talks to the engine accepts, merged into its argument_spec
# (documented once in the doc fragment stackops.rollback.docker).
DOCKER_COMMON_ARGS = dict(
    docker_host=dict(
        type="str",
        default=None,
        aliases=["docker_url"],
        fallback=(lambda: os.environ.get("DOCKER_HOST") or None, []),
    ),
    api_timeout=dict(type="int", default=60, aliases=["timeout_api"]),
)


def docker_module(argument_spec, **options):
    """A module that reaches the engine: its AnsibleModule, with DOCKER_COMMON_ARGS merged into
    the argument spec and check mode supported, and its Engine (connected on first use)."""
    spec = dict(argument_spec)
    spec.update(DOCKER_COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True, **options)
    return module, Engine(module)


class EngineError(Exception):
    """An engine operation failed; the message says what was asked, why, and what to do."""


class EngineNotFound(EngineError):
    """The engine has no such object (container, volume, image)."""


class ComposeError(EngineError):
    """`docker compose` failed or is missing; carries its exit code and output."""

    def __init__(self, msg, rc=None, stdout="", stderr="", cmd=None):
        super().__init__(msg)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.cmd = cmd


# The engine's answer to a disk usage read while another one runs, and how long to wait for it.
DISK_USAGE_BUSY = "a disk usage operation is already running"
DISK_USAGE_WAIT = 120.0


def docker_host_of(params):
    return params.get("docker_host") or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def within(path, parent):
    """True when path is parent or lies inside it (both absolute, normalised)."""
    parent = parent.rstrip("/") or "/"
    return path == parent or path.startswith(parent if parent == "/" else parent + "/")


def overlaps(one, other):
    """True when one path is the other, or holds it."""
    return within(one, other) or within(other, one)


def project_filter(project):
    """The engine's list filter for a compose project's objects (containers, volumes)."""
    return {"label": "%s=%s" % (PROJECT_LABEL, project)}


def parse_version(text):
    """'Docker Compose version v2.26.1-4' or '2.26.1' -> (2, 26, 1); None when not found."""
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(x) for x in match.groups()) if match else None


def is_docker_error(exc):
    """True for errors that come from the engine or the connection to it."""
    kinds = [ConnectionError]
    if HAS_DOCKER_SDK:
        kinds.append(docker_errors.DockerException)
    if requests_exceptions is not None:
        kinds.append(requests_exceptions.RequestException)
    return isinstance(exc, tuple(kinds))


def first_line(exc):
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0]


def describe(exc):
    """One line for an error message: the engine's explanation when it gave one."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return explanation if isinstance(explanation, str) else explanation.decode("utf-8", "replace")
    return first_line(exc)


def _chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def advice(exc, host):
    """What to do about an engine failure, from the exception and the ones it came from."""
    text = " ".join(str(e) for e in _chain(exc))
    if any(isinstance(e, PermissionError) for e in _chain(exc)) or "Permission denied" in text:
        return (
            "permission denied on the Docker socket of %s: run the task with become (root) or as a member of "
            "the docker group" % host
        )
    if "version" in text.lower() and "is too old" in text:
        return (
            "the Docker engine at %s no longer accepts the API version of this Docker SDK (%s); upgrade the "
            "docker SDK for Python on the managed host" % (host, first_line(exc))
        )
    if "version" in text.lower() and "is too new" in text:
        return "the Docker engine at %s is older than the API version asked for (%s); upgrade the engine" % (
            host,
            first_line(exc),
        )
    return (
        "cannot reach the Docker engine at %s (%s). Is the Docker daemon running? Start it (for example "
        "'systemctl start docker') or set docker_host, then retry" % (host, first_line(exc))
    )


class ExecStream:
    """A command running in a container (Engine.exec_stream): iterate for its stdout."""

    STDERR_KEPT = 64 * 1024

    def __init__(self, engine, api, exec_id, what, stdin):
        self.engine, self.api, self.exec_id, self.what, self.stdin = engine, api, exec_id, what, stdin
        self.rc = None
        self.stderr = ""
        self._err = b""

    def _keep_err(self, data):
        self._err = (self._err + data)[-self.STDERR_KEPT :]

    def _feed(self, raw, failure):
        """Send stdin in a thread of its own: a command that writes while it reads never blocks on us."""
        try:
            for chunk in self.stdin:
                if chunk:
                    raw.sendall(chunk)
        except Exception as exc:  # noqa: BLE001 - handed back to the reading thread
            failure.append(exc)
        finally:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_WR)

    def __iter__(self):
        with self.engine._errors(self.what):
            sock = self.api.exec_start(self.exec_id, socket=True)
            raw = getattr(sock, "_sock", sock)
            failure, feeder = [], None
            if self.stdin is not None:
                # The SDK's API timeout would end a send the server makes wait (an index being
                # built): the command's own time limit is the caller's.
                raw.settimeout(None)
                feeder = threading.Thread(target=self._feed, args=(raw, failure), daemon=True)
                feeder.start()
            try:
                try:
                    for stream, data in docker_socket.frames_iter(sock, tty=False):
                        if stream == docker_socket.STDERR:
                            self._keep_err(data)
                        elif data:
                            yield data
                except (ConnectionResetError, BrokenPipeError):
                    # A command that ends with stdin unread resets the stream: its rc tells why.
                    if self.stdin is None:
                        raise
            finally:
                # Closed early (the caller stopped reading), the command's next write fails and
                # it ends: nothing is left running in the container. Shut down first: that wakes
                # a feeder blocked in a send.
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RDWR)
                if feeder:
                    feeder.join()
                sock.close()
                with contextlib.suppress(OSError):
                    raw.close()
            # The output ends a moment before the engine records the exit code.
            for _attempt in range(100):
                state = self.api.exec_inspect(self.exec_id)
                if not state.get("Running"):
                    break
                time.sleep(0.05)
            self.rc = state.get("ExitCode")
        self.stderr = self._err.decode("utf-8", "replace")
        # What fed stdin failed: that is the error, unless it is only the broken pipe of a
        # command that had already stopped on its own (its rc and stderr tell why).
        if failure and not (isinstance(failure[0], OSError) and self.rc):
            raise failure[0]


class Engine:
    """One Docker engine, as a module on the managed host reaches it.

    `module` is an AnsibleModule (or anything with params, run_command and get_bin_path): its
    params give docker_host and api_timeout, its run_command runs the CLI. The SDK client is
    connected on first use, so a module that only needs the CLI, or nothing, never pays for it.
    """

    def __init__(self, module, params=None):
        self.module = module
        self.params = params if params is not None else module.params
        self.host = docker_host_of(self.params)
        self._client = None
        self._docker_cli = None
        self._compose_version = None

    # -- connection -----------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            if not HAS_DOCKER_SDK:
                raise EngineError(
                    "the Docker SDK for Python is not installed for %s on the managed host; install it "
                    "(apt-get install python3-docker, or pip install docker)" % os.environ.get("_", "this Python")
                )
            try:
                client = docker.DockerClient(
                    base_url=self.host, version="auto", timeout=self.params.get("api_timeout") or 60
                )
                client.ping()
            except Exception as exc:
                raise EngineError(advice(exc, self.host)) from exc
            self._client = client
        return self._client

    def ping(self):
        return self.client is not None

    @contextlib.contextmanager
    def _errors(self, what):
        """Turn an SDK or connection error into an EngineError that names the operation."""
        try:
            yield
        except EngineError:
            raise
        except Exception as exc:
            if HAS_DOCKER_SDK and isinstance(exc, docker_errors.NotFound):
                raise EngineNotFound("%s: %s" % (what, describe(exc))) from exc
            if not is_docker_error(exc):
                raise
            if HAS_DOCKER_SDK and isinstance(exc, docker_errors.APIError):
                raise EngineError("%s: the engine answered %s" % (what, describe(exc))) from exc
            raise EngineError("%s: %s" % (what, advice(exc, self.host))) from exc

    def _stream(self, what, chunks):
        with self._errors(what):
            yield from chunks

    def is_local(self):
        """True when the engine is reached through its Unix socket on this host.

        An engine over TCP or SSH is another machine: a path of its files means another
        directory here.
        """
        return getattr(self.client.api, "base_url", "").startswith("http+docker://localhost")

    def version(self):
        """The engine's version string, or None when it does not say (informational only)."""
        try:
            return self._found("reading the engine's version", lambda: self.client.version().get("Version"))
        except EngineError:
            return None

    # -- containers -----------------------------------------------------------------------
    def project_containers(self, project):
        """A compose project's service containers (all states), one-off `compose run`s left out."""
        with self._errors("listing the containers of compose project %s" % project):
            found = self.client.containers.list(all=True, filters=project_filter(project))
        return [c for c in found if (c.labels or {}).get(ONEOFF_LABEL) != "True"]

    def project_states(self, project):
        """(id, state, health) of a project's containers from one cheap list call, sorted.

        What changes when a container starts, stops or changes health.
        """
        with self._errors("listing the containers of compose project %s" % project):
            listed = self.client.api.containers(all=True, filters=project_filter(project))
        states = []
        for c in listed:
            status = c.get("Status") or ""
            states.append((c.get("Id"), c.get("State"), status[status.find("(") :] if "(" in status else ""))
        return sorted(states)

    def project_events(self, project, since, until):
        """The engine's container events of a compose project between two epoch times, oldest first.

        Each is (time in epoch seconds, container id, service, action): `start`, `kill`, `die`,
        `health_status: healthy`, ... Also returns the time of the oldest event the engine still
        holds (of any kind): the engine keeps only its last 256 events (a health check adds three),
        so a window that began before that time may have lost some.
        """
        with self._errors("reading the engine's events of compose project %s" % project):
            held = self.client.events(since=int(since) - 3600, until=int(until) + 1, decode=True)
            oldest, events = None, []
            for event in held:
                when = event.get("timeNano", 0) / 1e9 or float(event.get("time", 0))
                oldest = when if oldest is None else min(oldest, when)
                labels = (event.get("Actor") or {}).get("Attributes") or {}
                if event.get("Type") == "container" and labels.get(PROJECT_LABEL) == project and since <= when:
                    events.append((when, event.get("id"), labels.get(SERVICE_LABEL), event.get("Action") or ""))
        return sorted(events), oldest

    def start_event_recorder(self, path, projects, seconds):
        """Follow the engine's container events of the projects into path, in a process of its own,
        for at most `seconds` (_events.RECORDER); returns its Record once it follows the stream."""
        if not HAS_DOCKER_SDK:
            raise EngineError(
                "the Docker SDK for Python is not installed for %s on the managed host; install it "
                "(apt-get install python3-docker, or pip install docker)" % sys.executable
            )
        return start_recorder(self.host, path, projects, seconds)

    def project_volumes(self, project):
        """Names of a compose project's volumes, sorted."""
        with self._errors("listing the volumes of compose project %s" % project):
            found = self.client.volumes.list(filters=project_filter(project))
        return sorted(v.name for v in found)

    def container(self, name):
        """A container by name or id; EngineNotFound when there is none."""
        with self._errors("container %s" % name):
            return self.client.containers.get(name)

    def containers_using(self, volume):
        """Containers (all states) that mount the volume."""
        with self._errors("listing the containers that use volume %s" % volume):
            return self.client.containers.list(all=True, filters={"volume": volume})

    def containers_binding(self, path):
        """Containers (all states) with a bind mount of the directory, of a directory inside it, or of one
        that holds it: whatever writes there."""
        with self._errors("listing the containers that bind-mount %s" % path):
            # The list's summaries carry the mounts: only the containers that match are read in full.
            ids = [
                c["Id"]
                for c in self.client.api.containers(all=True)
                if any(m.get("Type") == "bind" and overlaps(m.get("Source") or "", path) for m in c.get("Mounts") or [])
            ]
            found = []
            for container_id in ids:
                with contextlib.suppress(docker_errors.NotFound):  # removed since the list: it writes nothing
                    found.append(self.client.containers.get(container_id))
        return found

    def volume_sizes(self, clock=time.monotonic, sleep=time.sleep):
        """{volume name: bytes} as the engine's disk usage counts them (-1 when it does not know).

        The engine computes one disk usage at a time and refuses a second meanwhile: two rollbacks
        on one host (two projects, or a fleet's batch of hosts sharing an engine) wait their turn.
        """
        deadline = clock() + DISK_USAGE_WAIT
        while True:
            try:
                with self._errors("reading the engine's disk usage"):
                    volumes = self.client.df().get("Volumes") or []
                break
            except EngineError as exc:
                if DISK_USAGE_BUSY not in str(exc) or clock() >= deadline:
                    raise
                sleep(0.5)
        return {v.get("Name"): int((v.get("UsageData") or {}).get("Size", -1)) for v in volumes}

    def create_container(self, image, **options):
        with self._errors("creating a container from %s" % image):
            return self.client.containers.create(image, **options)

    def run_container(self, image, command, **options):
        """Run a short-lived container to its end (removed afterwards)."""
        with self._errors("running %s in a container from %s" % (" ".join(command), image[:19])):
            return self.client.containers.run(image, command, remove=True, **options)

    def remove_container(self, container):
        with self._errors("removing container %s" % container.name):
            container.remove(force=True)

    def stop(self, container, timeout):
        with self._errors("stopping container %s" % container.name):
            container.stop(timeout=timeout)

    def start(self, container):
        with self._errors("starting container %s" % container.name):
            container.start()

    def refresh(self, container):
        """Read a container's attributes again."""
        with self._errors("reading container %s" % container.name):
            container.reload()
        return container.attrs

    def exec(self, container, command, user=None, timeout=None, environment=None):
        """Run an argument list in a running container: (rc, stdout, stderr) as text.

        `environment` is how secrets reach a client (a password never goes on a command line,
        where `ps` and the engine's exec records would show it).

        With a timeout, a command that does not finish in time is an EngineError (it may still
        run inside the container: the engine has no way to stop an exec).
        """
        options = {"demux": True}
        if user:
            options["user"] = user
        if environment:
            options["environment"] = dict(environment)
        result = {}

        def target():
            try:
                with self._errors("docker exec in %s" % container.name):
                    result["value"] = container.exec_run(list(command), **options)
            except Exception as exc:  # noqa: BLE001 - handed to the caller's thread below
                result["error"] = exc

        if timeout is None:
            target()
        else:
            worker = threading.Thread(target=target, daemon=True)
            worker.start()
            worker.join(timeout)
            if worker.is_alive():
                raise EngineError(
                    "'%s' in container %s did not finish within %s s" % (" ".join(command[:2]), container.name, timeout)
                )
        if "error" in result:
            raise result["error"]
        rc, (out, err) = result["value"]
        return rc, (out or b"").decode("utf-8", "replace"), (err or b"").decode("utf-8", "replace")

    def exec_stream(self, container, command, environment=None, stdin=None):
        """Run an argument list in a running container, streaming: an ExecStream.

        Iterate it for the command's stdout, chunk by chunk, as bytes (nothing is held in
        memory); `stdin`, an iterable of bytes, is sent to the command while it runs and closed
        at its end. After the iteration, `rc` and `stderr` (the last 64 KiB, as text) are set.
        """
        api = self.client.api
        what = "docker exec of %s in %s" % (command[0], container.name)
        with self._errors(what):
            exec_id = api.exec_create(
                container.id,
                list(command),
                stdout=True,
                stderr=True,
                stdin=stdin is not None,
                environment=dict(environment) if environment else None,
            )["Id"]
        return ExecStream(self, api, exec_id, what, stdin)

    def logs(self, container, since=None, tail=None):
        """A container's log (stdout and stderr) with the engine's timestamps, as text."""
        options = {"stdout": True, "stderr": True, "timestamps": True}
        if tail is not None:
            options["tail"] = tail
        # Older SDKs (python3-docker 5 in Debian 12) take whole seconds only: callers filter
        # the lines of that second by their own timestamps.
        if since:
            options["since"] = int(since)
        with self._errors("reading the log of %s" % container.name):
            return container.logs(**options).decode("utf-8", "replace")

    # -- archives -------------------------------------------------------------------------
    def get_archive(self, container, path, chunk_size):
        """A path of a container as a stream of tar chunks."""
        what = "reading %s of container %s" % (path, container.name)
        with self._errors(what):
            chunks, _stat = container.get_archive(path, chunk_size=chunk_size)
        return self._stream(what, chunks)

    def put_archive(self, container, path, data):
        """Extract a small tar (bytes) at path in a container; False when the engine refuses."""
        with self._errors("writing into %s of container %s" % (path, container.name)):
            return container.put_archive(path, data)

    def put_archive_stream(self, container, path, chunks, copy_owners=True):
        """Stream a tar into a container, extracted at path, without holding it in memory.

        The SDK's put_archive takes only a whole body and drops copyUIDGID, which keeps the
        archive's owners (the engine otherwise maps them to root): the archive endpoint is
        called directly with a chunked body.
        """
        api = self.client.api
        params = {"path": path}
        if copy_owners:
            params["copyUIDGID"] = "1"
        with self._errors("writing an archive into %s of container %s" % (path, container.name)):
            response = api._put(api._url("/containers/{0}/archive", container.id), params=params, data=coalesce(chunks))
            api._raise_for_status(response)

    # -- volumes and images ---------------------------------------------------------------
    def _found(self, what, lookup):
        """lookup()'s answer, or None when the engine has no such object."""
        try:
            with self._errors(what):
                return lookup()
        except EngineNotFound:
            return None

    def volume(self, name):
        """A volume's attributes, or None when it does not exist (nothing is created)."""
        return self._found("volume %s" % name, lambda: self.client.volumes.get(name).attrs)

    def create_volume(self, name, driver="local", options=None, labels=None):
        with self._errors("creating volume %s" % name):
            return self.client.volumes.create(name=name, driver=driver, driver_opts=options, labels=labels).attrs

    def image(self, ref):
        """A local image's attributes by id or reference, or None when there is none."""
        return self._found("image %s" % ref, lambda: self.client.images.get(ref).attrs)

    def local_images(self):
        """(id, size) of every local image."""
        with self._errors("listing the local images"):
            return [(i.id, i.attrs.get("Size", 0)) for i in self.client.images.list()]

    def pull(self, repository, tag_or_digest):
        with self._errors("pulling %s" % repository):
            self.client.images.pull(repository, tag=tag_or_digest)

    # -- CLI ------------------------------------------------------------------------------
    def docker_cli(self):
        if self._docker_cli is None:
            self._docker_cli = self.module.get_bin_path("docker", required=False)
            if not self._docker_cli:
                raise ComposeError(
                    "the docker CLI was not found on the managed host's PATH; install the Docker CLI and the "
                    "Compose v2 plugin (docker-compose-plugin or docker-compose >= %s)"
                    % ".".join(map(str, COMPOSE_MIN_VERSION))
                )
        return self._docker_cli

    def cli(self, args, cwd=None, data=None, environ_update=None):
        """Run the docker CLI against this engine: (rc, stdout, stderr). Never through a shell."""
        cmd = [self.docker_cli()] + (["--host", self.params["docker_host"]] if self.params.get("docker_host") else [])
        return self.module.run_command(
            cmd + list(args),
            cwd=cwd,
            data=data,
            binary_data=data is not None,
            environ_update=environ_update or {},
        )

    def compose_version(self):
        """The Compose v2 plugin's version, checked against COMPOSE_MIN_VERSION once per Engine."""
        if self._compose_version is None:
            rc, out, err = self.cli(["compose", "version", "--short"])
            wanted = ".".join(map(str, COMPOSE_MIN_VERSION))
            if rc != 0:
                raise ComposeError(
                    "'docker compose' is not available on the managed host (%s); install the Compose v2 plugin "
                    "(>= %s)" % ((err or out).strip().splitlines()[-1:] or ["exit %d" % rc], wanted),
                    rc=rc,
                )
            version = parse_version(out)
            if version is None or version < COMPOSE_MIN_VERSION:
                raise ComposeError(
                    "Compose %s is too old; stackops.rollback needs Compose v2 >= %s" % (out.strip(), wanted)
                )
            self._compose_version = version
        return self._compose_version

    def compose(self, project_args, args, cwd=None, check=True):
        """Run `docker compose PROJECT_ARGS ARGS` after the version gate: (rc, stdout, stderr)."""
        self.compose_version()
        rc, out, err = self.cli(
            ["compose", *project_args, *args],
            cwd=cwd,
            environ_update={"COMPOSE_ANSI": "never", "COMPOSE_PROGRESS": "plain"},
        )
        if check and rc != 0:
            raise ComposeError(
                "docker compose %s failed (rc=%s): %s"
                % (" ".join(args[:2]), rc, (err or out).strip().splitlines()[-1:] or ""),
                rc=rc,
                stdout=out,
                stderr=err,
                cmd=["compose", *project_args, *args],
            )
        return rc, out, err

    def start_containers(self, ids, what):
        """`docker start` of several containers in one command; `what` names them in an error."""
        rc, out, err = self.cli(["start", *ids])
        if rc != 0:
            raise ComposeError("docker start of %s failed: %s" % (what, (err or out).strip()), rc=rc)
