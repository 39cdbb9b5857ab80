#!/usr/bin/python
# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rollback_lock
short_description: Take, update or release the per-project rollback lock on a host
version_added: 1.0.0
description:
  - Makes sure only one rollback works on a compose project of a host at a time. The lock is a
    file in the release ledger, created exclusively. A second run waits up to O(wait_timeout)
    seconds for it, then fails with a message that names the holder, its controller and process,
    its host, since when it holds the lock, its plan and phase, and the command that clears it.
  - The lock also records the run's plan and the phase it reached (O(data)). When a run dies, the
    next run takes the lock over and gets the dead run's record back in RV(resumed) so it can
    finish or undo its work - at once on the same controller, where the holder's process is seen
    to be gone; from any controller once the holder's lease (O(lease)) ended O(grace) seconds ago,
    as under AWX, where each job runs in a new container.
  - Never while a step of the holder's run still works on the host. A long step (a backup, a health
    wait) records its process in the lock; when SSH drops, that module goes on without its controller,
    and a takeover waits (up to O(wait_timeout)) until the process has ended, so two runs never work
    on one project at once.
  - The same O(token) taking the lock again succeeds without change, so a re-run of the same play
    is not locked out by itself.
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.attributes.ACTION
attributes:
  action:
    support: full
    details:
      - The action plugin adds the controller's name and process id, and checks whether a holder
        on this controller is still alive before it waits.
  check_mode:
    support: full
    details:
      - Reports whether the lock could be taken; takes and releases nothing. Like a real run, it waits (up to
        O(wait_timeout)) for a step of a dead run still working on the host; any other holder fails it at once.
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
      - V(present) takes the lock (or updates O(data) when this O(token) holds it), V(absent) releases it.
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
  data:
    description:
      - Facts to keep in the lock while it is held, such as the plan and the phase reached.
    type: dict
  force:
    description:
      - Release the lock whoever holds it (after a run that died on another controller).
    type: bool
    default: false
  controller:
    description:
      - Name of the controller that runs the play. Set by the action plugin.
    type: str
  controller_pid:
    description:
      - Process id of the play on the controller. Set by the action plugin.
    type: int
  takeover_token:
    description:
      - Take over a lock held by this token (a run known to be dead). Set by the action plugin.
    type: str
  wait_timeout:
    description:
      - Seconds to wait for a lock held by another run to be released (or its lease to end), asking
        every second. Then the task fails naming the holder - its controller, host, start time, plan
        and phase - and the command that clears the lock.
      - Also how long a takeover (and a check in check mode) waits for a step of the dead run that still
        works on the host.
      - V(0) fails at once.
    type: int
    default: 0
  lease:
    description:
      - Seconds the lock stays this run's without news from it. Each task that takes or updates the
        lock renews the lease; a lease that ended more than O(grace) seconds ago belongs to a run
        that died, and any run, from any controller, takes the lock over (and gets the dead run's
        record in RV(resumed)).
      - The roles update the lock at each step, and their long steps (a pull, a backup, a load, a
        health wait, a migration) renew the lease all the while they work (the renew_lock option of
        M(stackops.rollback.compose_health) and the other long-running modules), so a live run is not
        taken over however long one step lasts.
      - Not given, a new lock takes 600 seconds and a renewal keeps the lease the lock was taken with.
      - V(0) takes no lease; such a lock is taken over only from its own controller, once its
        process is gone.
    type: int
  grace:
    description:
      - Seconds past the end of a lease before the lock is taken over. An empty or damaged lock file
        (a crash right after it was created) is taken over this long after its last write.
    type: int
    default: 60
"""

EXAMPLES = r"""
- name: Take the rollback lock of the shop
  stackops.rollback.rollback_lock:
    project: shop
    holder: "deploy play by {{ lookup('ansible.builtin.env', 'USER') }}"
    token: "{{ shop_run_token }}"
  register: shop_lock

- name: Remember the plan and the phase reached in the lock
  stackops.rollback.rollback_lock:
    project: shop
    token: "{{ shop_run_token }}"
    data:
      phase: switched

- name: Release it
  stackops.rollback.rollback_lock:
    project: shop
    token: "{{ shop_run_token }}"
    state: absent
"""

RETURN = r"""
holder:
  description: The lock's record after the task (V(null) when free).
  returned: success
  type: dict
resumed:
  description: The record of a dead run whose lock this run took over (its data, phase and plan), else V(null).
  returned: success
  type: dict
host_time:
  description:
    - The managed host's clock (epoch seconds) when the module ran. Windows that are compared with the
      host's own records (engine events, log lines, health checks) open at a time read there, never on
      the controller, whose clock may differ.
  returned: always
  type: float
  sample: 1764633600.412
waited_for:
  description:
    - The step this run waited for before it took the lock over - a module of the holder's run still working
      on this host after its controller went away (SSH dropped) - with the seconds waited (C(seconds)).
  returned: when the lock was taken over (or, in check mode, could be) after waiting for such a step
  type: dict
  sample:
    pid: 4242
    started: 1234567
    boot: 0f6c1d3e-2a1b-4c5d-8e9f-0a1b2c3d4e5f
    host: web1
    step: stackops.rollback.volume_backup
    since: "2026-12-07T12:00:00.000000Z"
    seconds: 12
msg:
  description: Says whose lock was taken over, and why, when this run took one over.
  returned: when a lock was taken over
  type: str
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import (
    DEFAULT_LEDGER_DIR,
    Ledger,
    LedgerError,
    LockHeld,
    live_worker,
    utc_stamp_of,
    waited_for_worker,
)


