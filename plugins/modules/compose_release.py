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
    runs now - its compose files, its env files, the services' own C(env_file) files, the image digest
    of each service, the git commit when the project directory is a git checkout, a version label -
    and appends an event (C(deploy) or C(rollback)) to the project's history.
  - The files are the ones a plain C(docker compose) in O(project_src) loads - those named by
    C(COMPOSE_FILE) (from the environment or the env files, split at C(COMPOSE_PATH_SEPARATOR)),
    else the default compose file and its override - unless O(files) names them. Compose's own settings
    from the env files (C(COMPOSE_FILE), C(COMPOSE_PROFILES), ...) are shown with the release. A compose
    file outside O(project_src) is refused; a service C(env_file) outside it is listed as not recorded,
    and so is each C(build) context, whose sources are not recorded - a built service comes back as
    its image, by registry digest or by image id while the host still has it, never built again.
  - The release id is derived from that content, so recording the same deployed state twice is
    not a new release and changes nothing.
  - With O(state=restored), writes the files of a release (from the ledger, or from git for a git ref
    that was never recorded) into O(project_src), each file atomically, with every service's image
    pinned to the digest it ran with where the files define it - for an image C(reg/app:${APP_TAG}),
    C(APP_TAG=v1@sha256:...) in the env file that sets C(APP_TAG); for a tag written on a compose file's
    own C(image) line, C(reg/app:latest@sha256:...) on that line - so that a plain C(docker compose up
    -d), C(pull), C(ps) or C(logs) in the project directory runs the restored release, and a deploy that
    sets a new tag replaces the pin. A service the files cannot pin (its reference assembled otherwise,
    its tag variable used for something else too or set in the environment, an image built on the host)
    is pinned by a compose override in the ledger, listed in RV(not_pinned); RV(by_hand) then names it.
    A service whose container already runs the release's image by the release's own reference is left as
    it is. Mutable tags such as C(latest) cannot bring back the wrong image. Recording the project
    afterwards maps each pinned file back to its release's own content - it still runs that release.
  - With O(state=unpinned), puts the release's own content back into each project file a rollback
    pinned, for a deploy that follows moved tags (C(docker compose pull) then gets what the tags name
    now). A deploy that writes a new tag into the env file needs no such step.
  - With O(state=pulled), makes sure every image of O(release) is on the host. Recorded images are
    pulled by digest when missing, a release read from git is pulled by tag, and an image that was
    built on the host must still be there. Roles call it before anything stops.
  - With O(databases), each deploy also records every declared database's schema (normalized, with
    its sha256) and the rows of its migration tables, so that M(stackops.rollback.compose_schema)
    and the roles can tell before a rollback whether the target's code can run on the schema left
    by newer releases. O(notes) is stored with the release and shown in every rollback plan that crosses it.
  - With O(restore_point=true), saves each declared database before anything else, verified - an online
    dump where its engine has one (PostgreSQL, MariaDB, MySQL; the database keeps serving), else a
    consistent copy of its volumes with its containers stopped - and records it as the data as of the
    release that runs now. Run it before a deploy changes the schema.
  - The ledger, its file copies and restored env files are never readable by others.
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.compose_project
  - stackops.rollback.databases
  - stackops.rollback.ledger
  - stackops.rollback.ledger.lease
  - stackops.rollback.docker
attributes:
  check_mode:
    support: full
    details: >-
      Reports the release that would be recorded, or the files that would be written;
      dumps schemas (read-only) but takes no restore point.
  diff_mode:
    support: full
    details: >-
      With O(state=restored) and O(state=unpinned), the compose file changes; env files are shown as changed,
      never their content (RV(pins) says which variable holds a pin).
  idempotent:
    support: full
    details: >-
      Recording an unchanged deployment (and an unchanged schema), or restoring files that are already in place,
      changes nothing. Each O(restore_point=true) run takes a new restore point.
