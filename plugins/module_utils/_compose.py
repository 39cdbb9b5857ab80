# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one wrapper around the `docker compose` CLI (v2) that our modules use.

Commands always run as argument lists, never through a shell. Output formats that changed
between Compose releases (`ps --format json`) are parsed here once.
"""

from __future__ import annotations

import json
import os
import re

COMPOSE_MIN_VERSION = (2, 18, 0)

# Options for modules that act on one compose project, merged into their argument_spec.
COMPOSE_PROJECT_ARGS = dict(
    project_src=dict(type="path"),
    project_name=dict(type="str"),
    files=dict(type="list", elements="path"),
    env_files=dict(type="list", elements="path"),
    profiles=dict(type="list", elements="str"),
)


class ComposeError(Exception):
    def __init__(self, msg, rc=None, stdout="", stderr="", cmd=None):
        super().__init__(msg)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.cmd = cmd


def parse_version(text):
    """'Docker Compose version v2.26.1-4' or '2.26.1' -> (2, 26, 1); None when not found."""
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(x) for x in match.groups()) if match else None


def parse_ps_output(text):
    """Parse `docker compose ps --format json`.

    Compose < 2.21 prints one JSON array; 2.21 and later print one object per line (NDJSON).
    Returns a list of dicts; an empty output is an empty list.
    """
    text = (text or "").strip()
    if not text:
        return []
    if text.startswith("["):
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError("compose ps printed a JSON value that is not a list")
        return data
    result = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ValueError("compose ps line %d is not JSON: %s" % (number, exc)) from exc
        if isinstance(item, list):
            result.extend(item)
        else:
            result.append(item)
    return result


def parse_publishers(entry):
    """Published ports of one `ps` entry as a list of dicts (URL, TargetPort, PublishedPort)."""
    publishers = entry.get("Publishers") or []
    return [p for p in publishers if p.get("PublishedPort")]


class Compose:
    """Runs `docker compose` for one project through an AnsibleModule's run_command."""

    def __init__(
        self,
        module,
        project_src=None,
        project_name=None,
        files=None,
        env_files=None,
        profiles=None,
        docker_host=None,
        docker_cli=None,
    ):
        self.module = module
        self.project_src = project_src
        self.project_name = project_name
        self.files = files or []
        self.env_files = env_files or []
        self.profiles = profiles or []
        self.docker_host = docker_host
        self.docker_cli = docker_cli or module.get_bin_path("docker", required=False)
        if not self.docker_cli:
            raise ComposeError(
                "the docker CLI was not found on the managed host's PATH; install the Docker "
                "CLI and the Compose v2 plugin (docker-compose-plugin or docker-compose >= 2.18)"
            )
        if not project_src and not project_name:
            raise ComposeError("one of project_src or project_name is required")

    @classmethod
    def from_params(cls, module, params=None):
        p = params if params is not None else module.params
        return cls(
            module,
            project_src=p.get("project_src"),
            project_name=p.get("project_name"),
            files=p.get("files"),
            env_files=p.get("env_files"),
            profiles=p.get("profiles"),
            docker_host=p.get("docker_host"),
        )

    def docker_args(self):
        """The docker CLI with this engine's --host."""
        return [self.docker_cli] + (["--host", self.docker_host] if self.docker_host else [])

    def base_args(self):
        args = [*self.docker_args(), "compose"]
        if self.project_src:
            args += ["--project-directory", self.project_src]
        for name in self.files:
            path = name if os.path.isabs(name) or not self.project_src else os.path.join(self.project_src, name)
            args += ["--file", path]
        for env_file in self.env_files:
            args += ["--env-file", env_file]
        for profile in self.profiles:
            args += ["--profile", profile]
        if self.project_name:
            args += ["--project-name", self.project_name]
        return args

    def run(self, args, check=True, data=None):
        cmd = self.base_args() + list(args)
        rc, out, err = self.module.run_command(
            cmd,
            cwd=self.project_src or None,
            data=data,
            binary_data=data is not None,
            environ_update={"COMPOSE_ANSI": "never", "COMPOSE_PROGRESS": "plain"},
        )
        if check and rc != 0:
            raise ComposeError(
                "docker compose %s failed (rc=%s): %s"
                % (" ".join(args[:2]), rc, (err or out).strip().splitlines()[-1:] or ""),
                rc=rc,
                stdout=out,
                stderr=err,
                cmd=cmd,
            )
        return rc, out, err

    def version(self):
        rc, out, err = self.module.run_command([self.docker_cli, "compose", "version", "--short"])
        if rc != 0:
            raise ComposeError(
                "'docker compose' is not available on the managed host (%s); install the "
                "Compose v2 plugin (>= %s)" % ((err or out).strip(), ".".join(map(str, COMPOSE_MIN_VERSION)))
            )
        version = parse_version(out)
        if version is None or version < COMPOSE_MIN_VERSION:
            raise ComposeError(
                "Compose %s is too old; stackops.rollback needs Compose v2 >= %s"
                % (out.strip(), ".".join(map(str, COMPOSE_MIN_VERSION)))
            )
        return version

    def replace(self, services):
        """Recreate services from the current files and start them at once.

        `docker compose create` builds each new container with the full configuration (the same
        config hash `up` would give it), stopping the old one just before; the new containers are
        then started directly. `up` would first poll the dependencies' health (every 0.5 s), with
        the old container already gone: the caller starts only services whose dependencies run.
        """
        self.run(["create", "--", *list(services)])
        _rc, out, _err = self.run(["ps", "--all", "--quiet", "--", *list(services)])
        ids = out.split()
        if ids:
            rc, out, err = self.module.run_command([*self.docker_args(), "start", *ids])
            if rc != 0:
                raise ComposeError("docker start of %s failed: %s" % (", ".join(services), (err or out).strip()), rc=rc)
        return ids

    def config(self):
        """The resolved project model (`docker compose config --format json`)."""
        _rc, out, _err = self.run(["config", "--format", "json"])
        return json.loads(out)

    def ps(self, all_containers=True):
        args = ["ps", "--format", "json"]
        if all_containers:
            args.append("--all")
        _rc, out, _err = self.run(args)
        return parse_ps_output(out)

    def logs(self, service, since=None, tail=None):
        args = ["logs", "--no-color", "--timestamps"]
        if since:
            args += ["--since", since]
        if tail is not None:
            args += ["--tail", str(tail)]
        args.append(service)
        _rc, out, err = self.run(args)
        return out + err
