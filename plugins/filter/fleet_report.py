# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_report
short_description: A fleet rollback's report, as an aligned table or a Markdown document
version_added: 1.0.0
description:
  - Lays out the rows of a fleet rollback (one per host, in the order the hosts were targeted) as
    the aligned table the rollback playbooks print, followed by one sentence on how the fleet ended
    (who failed at which step, who is on the target, who was not started), or as the Markdown
    document they write under C(rollback_report_dir).
author:
  - stackops.rollback developers (@stackops)
options:
  _input:
    description:
      - The rows, each a dictionary with C(host), C(batch), C(status) (C(rolled_back),
        C(already_on_target), C(planned), C(reverted), C(failed), C(refused), C(unreachable),
        C(not_started), and after a halt with C(rollback_on_halt=revert) C(put_back) or
        C(put_back_failed)), C(from), C(from_version), C(to), C(to_version), C(downtime_seconds)
        (with C(put_back_downtime_seconds) for a host put back), C(backups), C(failed_step) and C(reason).
    type: list
    elements: dict
    required: true
  strategy:
    description: The strategy's name, for the Markdown document's title.
    type: str
    default: rollback
  markdown:
    description: A Markdown document instead of the text table.
    type: bool
    default: false
  check_mode:
    description: The run was in check mode; the summary says nothing was changed, and who would fail.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Print the fleet's table
  ansible.builtin.debug:
    msg: "{{ rows | stackops.rollback.fleet_report }}"

- name: Write it as Markdown
  ansible.builtin.copy:
    content: "{{ rows | stackops.rollback.fleet_report(strategy='recreate', markdown=true) }}"
    dest: /var/tmp/fleet.md
    mode: "0600"
"""

RETURN = r"""
_value:
  description: The table and its summary sentence, or the Markdown document.
  type: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.stackops.rollback.plugins.module_utils._fleet import report


def fleet_report(rows, strategy="rollback", markdown=False, check_mode=False):
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise AnsibleFilterError("fleet_report takes a list of rows (dictionaries), got %r" % (rows,))
    return report(rows, strategy, markdown=markdown, check_mode=check_mode)


class FilterModule:
    def filters(self):
        return {"fleet_report": fleet_report}
