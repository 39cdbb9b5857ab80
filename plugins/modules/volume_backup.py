#!/usr/bin/python
# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: volume_backup
short_description: Fast, verified backup and safe restore of Docker volumes
version_added: 1.0.0
description:
  - Backs a Docker volume up into a compressed tar archive with a JSON manifest, restores a volume
    from such an archive, or verifies an archive against its manifest.
  - Writes through the Docker Engine API only - a helper container is created (never started, no image
    pulled) to write the volume - so it works against any engine the SDK reaches. A backup reads the
    volume's directory on the host where that is as safe as the engine's own archive (see O(method)),
    and through the engine everywhere else.
  - "Backup: checks that the volume exists first (a missing volume is never created by accident),
    streams the engine's tar through a parser that records each member's type, size, sha256, mode,
    owner and link, and fails on any truncation; writes a temporary file in O(dest), fsyncs it,
    reads it back and checks it against what was parsed, and only then renames it into place beside
    its manifest. Archives and manifests are 0600."
  - "Restore: verifies the archive against its manifest before touching the volume, refuses hostile
    members (absolute names, C(..), a member written through a symlink, a hard link to a member
    outside the archive, device nodes) - symlinks themselves come back exactly as they were, wherever
    they point -, takes a safety backup
    of the current contents, replaces the contents completely (dotfiles too) keeping owners, modes,
    symlinks, hard links and times - the volume root's owner and mode included - hashing every file
    on its way to the engine, then reads the volume back to check every member's type, size, mode,
    owner, time and link target (through the mount point when the module runs on the engine's host
    with the local driver, else through the engine) and every file's sha256 against the manifest.
    If that check fails, the safety backup is put back."
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.docker
  - stackops.rollback.ledger
  - stackops.rollback.ledger.lease
attributes:
  check_mode:
    support: full
    details: Reports what would be written or restored; writes nothing and stops nothing.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - O(state=backup) always writes a new archive (a backup is a point in time), so it always reports a change.
      - O(state=restore) of a volume that already matches the archive changes nothing.
      - O(state=verify) never changes anything.
