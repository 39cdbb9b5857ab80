# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # The release ledger's option (plugins/module_utils/_ledger.py), for every module that reads or writes it.
    DOCUMENTATION = r"""
options:
  ledger_dir:
    description:
      - Directory of the release ledger on the managed host.
      - Set it once for every module that uses the ledger with C(module_defaults) on the action group
        C(group/stackops.rollback.ledger).
    type: path
    default: /var/lib/stackops-rollback
"""

    # The lease renewal of the long-running modules (LEASE_ARGS in plugins/module_utils/_ledger.py).
    LEASE = r"""
options:
  renew_lock:
    description:
      - The project lock this run holds (see M(stackops.rollback.rollback_lock)). While the module
        works, it renews the lock's lease every third of the lease, so that a step longer than the
        lease (a health wait, a backup, a pull, a drain) is not taken for a dead run and taken over.
      - When the run does not hold this lock (another run took it over), the module fails before it
        changes anything.
      - Omitted, or in check mode, the module renews nothing.
    type: dict
    suboptions:
      project:
        description:
          - The compose project whose lock the run holds.
        type: str
        required: true
      token:
        description:
          - The run's lock token (the O(stackops.rollback.rollback_lock#module:token) it took the lock with).
        type: str
        required: true
"""
