#!/usr/bin/python
# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_release_info
short_description: List the recorded releases of a compose project and resolve a rollback target
version_added: 1.0.0
description:
  - Reads the release ledger written by M(stackops.rollback.compose_release) on the managed host.
  - Returns every release, the current and the previous one, the history of events, the holder of
    the project's rollback lock if any, and, with O(target), the release a rollback would go to.
  - V(previous) is the release deployed before the most recent deploy. Rollbacks do not move it, so
    a second rollback to V(previous) lands on the same release instead of walking further back.
  - With O(compare_deployed=true), also captures what runs now and tells whether it is the
    current release (C(deployed_id)).
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.compose_project
  - stackops.rollback.ledger
  - stackops.rollback.docker
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: The module only reads.
options:
  project_src:
    description:
      - Directory of the compose project. Needed for git ref targets and for O(compare_deployed).
    type: path
  project_name:
    description:
      - Compose project name. Defaults to the name Compose derives for O(project_src).
      - One of O(project_src) and O(project_name) is required.
    type: str
  target:
    description:
      - A rollback target to resolve - V(previous), V(current), a release id, a version label as recorded
        at deploy (V(v1.4.2)), or a git ref.
    type: str
  compare_deployed:
    description:
      - Capture the deployed state and return its release id as RV(deployed_id).
    type: bool
    default: false
seealso:
  - module: stackops.rollback.compose_release
"""

EXAMPLES = r"""
- name: List the releases of the shop
  stackops.rollback.compose_release_info:
    project_src: /srv/shop
  register: shop_releases

- name: Show the current and the previous release
  ansible.builtin.debug:
    msg: "current {{ shop_releases.current.id }}, previous {{ shop_releases.previous.id | default('none') }}"

- name: Resolve a git ref to the release recorded from it
  stackops.rollback.compose_release_info:
    project_src: /srv/shop
    target: v1.4.2
  register: shop_target
