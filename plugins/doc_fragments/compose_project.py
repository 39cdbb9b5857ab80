# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # The options that name one compose project (plugins/module_utils/_compose.py's COMPOSE_PROJECT_ARGS).
    # A module that requires one of them documents that option again, whole, in its own options.
    DOCUMENTATION = r"""
options:
  project_src:
    description:
      - Directory of the compose project.
    type: path
  project_name:
    description:
      - Compose project name. Defaults to the name Compose derives for O(project_src).
    type: str
  files:
    description:
      - Compose files, relative to O(project_src) or absolute. Defaults to Compose's own lookup
        (C(compose.yaml), C(compose.yml), C(docker-compose.yaml), C(docker-compose.yml) and an override file).
    type: list
    elements: path
  env_files:
    description:
      - Environment files of the project, relative to O(project_src) or absolute. Defaults to C(.env) when it exists.
    type: list
    elements: path
"""
