#!/usr/bin/python
# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rollback_lock
short_description: Take or release the per-project rollback lock on a host
version_added: 1.0.0
description:
  - Makes sure only one rollback works on a compose project of a host at a time. The lock is a
    file in the release ledger, created exclusively; a second rollback fails with a message that
    names the holder and since when it holds the lock.
  - The same O(token) taking the lock again succeeds without change, so a re-run of the same play
    is not locked out by itself.
author:
  - stackops.rollback developers
attributes:
  check_mode:
    support: full
    details: Reports whether the lock is free; takes and releases nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Taking a lock this O(token) already holds, or releasing a free one, changes nothing.
options:
  project:
    description:
      - Compose project name.
    type: str
    required: true
  ledger_dir:
    description:
      - Directory of the release ledger on the managed host.
    type: path
    default: /var/lib/stackops-rollback
  state:
    description:
      - V(present) takes the lock, V(absent) releases it.
    type: str
    choices: [present, absent]
    default: present
  holder:
    description:
      - Who takes the lock, as others will read it (for example the play and the controller user).
    type: str
    default: a stackops.rollback run
  token:
    description:
      - Identifies this run; only the same token releases the lock unless O(force=true).
    type: str
    required: true
  force:
    description:
      - Release the lock whoever holds it (after a run that died).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Take the rollback lock of the shop
  stackops.rollback.rollback_lock:
    project: shop
    holder: "deploy play by {{ lookup('ansible.builtin.env', 'USER') }}"
    token: "{{ shop_run_token }}"

- name: Release it
  stackops.rollback.rollback_lock:
    project: shop
    token: "{{ shop_run_token }}"
    state: absent
"""

RETURN = r"""
holder:
  description: The lock's holder after the task (V(null) when free).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import DEFAULT_LEDGER_DIR, Ledger, LedgerError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            project=dict(type="str", required=True),
            ledger_dir=dict(type="path", default=DEFAULT_LEDGER_DIR),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            holder=dict(type="str", default="a stackops.rollback run"),
            token=dict(type="str", required=True, no_log=False),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        ledger = Ledger(p["ledger_dir"], p["project"])
        current = ledger.lock_holder()
        if p["state"] == "present":
            if module.check_mode:
                if current and current.get("token") != p["token"]:
                    ledger.acquire({"holder": p["holder"], "token": p["token"]})  # raises, naming the holder
                module.exit_json(changed=current is None, holder=current)
            changed = ledger.acquire({"holder": p["holder"], "token": p["token"]})
        else:
            if module.check_mode:
                module.exit_json(changed=current is not None, holder=None)
            changed = ledger.release_lock(p["token"], p["force"])
    except LedgerError as exc:
        module.fail_json(msg=str(exc), holder=ledger.lock_holder() if "ledger" in locals() else None)
    module.exit_json(changed=changed, holder=ledger.lock_holder())


if __name__ == "__main__":
    main()
