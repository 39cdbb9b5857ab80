# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # The options of plugins/module_utils/_docker.py's DOCKER_COMMON_ARGS (the engine gateway).
    DOCUMENTATION = r"""
options:
  docker_host:
    description:
      - The Docker engine to talk to, as a URL (V(unix:///var/run/docker.sock), V(tcp://host:2376)).
      - Defaults to E(DOCKER_HOST), then V(unix:///var/run/docker.sock).
      - Set it once for every module that reaches the engine with C(module_defaults) on the action group
        C(group/stackops.rollback.docker).
    type: str
    aliases: [docker_url]
  api_timeout:
    description:
      - Seconds to wait for one answer from the Docker API.
    type: int
    default: 60
    aliases: [timeout_api]
requirements:
  - Docker SDK for Python on the managed host (C(python3-docker) or C(pip install docker))
"""
