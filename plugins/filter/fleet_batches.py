# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_batches
short_description: A fleet's hosts in batches, as Ansible's serial makes them
version_added: 1.0.0
description:
  - Splits the hosts, in their order, into batches of C(rollback_batch) hosts, the way Ansible's
    C(serial) does - a number, a percentage of all the hosts (rounded down, at least one), or a
    list of those taken in turn with the last one repeated - so that a fleet rollback can run its
    batches in one play and halt between them, whatever happens to a host.
  - Check the size with P(stackops.rollback.fleet_batch_errors#filter) first.
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
    description:
      - How many hosts roll back first, in a batch of their own (C(rollback_canary)); the batches of
        O(size) follow, a percentage counting all the hosts.
    type: raw
    default: 0
"""

EXAMPLES = r"""
- name: Show the batches
  ansible.builtin.debug:
    msg: "{{ ansible_play_hosts_all | stackops.rollback.fleet_batches([1, '50%']) }}"
"""

RETURN = r"""
_value:
  description: The batches, each a list of hosts, in the order they run.
  type: list
  elements: list
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.stackops.rollback.plugins.module_utils._fleet import plan, plan_errors


def fleet_batches(hosts, size, canary=0):
    errors = plan_errors(hosts, size, canary)
    if errors:
        raise AnsibleFilterError(" ".join(errors))
    return [batch["hosts"] for batch in plan(hosts, size, canary)]


class FilterModule:
    def filters(self):
        return {"fleet_batches": fleet_batches}
