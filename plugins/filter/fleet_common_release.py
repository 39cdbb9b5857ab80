# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_common_release
short_description: The release a whole fleet can roll back to, from each host's ledger
version_added: 1.0.0
description:
  - The target V(common) of a fleet rollback - the newest release recorded on every host, other
    than what a host was deployed with and runs now, failed deploys skipped. A host already rolled
    back keeps its release a candidate, so the same command after a halt finds the same target.
  - Releases are the same on two hosts when their content is (a release id is a hash of its files
    and images).
author:
  - stackops.rollback developers (@stackops)
options:
  _input:
    description:
      - Each host's C(stackops.rollback.compose_release_info) result, by host name (its
        C(releases), C(history) and C(failed_deploys) are read).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Find the release every host can roll back to
  ansible.builtin.set_fact:
    fleet_common: "{{ infos_by_host | stackops.rollback.fleet_common_release }}"
  run_once: true
"""

RETURN = r"""
_value:
  description:
    - C(release), the release id (V(null) when there is none), C(version), its version label as
      recorded at deploy, and C(error), what is missing with each host's releases (V(null) when
      there is a release).
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.stackops.rollback.plugins.module_utils._fleet import common_release


def fleet_common_release(infos):
    if not isinstance(infos, dict) or not all(isinstance(info, dict) for info in infos.values()):
        raise AnsibleFilterError("fleet_common_release takes each host's release info by host name, got %r" % (infos,))
    release, error = common_release(infos)
    labels = [r.get("version") for info in infos.values() for r in info.get("releases") or [] if r.get("id") == release]
    return {"release": release, "version": labels[0] if labels and release else None, "error": error}


class FilterModule:
    def filters(self):
        return {"fleet_common_release": fleet_common_release}
