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