"""

RETURN = r"""
crossed:
  description:
    - With O(target), the releases a rollback to it crosses (deployed after it), newest first, each
      with the deploy notes M(stackops.rollback.compose_release) stored
      (its O(stackops.rollback.compose_release#module:notes)).
  returned: when target is set
  type: list
  elements: dict
  sample: [{"id": "3f9c2a7d10be", "version": "v3", "notes": "0003 drops records.note, irreversible"}]
project:
  description: The compose project name.
  returned: success
  type: str
releases:
  description: Every recorded release, newest first (no file contents).
  returned: success
  type: list
  elements: dict
current:
  description:
    - The release of the most recent deploy or rollback, or V(null).
    - A failed rollback never becomes current, whatever ran once it had failed; see RV(failed_rollbacks).
      Nor does a failed deploy; see RV(failed_deploys).
  returned: success
  type: dict
previous:
  description: The release deployed before the most recent deploy, or V(null).
  returned: success
  type: dict
history:
  description:
    - Every event, oldest first (C(event), C(release), C(time), C(version), C(details)), failed
      rollbacks included.
  returned: success
  type: list
  elements: dict
failed_rollbacks:
  description:
    - The failed rollbacks, oldest first, apart from the deploys and rollbacks that decide
      RV(current) and RV(previous). C(release) is what ran once the attempt had failed (the
      release put back, or what a failed revert left); C(details) says what happened.
  returned: success
  type: list
  elements: dict
failed_deploys:
  description:
    - The failed deploys, oldest first (a deploy playbook's rescue records them before it rolls back);
      C(release) is the release whose deploy failed. None of them becomes RV(current) or RV(previous).
  returned: success
  type: list
  elements: dict
target:
  description: The release O(target) resolves to; C(source) is V(git) for a git ref never recorded.
  returned: when O(target) is set
  type: dict
deployed_id:
  description:
    - Release id of what runs now (it may not be in the ledger yet).
    - When it is not the current release, it counts as the most recent deploy for V(previous).
  returned: when O(compare_deployed=true)
  type: str
deployed:
  description: What runs now, as a release (no file contents).
  returned: when O(compare_deployed=true)
  type: dict
deployed_states:
  description:
    - The state of each service's container now (V(running), V(exited), V(created), ...), as the engine says.
  returned: when O(compare_deployed=true)
  type: dict
  sample: {"app": "running", "db": "exited"}
lock:
  description: Holder of the project's rollback lock, or V(null).
  returned: success
  type: dict
ledger_dir:
  description: The project's folder in the ledger.
  returned: success
  type: str
ledger_paths:
  description:
    - Where the project's files are in the ledger, so that roles need not know its layout.
  returned: success
  type: dict
  contains:
    project_dir:
      description: The project's folder in the ledger.
      type: str
    pin:
      description: The compose override that pins each service's image by digest.
      type: str
    lock:
      description: The project's lock file.
      type: str
    stage_dir:
      description: The folder a blue-green rollback stages the target's files in.
      type: str
    alternate_file:
      description: The compose file of a blue-green rollback's green copy.
      type: str
  sample:
    project_dir: /var/lib/stackops-rollback/projects/shop
    pin: /var/lib/stackops-rollback/projects/shop/pin.yml
    lock: /var/lib/stackops-rollback/projects/shop/lock
    stage_dir: /var/lib/stackops-rollback/projects/shop/green-src
    alternate_file: /var/lib/stackops-rollback/projects/shop/green.json
"""

from ansible_collections.stackops.rollback.plugins.module_utils._compose import COMPOSE_PROJECT_ARGS
from ansible_collections.stackops.rollback.plugins.module_utils._docker import EngineError, docker_module
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import DEFAULT_LEDGER_DIR, Ledger, LedgerError
from ansible_collections.stackops.rollback.plugins.module_utils._release import (
    ReleaseError,
    capture,
    crossed_releases,
    load_target,
    project_name,
    summary,
)


def releases_info(module, engine):
    """What the ledger knows of a project, what runs now and where a target would lead."""
    params = module.params
    ledger = Ledger(params["ledger_dir"], project_name(engine, params))
    releases = ledger.releases()
    current_id, previous_id = ledger.current_id(), ledger.previous_id()
    by_id = {r["id"]: r for r in releases}
    result = {
        "changed": False,
        "project": ledger.project,
        "ledger_dir": ledger.dir,
        "ledger_paths": ledger.paths(),
        "releases": [summary(r) for r in reversed(releases)],
        "current": summary(by_id.get(current_id)),
        "previous": summary(by_id.get(previous_id)),
        "history": ledger.history(),
        "failed_rollbacks": ledger.failed_history("failed_rollback"),
        "failed_deploys": ledger.failed_history("failed_deploy"),
        "lock": ledger.lock_holder(),
    }
    deployed_id = None
    if params["compare_deployed"]:
        if not params.get("project_src"):
            raise ReleaseError("compare_deployed needs project_src")
        release, _contents = capture(engine, dict(params, version=None))
        deployed_id = result["deployed_id"] = release["id"]
        # The ledger's record of it, when there is one, carries its version label.
        result["deployed"] = summary(by_id.get(deployed_id) or release)
        result["deployed_states"] = {name: svc.get("state") for name, svc in release["services"].items()}
        # What runs but was never recorded counts as the latest deploy for `previous`.
        result["previous"] = summary(by_id.get(ledger.previous_id(deployed_id)))
    if params.get("target"):
        release, _contents = load_target(engine, ledger, params["target"], params, deployed_id)
        result["target"] = summary(release)
        result["crossed"] = crossed_releases(ledger, release.get("id"), deployed_id)
    return result


def main():
    argument_spec = dict(
        ledger_dir=dict(type="path", default=DEFAULT_LEDGER_DIR),
        target=dict(type="str"),
        compare_deployed=dict(type="bool", default=False),
    )
    argument_spec.update(COMPOSE_PROJECT_ARGS)
    module, engine = docker_module(argument_spec, required_one_of=[("project_src", "project_name")])
    try:
        result = releases_info(module, engine)
    except (LedgerError, ReleaseError, EngineError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