def take(ledger, record, params, clock=time.monotonic, sleep=time.sleep):
    """Take the lock, waiting up to wait_timeout seconds while another live run holds it - or a step
    of a run whose controller went away still works on this host.

    Returns (changed, resumed, waited_for): waited_for is that step's worker record with the seconds
    waited until the lock was taken over, else None.
    """
    return wait_for_lock(
        ledger,
        params,
        lambda: ledger.acquire(record, params["takeover_token"], lease=params["lease"], grace=params["grace"]),
        clock,
        sleep,
    )


def judge(ledger, token, params, clock=time.monotonic, sleep=time.sleep):
    """Check mode: whether this run could take the lock, taking nothing. Like the run itself, it waits
    for a step of a dead run still working on this host; any other holder fails it at once.

    Returns (changed, None, waited_for) as take() does.
    """

    def may_take():
        current = ledger.lock_holder()
        if current is None or current.get("token") == token:
            return current is None, None
        if not ledger.may_take(current, params["takeover_token"], time.time(), params["grace"]):
            raise LockHeld(ledger, current)
        return True, None

    return wait_for_lock(ledger, params, may_take, clock, sleep, only_for_steps=True)


def held_by_step(holder, params):
    """The worker of a holder that only its live step keeps from being taken over (its run is dead
    or its lease ended), else None."""
    worker = live_worker(holder)
    if worker is None or not Ledger.run_gone(holder, params["takeover_token"], time.time(), params["grace"]):
        return None
    return worker


def wait_for_lock(ledger, params, attempt, clock, sleep, only_for_steps=False):
    """attempt() until it stops raising LockHeld, every second for up to wait_timeout seconds (with
    only_for_steps, only while what holds the lock is a step of a dead run still working)."""
    started = clock()
    step = None
    while True:
        try:
            changed, resumed = attempt()
        except LockHeld as exc:
            waited = clock() - started
            blocking = held_by_step(exc.holder, params)
            step = blocking or step
            if waited >= params["wait_timeout"] or (only_for_steps and blocking is None):
                if params["wait_timeout"] > 0 and int(waited) > 0:
                    raise LockHeld(ledger, exc.holder, waited=int(waited)) from None
                raise
            sleep(min(1.0, params["wait_timeout"] - waited))
            continue
        waited_for = dict(step, seconds=int(clock() - started)) if step is not None else None
        return changed, resumed, waited_for


def main():
    module = AnsibleModule(
        argument_spec=dict(
            project=dict(type="str", required=True),
            ledger_dir=dict(type="path", default=DEFAULT_LEDGER_DIR),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            holder=dict(type="str", default="a stackops.rollback run"),
            token=dict(type="str", required=True, no_log=False),
            data=dict(type="dict"),
            force=dict(type="bool", default=False),
            controller=dict(type="str"),
            controller_pid=dict(type="int"),
            takeover_token=dict(type="str", no_log=False),
            wait_timeout=dict(type="int", default=0),
            lease=dict(type="int"),
            grace=dict(type="int", default=60),
        ),
        supports_check_mode=True,
    )
    p = module.params
    # The managed host's clock: the roles open their measurement windows on it, never the controller's.
    host_time = time.time()
    ledger = None
    try:
        ledger = Ledger(p["ledger_dir"], p["project"])
        current = ledger.lock_holder()
        resumed = waited_for = None
        if p["state"] == "present":
            if module.check_mode:
                changed, resumed, waited_for = judge(ledger, p["token"], p)
                module.exit_json(
                    changed=changed,
                    holder=ledger.lock_holder(),
                    resumed=resumed,
                    host_time=host_time,
                    **({"waited_for": waited_for} if waited_for else {}),
                )
            record = {
                "holder": p["holder"],
                "token": p["token"],
                "controller": p["controller"],
                "controller_pid": p["controller_pid"],
            }
            changed, resumed, waited_for = take(ledger, dict(record, **(p["data"] or {})), p)
            if not changed and p["data"]:
                changed = ledger.update_lock(p["token"], p["data"])
        else:
            if module.check_mode:
                module.exit_json(changed=current is not None, holder=None, resumed=None, host_time=host_time)
            changed = ledger.release_lock(p["token"], p["force"])
    except LockHeld as exc:
        module.fail_json(msg=str(exc), holder=exc.holder, lock_held=True)
    except LedgerError as exc:
        module.fail_json(msg=str(exc), holder=ledger.lock_holder() if ledger else None)
    result = dict(changed=changed, holder=ledger.lock_holder(), resumed=resumed, host_time=host_time)
    if p["state"] == "present" and waited_for:
        result["waited_for"] = waited_for
    if resumed and (resumed.get("damaged") or resumed.get("token") != p["takeover_token"]):
        if resumed.get("unfinished"):
            kind, why = "a run that ended unfinished", resumed["unfinished"]
        elif isinstance(resumed.get("lease_expires"), (int, float)):
            kind, why = "a run whose lease ended", "lease ended %s" % utc_stamp_of(resumed["lease_expires"])
        else:
            kind, why = "a run whose lease ended", "an empty or damaged lock file"
        result["msg"] = "took over the lock of %s (%s, controller %s, %s)%s" % (
            kind,
            resumed.get("holder", "?"),
            resumed.get("controller", "?"),
            why,
            waited_for_worker(waited_for),
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
