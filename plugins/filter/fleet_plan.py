# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_plan
short_description: A fleet rollback's batches in order - tiers, each tier's canary, then its batches
version_added: 1.0.0
description:
  - Orders a fleet's hosts into the batches a fleet rollback runs one after the other - tier after
    tier (inventory groups, C(rollback_tiers)), and in each tier its canary hosts on their own
    (C(rollback_canary)), then the rest in batches of C(rollback_batch) as Ansible's C(serial)
    makes them (a number, a percentage of the tier's hosts rounded down and at least one, or a list
    of those with the last one repeated).
  - Check the settings with P(stackops.rollback.fleet_batch_errors#filter) first.
author:
  - stackops.rollback developers (@stackops)
options:
  _input:
    description: The hosts, in order.
    type: list
    elements: str
    required: true
  size:
    description: The batch size, or a list of batch sizes.
    type: raw
    required: true
  canary:
    description: How many hosts of each tier roll back first, on their own.
    type: raw
    default: 0
  tiers:
    description: Inventory groups rolled back in this order; none for one tier of every host.
    type: list
    elements: str
  groups:
    description: The inventory's groups and their hosts (the magic variable C(groups)), for O(tiers).
    type: dict
"""

EXAMPLES = r"""
- name: Show the batches, workers first, one canary in each tier
  ansible.builtin.debug:
    msg: >-
      {{ ansible_play_hosts_all | stackops.rollback.fleet_plan('50%', canary=1,
      tiers=['workers', 'web'], groups=groups) }}
"""

RETURN = r"""
_value:
  description: The batches in the order they run, each with C(tier) (V(null) without tiers), C(canary) and C(hosts).
  type: list
  elements: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.stackops.rollback.plugins.module_utils._fleet import plan, plan_errors


def fleet_plan(hosts, size, canary=0, tiers=None, groups=None):
    errors = plan_errors(hosts, size, canary, tiers, groups)
    if errors:
        raise AnsibleFilterError(" ".join(errors))
    return plan(hosts, size, canary, tiers, groups)


class FilterModule:
    def filters(self):
        return {"fleet_plan": fleet_plan}
