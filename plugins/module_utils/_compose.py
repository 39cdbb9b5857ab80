# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One compose project as `docker compose` sees it: its command-line options and the few
commands the collection runs on it. The commands run through the engine gateway (_docker.py),
which checks the Compose version once and never uses a shell.
"""

from __future__ import annotations

import json
import os

from ansible_collections.stackops.rollback.plugins.module_utils._docker import ComposeError

# Options for modules that act on one compose project, merged into their argument_spec
# (documented once in the doc fragment stackops.rollback.compose_project).
COMPOSE_PROJECT_ARGS = dict(
    project_src=dict(type="path"),
    project_name=dict(type="str"),
    files=dict(type="list", elements="path"),
    env_files=dict(type="list", elements="path"),
)


def compose_project_args(**overrides):
    """COMPOSE_PROJECT_ARGS with some options changed (for example project_src required)."""
    spec = {name: dict(option) for name, option in COMPOSE_PROJECT_ARGS.items()}
    for name, changes in overrides.items():
        spec[name].update(changes)
    return spec


class Compose:
    """`docker compose` for one project, run through an Engine."""

    def __init__(self, engine, project_src=None, project_name=None, files=None, env_files=None, profiles=None):
        if not project_src and not project_name:
            raise ComposeError("one of project_src or project_name is required")
        self.engine = engine
        self.project_src = project_src
        self.project_name = project_name
        self.files = files or []
        self.env_files = env_files or []
        self.profiles = profiles or []

    @classmethod
    def from_params(cls, engine, params):
        return cls(
            engine,
            project_src=params.get("project_src"),
            project_name=params.get("project_name"),
            files=params.get("files"),
            env_files=params.get("env_files"),
            profiles=params.get("profiles"),
        )

    def project_args(self):
        args = []
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

    def run(self, args, check=True):
        return self.engine.compose(self.project_args(), list(args), cwd=self.project_src or None, check=check)

    def config(self):
        """The resolved project model (`docker compose config --format json`)."""
        _rc, out, _err = self.run(["config", "--format", "json"])
        return json.loads(out)

    def source_config(self):
        """The project model before interpolation and normalisation: each service's `env_file:`
        entries are still there (`config` merges them into its environment)."""
        _rc, out, _err = self.run(["config", "--format", "json", "--no-interpolate", "--no-normalize"])
        return json.loads(out)

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
            self.engine.start_containers(ids, ", ".join(services))
        return ids
