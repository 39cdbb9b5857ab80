# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # The options that name a project's files and its release ledger (plugins/module_utils/_release.py).
    DOCUMENTATION = r"""
options:
  files:
    description:
      - Compose files, relative to O(project_src). Defaults to Compose's own lookup
        (C(compose.yaml), C(compose.yml), C(docker-compose.yaml), C(docker-compose.yml) and an override file).
    type: list
    elements: path
  env_files:
    description:
      - Environment files of the project, relative to O(project_src). Defaults to C(.env) when it exists.
    type: list
    elements: path
  ledger_dir:
    description:
      - Directory of the release ledger on the managed host.
    type: path
    default: /var/lib/stackops-rollback
"""
