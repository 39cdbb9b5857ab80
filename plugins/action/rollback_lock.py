# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Controller side of stackops.rollback.rollback_lock.

A lock's holder is a play on some controller. Only the controller can tell whether that play's
process still runs, so this plugin adds the controller's name and process id to the lock, and
when the lock is held by a process of this controller that no longer exists, takes it over at
once. Any other holder is waited for (the module's wait_timeout): until it releases the lock, or
its lease ends, which is how a run that died on another controller is taken over.
"""

from __future__ import annotations

import os
import socket

from ansible.plugins.action import ActionBase
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import lock_stage, waited_for_worker


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by another user
    return True


class ActionModule(ActionBase):
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        controller = socket.gethostname()
        # Task workers are forked from the ansible-playbook process: its pid outlives them all.
        args.setdefault("controller", controller)
        args.setdefault("controller_pid", os.getppid())
        # Ask once without waiting: a holder that died on this controller is taken over at once.
        wait_timeout = args.get("wait_timeout") or 0
        first = dict(args, wait_timeout=0) if args.get("state", "present") == "present" else args
        answer = self._execute_module("stackops.rollback.rollback_lock", module_args=first, task_vars=task_vars)
        holder = answer.get("holder") or {}
        if (
            answer.get("lock_held")
            and holder.get("controller") == controller
            and isinstance(holder.get("controller_pid"), int)
            and holder.get("controller_pid") != args["controller_pid"]
            and not process_alive(holder["controller_pid"])
        ):
            args["takeover_token"] = holder.get("token")
            answer = self._execute_module("stackops.rollback.rollback_lock", module_args=args, task_vars=task_vars)
            if not answer.get("failed"):
                answer["msg"] = "took over the lock of a run that died (pid %s on %s, phase %s)%s" % (
                    holder.get("controller_pid"),
                    controller,
                    lock_stage(holder),
                    waited_for_worker(answer.get("waited_for")),
                )
        elif answer.get("lock_held") and wait_timeout:
            # A live holder, or one on another controller: wait for it, or for its lease to end.
            answer = self._execute_module("stackops.rollback.rollback_lock", module_args=args, task_vars=task_vars)
        result.update(answer)
        return result
