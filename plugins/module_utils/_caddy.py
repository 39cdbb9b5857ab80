# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Talk to a running Caddy: adapt and validate a candidate, reload, read the running config.

Two ways to reach it, one interface: ``ContainerCaddy`` runs Caddy's own binary inside its
container (the field guide's ``docker exec caddy caddy reload``), ``LocalCaddy`` runs the
``caddy`` binary on the host (Caddy under systemd). Either way the candidate is checked by
the very Caddy that will run it, next to the real Caddyfile so relative imports resolve.
`UpstreamSwitch`, at the end, is stackops.rollback.caddy_upstream's transaction.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import tempfile
import time

from ansible.module_utils.urls import open_url
from ansible_collections.stackops.rollback.plugins.module_utils._caddyfile import (
    CaddyfileError,
    proxy_dials,
    replace_upstreams,
)
from ansible_collections.stackops.rollback.plugins.module_utils._docker import EngineError, EngineNotFound
from ansible_collections.stackops.rollback.plugins.module_utils._files import write_in_place

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


# How many times a read-only exec that answered nothing is asked again.
EMPTY_EXEC_ATTEMPTS = 3


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

    def __init__(self, engine, container, caddyfile, admin_url=None, explicit_admin=False):
        self.engine = engine
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
            self.container = self.engine.container(self.name)
        except EngineNotFound as exc:
            raise CaddyError(
                "the Caddy container %r does not exist; set container to the name of the running Caddy" % self.name
            ) from exc
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
        """Run cmd in the container: (rc, stdout, stderr); CaddyError when it fails or hangs."""
        try:
            return self.engine.exec(self.container, cmd, timeout=timeout)
        except EngineError as exc:
            raise CaddyError(str(exc)) from exc

    def _read(self, cmd, timeout):
        """_exec for a command that only reads and always prints something: the engine can lose a
        short exec's output (it answers rc 0 and nothing, seen under load), so it is asked again
        (EMPTY_EXEC_ATTEMPTS in all) rather than taken for an empty answer."""
        for _attempt in range(EMPTY_EXEC_ATTEMPTS):
            rc, out, err = self._exec(cmd, timeout)
            if rc != 0 or out.strip():
                break
        return rc, out, err

    def _put_file(self, directory, name, data):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        return self.engine.put_archive(self.container, directory, buf.getvalue())

    def adapt(self, text, timeout):
        directory = os.path.dirname(self.inner_path)
        name = "%s%d" % (CANDIDATE_PREFIX, os.getpid())
        try:
            placed = self._put_file(directory, name, text.encode("utf-8"))
        except EngineError:
            placed = False
        if not placed:
            # A read-only directory: validate from /tmp (relative imports may then not resolve).
            directory = "/tmp"
            self._put_file(directory, name, text.encode("utf-8"))
        path = directory + "/" + name
        try:
            rc, out, err = self._read(
                ["caddy", "adapt", "--config", path, "--adapter", "caddyfile", "--validate"], timeout
            )
        finally:
            self._exec(["rm", "-f", path], timeout)
        if rc == 0 and not out.strip():
            raise CaddyError(
                "caddy adapt in %s answered nothing %d times; nothing was changed" % (self.name, EMPTY_EXEC_ATTEMPTS)
            )
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
                rc, out, err = self._read([*fetcher, url], timeout)  # the admin API answers "null" at least
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


class SwitchFailed(CaddyError):
    """A switch failed after the file was written; `result` says what was done and put back."""

    def __init__(self, msg, result):
        super().__init__(msg)
        self.result = result


class UpstreamSwitch:
    """The switch as one transaction: edit the tokens, validate with the running Caddy, write in
    place, reload, confirm through the admin API; on any failure after the write, put the old
    file and config back and say so.

    `module` gives params, check_mode, _diff, warn and backup_local (an AnsibleModule in real use).
    """

    def __init__(self, module, engine):
        self.module = module
        self.p = module.params
        self.path = self.p["caddyfile"]
        explicit_admin = self.p["admin_url"] is not None
        admin_url = self.p["admin_url"] or DEFAULT_ADMIN_URL
        if self.p["container"]:
            self.caddy = ContainerCaddy(engine, self.p["container"], self.path, admin_url, explicit_admin)
        else:
            self.caddy = LocalCaddy(self.p["caddy_binary"], self.path, admin_url, explicit_admin)

    def read(self):
        if not os.path.isfile(self.path):
            raise CaddyfileError(
                "the Caddyfile %s does not exist; set caddyfile to the file Caddy runs with" % self.path
            )
        with open(self.path, encoding="utf-8", newline="") as handle:
            return handle.read()

    def run(self):
        timeout = self.p["reload_timeout"]
        old_text = self.read()
        new_text, previous, candidate = replace_upstreams(
            old_text, self.p["site"], self.p["upstreams"], self.p["match"]
        )
        # Only the dial addresses are compared: they are what a switch changes.
        dials_before = proxy_dials(self.caddy.preflight())
        written = new_text != old_text
        if written and not os.access(self.path, os.W_OK):
            raise CaddyfileError(
                "the Caddyfile %s is not writable by this user; run with become or fix its permissions" % self.path
            )
        dials_wanted = proxy_dials(self.caddy.adapt(new_text, timeout))
        needs_reload = self.p["reload"] and (written or dials_before != dials_wanted)
        result = dict(
            changed=written or needs_reload,
            previous_upstreams=previous,
            upstreams=list(self.p["upstreams"]),
            directive=candidate.describe(),
            written=written,
            reloaded=False,
            reload_keeps_queued_connections=self.caddy.migrates_queued_connections(),
        )
        if result["reload_keeps_queued_connections"] is False:
            self.module.warn(queued_connections_warning(self.caddy.describe()))
        if written and self.module._diff:
            result["diff"] = dict(before=old_text, after=new_text, before_header=self.path, after_header=self.path)
        if self.module.check_mode or not result["changed"]:
            return result
        if written:
            if self.p["backup"]:
                result["backup_file"] = self.module.backup_local(self.path)
            write_in_place(self.path, new_text)
        if needs_reload:
            started = time.monotonic()
            try:
                self.reload_and_confirm(dials_wanted, timeout)
            except CaddyError as exc:
                self.put_back(old_text, dials_before, timeout, exc, result)
            result["reloaded"] = True
            result["reload_seconds"] = round(time.monotonic() - started, 3)
            # When the running config was seen dialing the new upstreams: until then the traffic is
            # counted against the old ones (a downtime measurement never credits a switch early).
            result["switched_at"] = round(time.time(), 3)
        return result

    def reload_and_confirm(self, dials_wanted, timeout):
        self.caddy.reload(timeout)
        dials_running = proxy_dials(self.caddy.running_config(timeout))
        if dials_running != dials_wanted:
            raise CaddyError(
                "after the reload Caddy's running config dials %s, not %s as the new Caddyfile says; "
                "the running Caddy may not read this file" % (dials_running, dials_wanted)
            )

    def put_back(self, old_text, dials_before, timeout, reason, result):
        """Restore the previous file and config, then fail with the reason."""
        if result["written"]:
            write_in_place(self.path, old_text)
        try:
            self.caddy.reload(timeout)
            restored = proxy_dials(self.caddy.running_config(timeout)) == dials_before
            state = "the previous Caddyfile is back and Caddy runs it again"
            if not restored:
                state = (
                    "the previous Caddyfile is back, but Caddy's running config differs from before: check it by hand"
                )
        except CaddyError as exc:
            state = "the previous Caddyfile is back, but reloading it failed too (%s): check Caddy by hand" % exc
        raise SwitchFailed("switching upstreams failed: %s; %s" % (reason, state), result)
