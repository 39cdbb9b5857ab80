#!/usr/bin/python
# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_release
short_description: Record the release a compose project runs, or put a recorded release's files back
version_added: 1.0.0
description:
  - With O(state=present), records in the release ledger on the managed host what a compose project
    runs now - its compose files, its env files, the image digest of each service, the git commit
    when the project directory is a git checkout, a version label - and appends an event
    (C(deploy) or C(rollback)) to the project's history.
  - The release id is derived from that content, so recording the same deployed state twice is
    not a new release and changes nothing.
  - With O(state=restored), writes the compose and env files of a release (from the ledger, or from
    git for a git ref that was never recorded) into O(project_src), each file atomically, and writes a
    compose override that pins every service to the image digest it ran with. Mutable tags such as
    C(latest) cannot bring back the wrong image.
  - With O(state=pulled), makes sure every image of O(release) is on the host. Recorded images are
    pulled by digest when missing, a release read from git is pulled by tag, and an image that was
    built on the host must still be there. Roles call it before anything stops.
  - The ledger, its file copies and restored env files are never readable by others.
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.ledger
  - stackops.rollback.docker
attributes:
  check_mode:
    support: full
    details: Reports the release that would be recorded, or the files that would be written.
  diff_mode:
    support: full
    details: With O(state=restored), the compose file changes; env files are shown as changed, never their content.
  idempotent:
    support: full
    details: Recording an unchanged deployment, or restoring files that are already in place, changes nothing.
