# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_batch_errors
short_description: What is wrong with a fleet rollback's batch size
version_added: 1.0.0
description:
  - Checks a C(rollback_batch) value as Ansible's C(serial) reads it, a whole number of hosts from
    1, a percentage from C(1%) to C(100%), or a list of those for batches that grow, and returns one
    message per value that is none of them (an empty list when the value is good).
author:
  - stackops.rollback developers (@stackops)
options:
  _input:
    description: The batch size, or a list of batch sizes.
    type: raw
    required: true
  hosts:
    description: The fleet's hosts; with O(canary), a canary larger than the fleet is named too.
    type: list
    elements: str
  canary:
    description: How many hosts roll back first, on their own (C(rollback_canary)); checked when O(hosts) is given.
    type: raw
    default: 0
  tiers:
    description:
      - Inventory groups rolled back in this order (C(rollback_tiers)), checked when O(hosts) is given - each
        a group of O(groups), every host in exactly one of them.
    type: list
    elements: str
  groups:
    description: The inventory's groups and their hosts (the magic variable C(groups)), for O(tiers).
    type: dict
"""

EXAMPLES = r"""
- name: Refuse a batch size Ansible would misread
  ansible.builtin.assert:
    that: rollback_batch | stackops.rollback.fleet_batch_errors(hosts=ansible_play_hosts_all, canary=1) | length == 0
    fail_msg: "{{ rollback_batch | stackops.rollback.fleet_batch_errors | join('; ') }}"
"""

RETURN = r"""
_value:
  description: One message per bad value; empty when the value is a batch size.
  type: list
  elements: str
"""

from ansible_collections.stackops.rollback.plugins.module_utils._fleet import batch_errors, plan_errors


def fleet_batch_errors(size, hosts=None, canary=0, tiers=None, groups=None):
    return batch_errors(size) if hosts is None else plan_errors(hosts, size, canary, tiers, groups)


class FilterModule:
    def filters(self):
        return {"fleet_batch_errors": fleet_batch_errors}