options:
  project_src:
    description:
      - Directory of the compose project.
    type: path
    required: true
  state:
    description:
      - V(present) records the deployed release; V(restored) puts the files of O(release) back;
        V(pulled) makes sure the images of O(release) are on the host; V(replaced) recreates
        O(services) from the project's files now on disk and starts them at once; V(unpinned) takes a
        rollback's digest pins out of the project's files.
      - V(audited) writes one line with O(details) to the host's audit log, and nothing else, so that
        the audit log has every run - C(refused_rollback) for a rollback that failed before its first
        change (a lock held, a schema refused, an image missing, no space), C(failed_rollback) with
        O(event=failed_rollback) for one whose own undo failed before it could record itself,
        C(unrecorded_rollback) with O(event=rollback) for one done and verified whose ledger record
        could not be written (the project lock keeps its plan, and the next run records it). It needs
        no Docker engine; the project is O(project_name), else the name Compose would give it, read
        from the files alone - C(COMPOSE_PROJECT_NAME) from the environment or an env file, else the
        compose files' literal top-level C(name), else the directory's name.
      - V(replaced) is the quick swap of a rollback - C(docker compose create) builds each new container
        with its full configuration and stops the old one just before, and the new ones start at once,
        without the dependency health polling of C(docker compose up), which would add up to half a
        second to the downtime. Use it only for services whose dependencies are running, and follow
        it with C(docker compose up --wait) (the P(community.docker.docker_compose_v2#module) module)
        to converge and check the rest.
    type: str
    choices: [present, restored, pulled, replaced, audited, unpinned]
    default: present
  services:
    description:
      - For O(state=replaced), the services to recreate and start.
    type: list
    elements: str
  first_answer:
    description:
      - For O(state=replaced), URLs to ask every 20 ms, right after the swap, until each answers with a
        status below 500; the moment each first answers is returned in RV(answered) under the service that
        publishes the URL's port, for a downtime measured to the moment the service served again
        (M(stackops.rollback.compose_health) with
        O(stackops.rollback.compose_health#module:downtime_answered)) rather than to its next health check.
    type: list
    elements: str
    default: []
  first_answer_timeout:
    description:
      - Seconds to wait for each URL of O(first_answer); a URL still silent then is left out of RV(answered).
    type: float
    default: 60
  version:
    description:
      - A free-form version label stored with the release (for example the application version).
    type: str
  event:
    description:
      - What the recorded state is the result of, for O(state=present).
      - V(rollback), V(failed_rollback) and V(failed_deploy) events also go to the host's audit log.
      - V(failed_rollback) records what runs once a rollback has failed, put back or not. It never becomes
        the current or the previous release; M(stackops.rollback.compose_release_info) lists these events
        apart.
      - V(failed_deploy) records a release whose deploy failed (a deploy playbook's rescue, before it
        rolls back). It never becomes the current or the previous release, and a later O(event=deploy)
        of it before the next deploy or rollback (the rollback roles record what runs first) changes
        nothing and returns RV(failed_deploy).
    type: str
    choices: [deploy, rollback, failed_rollback, failed_deploy]
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
      - For O(state=restored) and O(state=pulled), the release - V(previous), V(current), a release id,
        a version label as recorded at deploy (V(v1.4.2)), or a git ref.
    type: str
  staging:
    description:
      - For O(state=restored), O(project_src) is a staging copy of the project (blue_green's green), not
        the project directory - nothing is recorded in the ledger (no pinned files to map back) and the
        compose override for what the files cannot pin is written inside the copy, never over the
        project's own in the ledger.
    type: bool
    default: false
  notes:
    description:
      - For O(state=present) with O(event=deploy), free text stored with the release - the field guide's
        "document migration reversibility in deploy notes", for example C(0042 drops orders.item, irreversible).
      - Shown in every rollback plan and report that crosses this release. Left out, earlier notes are kept.
    type: str
  restore_point:
    description:
      - For O(state=present), save each declared database (O(databases)) first, verified (an online dump,
        or a copy of its volumes for an engine without one), and record it as a restore point of the
        release that runs now.
    type: bool
    default: false
  restore_point_dir:
    description:
      - Where restore point archives are written (0600, with their manifests).
    type: path
    default: /var/backups/stackops-rollback/restore-points
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

- name: Before a deploy - a restore point of the database, and the schema the running release has
  stackops.rollback.compose_release:
    project_src: /srv/shop
    databases:
      - service: db
        engine: postgres
        database: shop
    restore_point: true

- name: After the deploy - record it, its schema and what its migrations do
  stackops.rollback.compose_release:
    project_src: /srv/shop
    version: v3
    notes: 0003 drops records.note, irreversible
    databases:
      - service: db
        engine: postgres
        database: shop

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

- name: Show how to run it by hand (a plain docker compose up -d when the files pin every image)
  ansible.builtin.debug:
    msg: "{{ shop_restore.by_hand }}"

- name: In a deploy that follows a moved tag - take a rollback's pins out before pulling
  stackops.rollback.compose_release:
    project_src: /srv/shop
    state: unpinned
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
      description: Compose files, env files and the services' C(env_file) files of the release.
      type: list
      elements: str
    settings:
      description: Compose's own settings in the release's env files (C(COMPOSE_FILE), C(COMPOSE_PROFILES), ...).
      type: dict
      sample: {COMPOSE_FILE: "compose.yaml:compose.prod.yaml"}
    unrecorded:
      description:
        - Files the project uses that the ledger could not record (a service C(env_file) outside the
          project directory), and the services' build contexts (C(kind=build)).
      type: list
      elements: dict
      sample: [{service: web, path: /etc/shop/shared.env, why: outside the project directory}]
    images:
      description: Image each service runs, by digest when the image has one.
      type: dict
new_release:
  description: Whether this recording added a release to the ledger (not only an event).
  returned: state=present
  type: bool
failed_deploy:
  description: The release is what a failed deploy left running; O(event=deploy) did not record it.
  returned: state=present with event=deploy, when the release's deploy was recorded as failed
  type: bool
compose_files:
  description:
    - Absolute paths of the compose files to run the restored release with; the ledger's pin override
      last when RV(not_pinned) is not empty.
  returned: state=restored
  type: list
  elements: str
env_files:
  description: Absolute paths of the restored env files Compose interpolates from (not the services' C(env_file) files).
  returned: state=restored
  type: list
  elements: str
pinned:
  description: Whether every service is pinned to a recorded image (false for a git ref never recorded).
  returned: state=restored
  type: bool
pins:
  description: Where each pin was written - file, line, and V(image) for an image line, else the tag's variable.
  returned: state=restored
  type: list
  elements: dict
  sample: [{services: [app, worker], file: .env, line: 1, how: APP_TAG}]
not_pinned:
  description: Services the project's files could not pin, and why; the ledger's pin override holds them.
  returned: state=restored
  type: list
  elements: dict
  sample: [{service: app, why: "APP_TAG is used for more than this image's tag: pinning it would change that too"}]
by_hand:
  description: The command that runs the restored project by hand - C(docker compose up -d) in its directory.
  returned: state=restored
  type: str
  sample: cd /srv/shop && docker compose up -d
written:
  description: Files written (or that would be written in check mode), relative to O(project_src).
  returned: state=restored or state=unpinned
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
databases:
  description:
    - Per declared database (C(service/database)), the recorded schema's sha256, its table count
      and migration state.
  returned: state=present with databases
  type: dict
notes:
  description: The deploy notes stored with the release.
  returned: state=present with databases or notes
  type: str
answered:
  description:
    - For O(state=replaced) with O(first_answer), per service publishing one of the URLs' ports, when
      it first answered after the swap (epoch seconds).
  returned: state=replaced
  type: dict
restore_point:
  description: The restore point taken - release, time, and per volume its archive and sha256.
  returned: restore_point=true
  type: dict
entry:
  description: The line written to the audit log (C(event), C(time), C(details)).
  returned: state=audited
  type: dict
project:
  description: The project the audit line names.
  returned: state=audited
  type: str
"""

from ansible_collections.stackops.rollback.plugins.module_utils._archive import ArchiveError
from ansible_collections.stackops.rollback.plugins.module_utils._compose import compose_project_args
from ansible_collections.stackops.rollback.plugins.module_utils._database import DATABASES_ARG, DatabaseError
from ansible_collections.stackops.rollback.plugins.module_utils._docker import EngineError, docker_module
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import (
    LEASE_ARGS,
    LedgerError,
    run_keeping_lease,
)
from ansible_collections.stackops.rollback.plugins.module_utils._release import ReleaseError, Releases
from ansible_collections.stackops.rollback.plugins.module_utils._volumes import VolumeError


def main():
    argument_spec = dict(
        state=dict(
            type="str", choices=["present", "restored", "pulled", "replaced", "audited", "unpinned"], default="present"
        ),
        services=dict(type="list", elements="str"),
        first_answer=dict(type="list", elements="str", default=[]),
        first_answer_timeout=dict(type="float", default=60),
        version=dict(type="str"),
        event=dict(type="str", choices=["deploy", "rollback", "failed_rollback", "failed_deploy"], default="deploy"),
        details=dict(type="dict"),
        git_commit=dict(type="str"),
        release=dict(type="str"),
        staging=dict(type="bool", default=False),
        databases=DATABASES_ARG,
        notes=dict(type="str"),
        restore_point=dict(type="bool", default=False),
        restore_point_dir=dict(type="path", default="/var/backups/stackops-rollback/restore-points"),
    )
    argument_spec.update(compose_project_args(project_src=dict(required=True)))
    argument_spec.update(LEASE_ARGS)
    module, engine = docker_module(argument_spec)
    try:
        results = run_keeping_lease(module, Releases(module, engine).run)
    except (LedgerError, ReleaseError, EngineError, DatabaseError, ArchiveError, VolumeError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="ledger or project file error: %s (%s)" % (exc.strerror, exc.filename))
    module.exit_json(**results)


if __name__ == "__main__":
    main()