options:
  project_src:
    description:
      - Directory of the compose project.
    type: path
    required: true
  project_name:
    description:
      - Compose project name. Defaults to the name Compose derives for O(project_src).
    type: str
  state:
    description:
      - V(present) records the deployed release; V(restored) puts the files of O(release) back;
        V(pulled) makes sure the images of O(release) are on the host; V(replaced) recreates
        O(services) from the project's files now on disk and starts them at once.
      - V(replaced) is the quick swap of a rollback - C(docker compose create) builds each new container
        with its full configuration and stops the old one just before, and the new ones start at once,
        without the dependency health polling of C(docker compose up), which would add up to half a
        second to the downtime. Use it only for services whose dependencies are running, and follow
        it with C(docker compose up --wait) (the P(community.docker.docker_compose_v2#module) module)
        to converge and check the rest.
    type: str
    choices: [present, restored, pulled, replaced]
    default: present
  services:
    description:
      - For O(state=replaced), the services to recreate and start.
    type: list
    elements: str
  version:
    description:
      - A free-form version label stored with the release (for example the application version).
    type: str
  event:
    description:
      - What the recorded state is the result of, for O(state=present).
      - V(rollback) and V(failed_rollback) events also go to the host's audit log.
      - V(failed_rollback) records an attempt that failed and was put back; it does not change the current release.
    type: str
    choices: [deploy, rollback, failed_rollback]
    default: deploy
  details:
    description:
      - Facts stored with the event (for example the release rolled back from, downtime, backup paths).
    type: dict
  git_commit:
    description:
      - For O(state=present), the git commit the recorded files were put back from (a rollback to a
        git ref), when it is not the project directory's C(HEAD).
    type: str
  release:
    description:
      - For O(state=restored) and O(state=pulled), the release - V(previous), V(current), a release id, or a git ref.
    type: str
seealso:
  - module: stackops.rollback.compose_release_info
requirements:
  - Docker SDK for Python on the managed host
  - Docker Compose v2 (>= 2.18)
"""

EXAMPLES = r"""
- name: Record the release just deployed
  stackops.rollback.compose_release:
    project_src: /srv/shop
    version: "{{ shop_version }}"

- name: Put back the files of the previous release, images pinned by digest
  stackops.rollback.compose_release:
    project_src: /srv/shop
    state: restored
    release: previous
  register: shop_restore

- name: Start it with the pinned images
  community.docker.docker_compose_v2:
    project_src: /srv/shop
    files: "{{ shop_restore.compose_files }}"
    pull: missing
"""

RETURN = r"""
release_id:
  description: Id of the release recorded or restored (V(null) for a git ref never recorded).
  returned: success
  type: str
  sample: 3f9c2a7d10be
release:
  description: The release, without file contents.
  returned: success
  type: dict
  contains:
    id:
      description: Release id.
      type: str
    version:
      description: Version label.
      type: str
    created:
      description: When it was first recorded (UTC).
      type: str
    git:
      description: Commit and dirty flag when the project directory is a git checkout.
      type: dict
    files:
      description: Compose and env files of the release.
      type: list
      elements: str
    images:
      description: Image each service runs, by digest when the image has one.
      type: dict
new_release:
  description: Whether this recording added a release to the ledger (not only an event).
  returned: state=present
  type: bool
compose_files:
  description: Absolute paths of the compose files to run the restored release with, the pin override last.
  returned: state=restored
  type: list
  elements: str
env_files:
  description: Absolute paths of the restored env files.
  returned: state=restored
  type: list
  elements: str
pinned:
  description: Whether every service is pinned to a recorded image (false for a git ref never recorded).
  returned: state=restored
  type: bool
written:
  description: Files written (or that would be written in check mode), relative to O(project_src).
  returned: state=restored
  type: list
  elements: str
pulled:
  description: Services whose image was pulled (or would be, in check mode).
  returned: state=pulled
  type: list
  elements: str
present:
  description: Services whose image was on the host already.
  returned: state=pulled
  type: list
  elements: str
replaced:
  description: Services recreated and started.
  returned: state=replaced
  type: list
  elements: str
seconds:
  description: How long the swap took, from the create to the last start.
  returned: state=replaced
  type: float
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.stackops.rollback.plugins.module_utils._compose import Compose, ComposeError
from ansible_collections.stackops.rollback.plugins.module_utils._docker import DOCKER_COMMON_ARGS, get_client
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import (
    DEFAULT_LEDGER_DIR,
    Ledger,
    LedgerError,
    atomic_write,
    pin_document,
    utcnow,
)
from ansible_collections.stackops.rollback.plugins.module_utils._release import (
    apply_checkout,
    capture,
    ensure_images,
    equivalent_running_refs,
    load_target,
    plan_checkout,
    project_name,
    summary,
)


class ReleaseRecorder:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.results = {"changed": False}

    def ledger_for(self, project):
        return Ledger(self.params["ledger_dir"], project)

    def record(self):
        client = get_client(self.module)
        release, contents = capture(self.module, client, self.params)
        if self.params.get("git_commit"):
            release["git"] = {"commit": self.params["git_commit"], "dirty": False}
        ledger = self.ledger_for(release["project"])
        current = ledger.current_id()
        is_new = not ledger.has_release(release["id"])
        event = self.params["event"]
        unchanged = current == release["id"] and event == "deploy"
        if is_new or not unchanged:
            self.results["changed"] = True
            if not self.module.check_mode:
                if is_new:
                    ledger.store_release(release, contents)
                entry = {
                    "event": event,
                    "release": release["id"],
                    "time": utcnow(),
                    "version": self.params.get("version"),
                    "details": self.params.get("details") or {},
                }
                ledger.append_event(entry)
                if event != "deploy":
                    ledger.audit(entry)
        stored = ledger.get(release["id"]) if ledger.has_release(release["id"]) else release
        self.results.update(release_id=release["id"], release=summary(stored), new_release=is_new)

    def restore(self):
        project_src = self.params["project_src"]
        ledger = self.ledger_for(project_name(self.module, self.params))
        release, contents = load_target(self.module, ledger, self.params.get("release"), self.params)
        writes, removals, diff = plan_checkout(project_src, release, contents, bool(self.params.get("files")))
        pinned = release.get("source") != "git"
        running = equivalent_running_refs(get_client(self.module), ledger.project, release) if pinned else {}
        pin = pin_document(release, running)
        old_pin = None
        if os.path.exists(ledger.pin_path):
            with open(ledger.pin_path, "rb") as fh:
                old_pin = fh.read()
        pin_changes = pinned and old_pin != pin.encode()
        changed = bool(writes or removals or pin_changes)
        if changed and not self.module.check_mode:
            keep_dir = os.path.join(ledger.dir, "removed", utcnow().replace(":", ""))
            apply_checkout(project_src, release, contents, writes, removals, keep_dir)
            if pinned:
                ledger.ensure_dirs()
                atomic_write(ledger.pin_path, pin.encode(), 0o600)
        if not pinned:
            self.module.warn(
                "git ref %s was never recorded in the ledger: its images follow their tags, which may have "
                "moved since; record each deploy with stackops.rollback.compose_release to pin digests"
                % release["git"]["ref"]
            )
        compose_files = [os.path.join(project_src, e["path"]) for e in release["files"] if e["kind"] == "compose"]
        if pinned:
            compose_files.append(ledger.pin_path)
        self.results.update(
            changed=changed,
            release_id=release.get("id"),
            release=summary(release),
            compose_files=compose_files,
            env_files=[os.path.join(project_src, e["path"]) for e in release["files"] if e["kind"] == "env"],
            pinned=pinned,
            written=[e["path"] for e in writes] + ["%s (removed)" % name for name in removals],
        )
        if self.module._diff and changed:
            self.results["diff"] = diff

    def pull(self):
        ledger = self.ledger_for(project_name(self.module, self.params))
        release, _contents = load_target(self.module, ledger, self.params.get("release"), self.params)
        pulled, present = ensure_images(get_client(self.module), release, self.module.check_mode)
        self.results.update(
            changed=bool(pulled), release_id=release.get("id"), release=summary(release), pulled=pulled, present=present
        )

    def replace(self):
        services = self.params.get("services") or []
        started = time.monotonic()
        if services and not self.module.check_mode:
            Compose.from_params(self.module).replace(services)
        self.results.update(changed=bool(services), replaced=services, seconds=round(time.monotonic() - started, 3))

    def run(self):
        if self.params["state"] == "present":
            self.record()
            return self.results
        if self.params["state"] == "replaced":
            self.replace()
            return self.results
        if not self.params.get("release"):
            self.module.fail_json(
                msg="state=%s needs release: previous, current, a release id or a git ref" % self.params["state"]
            )
        if self.params["state"] == "restored":
            self.restore()
        else:
            self.pull()
        return self.results


def main():
    argument_spec = dict(
        project_src=dict(type="path", required=True),
        project_name=dict(type="str"),
        files=dict(type="list", elements="path"),
        env_files=dict(type="list", elements="path"),
        ledger_dir=dict(type="path", default=DEFAULT_LEDGER_DIR),
        state=dict(type="str", choices=["present", "restored", "pulled", "replaced"], default="present"),
        services=dict(type="list", elements="str"),
        version=dict(type="str"),
        event=dict(type="str", choices=["deploy", "rollback", "failed_rollback"], default="deploy"),
        details=dict(type="dict"),
        git_commit=dict(type="str"),
        release=dict(type="str"),
    )
    argument_spec.update(DOCKER_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        results = ReleaseRecorder(module).run()
    except (LedgerError, ComposeError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="ledger or project file error: %s (%s)" % (exc.strerror, exc.filename))
    module.exit_json(**results)


if __name__ == "__main__":
    main()
