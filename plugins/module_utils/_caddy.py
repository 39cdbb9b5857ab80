# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Talk to a running Caddy: adapt and validate a candidate, reload, read the running config.

Two ways to reach it, one interface: ``ContainerCaddy`` runs Caddy's own binary inside its
container (the field guide's ``docker exec caddy caddy reload``), ``LocalCaddy`` runs the
``caddy`` binary on the host (Caddy under systemd). Either way the candidate is checked by
the very Caddy that will run it, next to the real Caddyfile so relative imports resolve.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import tempfile
import threading
import time

from ansible.module_utils.urls import open_url
from ansible_collections.stackops.rollback.plugins.module_utils._docker import describe, is_docker_error, is_not_found

DEFAULT_ADMIN_URL = "http://localhost:2019"
CANDIDATE_PREFIX = ".stackops-candidate-"

# Caddy on Linux listens with SO_REUSEPORT: a reload opens a new socket and closes the old one,
# and the kernel resets the connections still queued on the old one unless this setting (per
# network namespace, Linux >= 5.14) moves them to the new socket.
MIGRATE_REQ_SYSCTL = "net.ipv4.tcp_migrate_req"
MIGRATE_REQ_PATH = "/proc/sys/net/ipv4/tcp_migrate_req"


def parse_migrate_req(text):
    """True or False from the setting's file content; None when it is unknown (older kernel)."""
    value = (text or "").strip()
    return value == "1" if value in ("0", "1") else None


def queued_connections_warning(where):
    return (
        "Caddy %s runs with %s=0: each reload resets the connections waiting in the old listening socket's "
        "queue (Caddy listens with SO_REUSEPORT), about one per 20-40 reloads under load. Set it to 1 in "
        "Caddy's network namespace - 'sysctls: {%s: 1}' on the Caddy container, or 'sysctl -w %s=1' on "
        "the host for Caddy under systemd or with network_mode host"
        % (where, MIGRATE_REQ_SYSCTL, MIGRATE_REQ_SYSCTL, MIGRATE_REQ_SYSCTL)
    )


class CaddyError(Exception):
    """Caddy refused or could not be reached; the message carries Caddy's own words."""


def admin_address(admin_url):
    """host:port (or unix/...) of an admin URL, as caddy reload --address takes it."""
    url = admin_url or DEFAULT_ADMIN_URL
    return url.split("://", 1)[-1].rstrip("/")


def config_url(admin_url):
    return (admin_url or DEFAULT_ADMIN_URL).rstrip("/") + "/config/"


def parse_config(body, where):
    try:
        return json.loads(body or "null")
    except ValueError as exc:
        raise CaddyError("the admin API at %s did not answer with JSON (%s)" % (where, exc)) from exc


def last_lines(text, count=6):
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:])


class LocalCaddy:
    """The caddy binary on this host and its admin API."""

    def __init__(self, binary, caddyfile, admin_url=None, explicit_admin=False):
        self.binary = binary
        self.caddyfile = caddyfile
        self.admin_url = admin_url or DEFAULT_ADMIN_URL
        self.explicit_admin = explicit_admin

    def describe(self):
        return "caddy binary %s" % self.binary

    def preflight(self):
        return self.running_config()

    def _run(self, args, timeout):
        try:
            proc = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CaddyError("'caddy %s' did not finish within %s s" % (args[0], timeout)) from exc
        except OSError as exc:
            raise CaddyError("cannot run %s: %s; set caddy_binary to Caddy's path" % (self.binary, exc)) from exc
        return proc.returncode, proc.stdout, proc.stderr

    def adapt(self, text, timeout):
        """Adapt and validate text as if it stood at the Caddyfile's place; return its JSON."""
        directory = os.path.dirname(os.path.abspath(self.caddyfile))
        try:
            fd, path = tempfile.mkstemp(prefix=CANDIDATE_PREFIX, dir=directory)
        except OSError as exc:
            raise CaddyError("cannot write the candidate next to %s (%s)" % (self.caddyfile, exc)) from exc
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            rc, out, err = self._run(["adapt", "--config", path, "--adapter", "caddyfile", "--validate"], timeout)
        finally:
            os.unlink(path)
        if rc != 0:
            raise CaddyError("Caddy rejects the new Caddyfile: %s" % last_lines(err.replace(path, self.caddyfile)))
        return parse_config(out, "caddy adapt")

    def migrates_queued_connections(self):
        """Whether a reload keeps queued connections (see MIGRATE_REQ_SYSCTL); None when unknown."""
        try:
            with open(MIGRATE_REQ_PATH, encoding="ascii") as handle:
                return parse_migrate_req(handle.read())
        except OSError:
            return None

    def reload(self, timeout):
        args = ["reload", "--config", self.caddyfile, "--adapter", "caddyfile"]
        if self.explicit_admin:
            args += ["--address", admin_address(self.admin_url)]
        rc, _out, err = self._run(args, timeout)
        if rc != 0:
            raise CaddyError("caddy reload failed: %s" % last_lines(err))

    def running_config(self, timeout=10):
        url = config_url(self.admin_url)
        try:
            response = open_url(url, headers={"Accept": "application/json"}, timeout=timeout)
            return parse_config(response.read().decode("utf-8"), url)
        except (OSError, ValueError) as exc:
            raise CaddyError(
                "the Caddy admin API at %s is unreachable (%s); is Caddy running, and is admin_url right?" % (url, exc)
            ) from exc