options:
  name:
    description:
      - Name of the volume. Required unless O(project) is set.
    type: str
  path:
    description:
      - A host directory to back up or restore instead of a volume, such as the data directory a
        service bind-mounts. The module must run on the engine's host (a directory is on the host,
        not in the engine). Its containers are those that bind-mount it, a part of it, or a directory
        that holds it.
    type: path
  project:
    description:
      - Back up the data of this compose project - every volume labelled C(com.docker.compose.project)
        and the directories its containers bind-mount that are data (see O(project_src),
        O(data_paths)). In check mode, says what that backup would copy (RV(volumes), RV(paths),
        RV(not_backed_up), RV(bytes)) and changes nothing.
    type: str
  project_src:
    description:
      - The project directory, with O(project). A writable bind mount of a directory under it is
        data and backed up. Read-only mounts, files, sockets, system paths, the project directory
        itself (its files are the release's) and directories outside it that are not in
        O(data_paths) are not, and are listed in RV(not_backed_up) with the reason.
    type: path
  data_paths:
    description:
      - Host directories that are data wherever they are (a bind mount outside the project directory),
        with O(project). Each must exist, and be neither a system path nor a directory holding the
        project directory.
    type: list
    elements: path
    default: []
  skip_services:
    description:
      - With O(project), services whose volumes and bind mounts are not copied because their
        database is dumped online (M(stackops.rollback.database_backup)).
    type: list
    elements: str
    default: []
  state:
    description:
      - V(backup) writes an archive of the volume into O(dest); V(restore) replaces the volume's contents
        with O(archive); V(verify) checks O(archive) against its manifest.
    type: str
    choices: [backup, restore, verify]
    default: backup
  dest:
    description:
      - Directory for the archives, with O(state=backup).
    type: path
  archive:
    description:
      - The archive, with O(state=restore) and O(state=verify). Its manifest is C(<archive>.manifest.json).
    type: path
  compression:
    description:
      - V(zstd) (multi-threaded, the default where the C(zstd) binary exists), V(gzip), or V(none).
      - When not set and C(zstd) is missing, gzip is used with a warning.
    type: str
    choices: [zstd, gzip, none]
  method:
    description:
      - How a backup (and the safety backup a restore takes) reads the volume. Both make the same archive
        format and manifest; the manifest records which was used. Restores always write through the engine.
      - V(mountpoint) reads the volume's directory on this host, about twice as fast. It needs the V(local)
        driver with no driver options (with options the local driver mounts NFS, CIFS, a device or a tmpfs
        there), an engine reached through this host's Unix socket, a mount point this user can read (root),
        and no running container using the volume unless O(stop_containers) stops them. When the volume does
        not qualify the module fails, saying why, with nothing changed.
      - V(api) reads through the engine's archive endpoint (a helper container), for any engine.
      - V(auto) uses V(mountpoint) where the volume qualifies, else V(api).
    type: str
    choices: [auto, api, mountpoint]
    default: auto
  stop_containers:
    description:
      - Stop the running containers that use the volume for the copy and start them again afterwards,
        even on failure, so that the copy is consistent.
    type: bool
    default: true
  stop_timeout:
    description:
      - Seconds each container gets to stop.
    type: int
    default: 30
  keep:
    description:
      - After a backup, keep this many archives of the volume in O(dest) and delete older ones. Only
        archives with a manifest written by this module are counted and deleted; V(0) keeps all.
    type: int
    default: 0
  safety_dir:
    description:
      - Where O(state=restore) writes the safety backup of the contents it replaces. Defaults to the
        directory of O(archive).
    type: path
  create_volume:
    description:
      - With O(state=restore), create the volume when it does not exist, with the driver, options and
        labels recorded in the manifest (Compose accepts a volume only with its labels).
    type: bool
    default: false
requirements:
  - Docker SDK for Python on the managed host
  - the C(zstd) binary for zstd compression (optional)
"""

EXAMPLES = r"""
- name: Back up the database volume, consistently, keeping the last 7 archives
  stackops.rollback.volume_backup:
    name: shop_dbdata
    dest: /var/backups/shop
    keep: 7
  register: shop_backup

- name: Back up every volume of the shop's compose project
  stackops.rollback.volume_backup:
    project: shop
    dest: /var/backups/shop

- name: Check an archive against its manifest
  stackops.rollback.volume_backup:
    archive: "{{ shop_backup.archive }}"
    state: verify

- name: Restore it (a safety backup of the current contents is taken first)
  stackops.rollback.volume_backup:
    name: shop_dbdata
    archive: "{{ shop_backup.archive }}"
    state: restore

- name: Say what a backup of the project would copy - volumes and bind-mounted data directories
  stackops.rollback.volume_backup:
    project: shop
    project_src: /srv/shop
    data_paths: [/srv/uploads]
    dest: /var/backups/shop
  check_mode: true
  register: shop_data

- name: Back up a bind-mounted data directory, its containers stopped for the copy
  stackops.rollback.volume_backup:
    path: /srv/shop/pgdata
    dest: /var/backups/shop
"""

RETURN = r"""
archive:
  description: Path of the archive written, restored or verified.
  returned: success, unless O(project) is set
  type: str
manifest:
  description: Path of the archive's manifest.
  returned: success, unless O(project) is set
  type: str
sha256:
  description: sha256 of the archive file.
  returned: success, unless O(project) is set
  type: str
size:
  description: Size of the archive file, in bytes.
  returned: success, unless O(project) is set
  type: int
files:
  description: Number of regular files in the archive.
  returned: success, unless O(project) is set
  type: int
bytes:
  description:
    - Bytes of file data in the archive, uncompressed.
    - With O(project), the bytes of the project's data a backup copies or dumps (the volumes as
      the engine counts them, the directories' files) - what its backups need at most.
  returned: success
  type: int
duration:
  description: Seconds the operation took.
  returned: success
  type: float
compression:
  description: Compression of the archive.
  returned: success, unless O(project) is set
  type: str
method:
  description: How the backup read the volume, V(mountpoint) or V(api) (see O(method)).
  returned: state=backup, unless O(project) is set
  type: str
stopped_containers:
  description: Containers stopped for the copy and started again.
  returned: success
  type: list
  elements: str
pruned:
  description: Older archives deleted by O(keep).
  returned: state=backup
  type: list
  elements: str
safety_archive:
  description: The safety backup of the contents a restore replaced.
  returned: state=restore and changed
  type: str
differences:
  description: How the volume differs from the archive (first 20), with O(state=restore).
  returned: state=restore
  type: list
  elements: str
backups:
  description: One result per volume (its name in C(volume)) or directory (in C(path)), with O(project).
  returned: when O(project) is set
  type: list
  elements: dict
volumes:
  description: The project's volumes a backup copies.
  returned: with O(project)
  type: list
  elements: str
paths:
  description: The host directories a backup copies (one inside another is in the outer one's copy).
  returned: with O(project)
  type: list
  elements: str
dumped:
  description: The volumes and directories of O(skip_services), left to their database's dump.
  returned: with O(project)
  type: list
  elements: str
not_backed_up:
  description: Bind mounts a backup does not copy, each with C(source), C(services) and C(reason).
  returned: with O(project)
  type: list
  elements: dict
"""

from ansible_collections.stackops.rollback.plugins.module_utils._archive import ArchiveError
from ansible_collections.stackops.rollback.plugins.module_utils._backup import VolumeBackups
from ansible_collections.stackops.rollback.plugins.module_utils._docker import EngineError, docker_module
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import LEASE_ARGS, run_keeping_lease
from ansible_collections.stackops.rollback.plugins.module_utils._volumes import VolumeError


def main():
    argument_spec = dict(
        name=dict(type="str"),
        path=dict(type="path"),
        project=dict(type="str"),
        project_src=dict(type="path"),
        data_paths=dict(type="list", elements="path", default=[]),
        skip_services=dict(type="list", elements="str", default=[]),
        state=dict(type="str", choices=["backup", "restore", "verify"], default="backup"),
        dest=dict(type="path"),
        archive=dict(type="path"),
        compression=dict(type="str", choices=["zstd", "gzip", "none"]),
        method=dict(type="str", choices=["auto", "api", "mountpoint"], default="auto"),
        stop_containers=dict(type="bool", default=True),
        stop_timeout=dict(type="int", default=30),
        keep=dict(type="int", default=0),
        safety_dir=dict(type="path"),
        create_volume=dict(type="bool", default=False),
    )
    argument_spec.update(LEASE_ARGS)
    module, engine = docker_module(
        argument_spec,
        mutually_exclusive=[("name", "path", "project")],
        required_if=[
            ("state", "backup", ("name", "path", "project"), True),
            ("state", "restore", ("name", "path"), True),
            ("state", "restore", ("archive",)),
        ],
    )
    try:
        result = run_keeping_lease(module, VolumeBackups(module, engine).run)
    except (ArchiveError, VolumeError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(
            msg="%s (%s): no partial archive was left; the volume and its containers are as before"
            % (exc.strerror or exc, exc.filename or module.params.get("dest"))
        )
    except EngineError as exc:
        module.fail_json(msg="Docker engine error: %s; the volume and its containers are as before" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