class ContainerCaddy:
    """Caddy in a Docker container: its binary through exec, its Caddyfile through a bind mount."""

    # Commands that print a URL's body, one try with a time limit each (GNU wget retries a
    # refused connection for minutes by default). Official images have busybox wget, which has
    # no -t; others have curl.
    FETCHERS = (
        ["wget", "-q", "-T", "5", "-t", "1", "-O", "-"],
        ["wget", "-q", "-T", "5", "-O", "-"],
        ["curl", "-fsS", "--max-time", "5"],
    )
    NOT_APPLICABLE = ("executable file not found", "not found", "invalid option", "unrecognized option", "Usage:")

    def __init__(self, client, container, caddyfile, admin_url=None, explicit_admin=False):
        self.client = client
        self.name = container
        self.caddyfile = os.path.abspath(caddyfile)
        self.admin_url = admin_url or DEFAULT_ADMIN_URL
        self.explicit_admin = explicit_admin
        self.container = None
        self.inner_path = None

    def describe(self):
        return "container %s" % self.name

    def preflight(self):
        try:
            self.container = self.client.containers.get(self.name)
        except Exception as exc:
            if is_not_found(exc):
                raise CaddyError(
                    "the Caddy container %r does not exist; set container to the name of the running Caddy" % self.name
                ) from exc
            raise
        status = self.container.attrs.get("State", {}).get("Status")
        if status != "running":
            raise CaddyError(
                "the Caddy container %r is %s, not running; start it before switching upstreams" % (self.name, status)
            )
        self.inner_path = self.mounted_path(self.container.attrs.get("Mounts") or [])
        return self.running_config()

    def mounted_path(self, mounts):
        """Where the host's Caddyfile appears inside the container (file or directory mount)."""
        real = os.path.realpath(self.caddyfile)
        for mount in mounts:
            source = mount.get("Source") or ""
            if source in (self.caddyfile, real):
                return mount["Destination"]
        for mount in mounts:
            source = (mount.get("Source") or "").rstrip("/")
            for candidate in (self.caddyfile, real):
                if source and os.path.dirname(candidate) == source:
                    return mount["Destination"].rstrip("/") + "/" + os.path.basename(candidate)
        binds = ", ".join("%s:%s" % (m.get("Source"), m.get("Destination")) for m in mounts) or "none"
        raise CaddyError(
            "the container %r does not mount %s (its mounts: %s); mount the Caddyfile or its directory into the "
            "container so that a switch reaches the running Caddy" % (self.name, self.caddyfile, binds)
        )

    def _exec(self, cmd, timeout):
        """Run cmd in the container; return (rc, stdout, stderr) or raise CaddyError on timeout."""
        result = {}

        def target():
            try:
                result["value"] = self.container.exec_run(cmd, demux=True)
            except Exception as exc:  # noqa: BLE001 - handed to the caller's thread, which sorts it
                result["error"] = exc

        worker = threading.Thread(target=target, daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            raise CaddyError(
                "'%s' in container %s did not finish within %s s" % (" ".join(cmd[:2]), self.name, timeout)
            )
        if "error" in result:
            exc = result["error"]
            if is_docker_error(exc):
                raise CaddyError("docker exec in %s failed: %s" % (self.name, describe(exc))) from exc
            raise exc
        rc, (out, err) = result["value"]
        return rc, (out or b"").decode("utf-8", "replace"), (err or b"").decode("utf-8", "replace")

    def _put(self, directory, name, data):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        return self.container.put_archive(directory, buf.getvalue())

    def adapt(self, text, timeout):
        directory = os.path.dirname(self.inner_path)
        name = "%s%d" % (CANDIDATE_PREFIX, os.getpid())
        try:
            placed = self._put(directory, name, text.encode("utf-8"))
        except Exception as exc:
            if not is_docker_error(exc):
                raise
            placed = False
        if not placed:
            # A read-only directory: validate from /tmp (relative imports may then not resolve).
            directory = "/tmp"
            self._put(directory, name, text.encode("utf-8"))
        path = directory + "/" + name
        try:
            rc, out, err = self._exec(
                ["caddy", "adapt", "--config", path, "--adapter", "caddyfile", "--validate"], timeout
            )
        finally:
            self._exec(["rm", "-f", path], timeout)
        if rc != 0:
            raise CaddyError("Caddy rejects the new Caddyfile: %s" % last_lines(err.replace(path, self.inner_path)))
        return parse_config(out, "caddy adapt in %s" % self.name)

    def migrates_queued_connections(self):
        """Whether a reload keeps queued connections, read in the container's network namespace."""
        rc, out, _err = self._exec(["cat", MIGRATE_REQ_PATH], 10)
        return parse_migrate_req(out) if rc == 0 else None

    def reload(self, timeout):
        cmd = ["caddy", "reload", "--config", self.inner_path, "--adapter", "caddyfile"]
        if self.explicit_admin:
            cmd += ["--address", admin_address(self.admin_url)]
        rc, _out, err = self._exec(cmd, timeout)
        if rc != 0:
            raise CaddyError("caddy reload in container %s failed: %s" % (self.name, last_lines(err)))

    def running_config(self, timeout=10):
        url = config_url(self.admin_url)
        for fetcher in self.FETCHERS:
            try:
                rc, out, err = self._exec([*fetcher, url], timeout)
            except CaddyError as exc:
                raise CaddyError(
                    "the Caddy admin API at %s is unreachable from container %s (%s)" % (url, self.name, exc)
                ) from exc
            if rc == 0:
                return parse_config(out, url)
            if rc in (126, 127) or any(word in err + out for word in self.NOT_APPLICABLE):
                continue
            raise CaddyError(
                "the Caddy admin API at %s is unreachable from container %s (%s); is Caddy running there, "
                "and is admin_url right?" % (url, self.name, last_lines(err or out, 2) or "exit %d" % rc)
            )
        raise CaddyError(
            "container %s has neither wget nor curl to read the admin API at %s; install one in the image"
            % (self.name, url)
        )
