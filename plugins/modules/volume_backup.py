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
  - Works through the Docker Engine API only - a helper container is created (never started, no image
    pulled) to read or write the volume - so it works against any engine the SDK reaches.
  - "Backup: checks that the volume exists first (a missing volume is never created by accident),
    streams the engine's tar through a parser that records each member's type, size, sha256, mode,
    owner and link, and fails on any truncation; writes a temporary file in O(dest), fsyncs it,
    reads it back and checks it against what was parsed, and only then renames it into place beside
    its manifest. Archives and manifests are 0600."
  - "Restore: verifies the archive against its manifest before touching the volume, refuses hostile
    members (absolute paths, C(..), links that leave the volume, device nodes), takes a safety backup
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
  project:
    description:
      - Back up every volume of this compose project (volumes labelled C(com.docker.compose.project)).
    type: str
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
  description: Bytes of file data in the archive, uncompressed.
  returned: success, unless O(project) is set
  type: int
duration:
  description: Seconds the operation took.
  returned: success
  type: float
compression:
  description: Compression of the archive.
  returned: success, unless O(project) is set
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
  description: One result per volume, with O(project).
  returned: when O(project) is set
  type: list
  elements: dict
"""

import os
import platform
import time
import zlib

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.stackops.rollback.plugins.module_utils._archive import (
    TOOL,
    ArchiveError,
    ChunkReader,
    Compressor,
    archive_name,
    check_written,
    compare_members,
    compression_of,
    decompressed_chunks,
    file_sha256_beside,
    manifest_path,
    prune,
    read_members,
    rewrite_for_root,
    tree_members,
    utc_stamp,
    verify_archive,
    write_manifest,
)
from ansible_collections.stackops.rollback.plugins.module_utils._docker import (
    DOCKER_COMMON_ARGS,
    describe,
    get_client,
    is_docker_error,
)
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import fsync_dir
from ansible_collections.stackops.rollback.plugins.module_utils._volumes import (
    MOUNT,
    Helper,
    StoppedUsers,
    clear_contents,
    get_volume,
    local_mountpoint,
)


def archive_facts(archive, manifest):
    """What restore and verify report about an archive, from its manifest."""
    return {
        "archive": archive,
        "manifest": manifest_path(archive),
        "sha256": manifest["sha256"],
        "size": manifest["size"],
        "files": manifest.get("files"),
        "bytes": manifest.get("bytes"),
    }


class VolumeBackupManager:
    def __init__(self, module, client):
        self.module = module
        self.client = client
        self.params = module.params
        self.zstd = module.get_bin_path("zstd")

    # -- helpers --------------------------------------------------------------------------
    def compression(self):
        wanted = self.params["compression"]
        if wanted == "zstd" and not self.zstd:
            raise ArchiveError(
                "compression=zstd was asked for, but the zstd binary is not on the managed host; "
                "install zstd or choose gzip"
            )
        if wanted:
            return wanted
        if self.zstd:
            return "zstd"
        self.module.warn("zstd is not installed on the managed host: writing gzip archives (slower)")
        return "gzip"

    def check_dest(self, dest):
        if not dest:
            raise ArchiveError("state=backup needs dest, the directory for the archives")
        if not os.path.isdir(dest):
            if self.module.check_mode:
                return
            try:
                os.makedirs(dest, mode=0o700)
            except OSError as exc:
                raise ArchiveError("dest %s does not exist and cannot be created: %s" % (dest, exc.strerror)) from exc
        if not os.access(dest, os.W_OK | os.X_OK):
            raise ArchiveError("dest %s is not writable; choose a writable directory. Nothing was changed" % dest)

    def engine_version(self):
        try:
            return self.client.version().get("Version")
        except Exception:  # noqa: BLE001 - informational only
            return None

    # -- backup ---------------------------------------------------------------------------
    def copy_volume(self, name, attrs, dest, compression, kind="backup"):
        """Write an archive of the volume into dest (its users must be stopped already)."""
        final = os.path.join(dest, archive_name(name, compression))
        tmp = os.path.join(dest, ".%s.partial" % os.path.basename(final))
        started = time.time()
        compressor = Compressor(tmp, compression, self.zstd)
        sent = {"crc": 0}

        def write(chunk):
            compressor.write(chunk)
            if compression != "zstd":  # zstd carries its own content checksum
                sent["crc"] = zlib.crc32(chunk, sent["crc"])

        try:
            with Helper(self.client, name) as helper:
                reader = ChunkReader(helper.stream(), tee=write)
                members = read_members(reader, strict=False)
                reader.drain()
            compressor.close()
            # Read the file back while hashing it (two cores): what is on disk must decode to
            # exactly what the engine sent.
            digest, _checked, failure = file_sha256_beside(
                tmp, lambda: check_written(tmp, compression, reader.total, sent["crc"], self.zstd)
            )
            if failure:
                raise failure
            manifest = {
                "tool": TOOL,
                "kind": kind,
                "archive": os.path.basename(final),
                "compression": compression,
                "sha256": digest,
                "size": os.path.getsize(tmp),
                "created": utc_stamp(),
                "volume": {
                    "name": name,
                    "driver": attrs.get("Driver"),
                    "options": attrs.get("Options") or {},
                    "labels": attrs.get("Labels") or {},
                },
                "files": sum(1 for m in members.values() if m["type"] == "file"),
                "bytes": sum(m.get("size", 0) for m in members.values()),
                "members": members,
                "versions": {"python": platform.python_version(), "docker_engine": self.engine_version()},
            }
            write_manifest(manifest_path(final), manifest)
            os.rename(tmp, final)
        except BaseException:
            compressor.abort()
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        fsync_dir(dest)
        unsafe = sorted(
            n
            for n, m in members.items()
            if m["type"] == "symlink"
            and (
                m["link"].startswith("/")
                or os.path.normpath(os.path.join(os.path.dirname(n), m["link"])).startswith("..")
            )
        )
        if unsafe:
            self.module.warn(
                "volume %s has symlinks that point outside it (%s); a restore will refuse them"
                % (name, ", ".join(unsafe[:5]))
            )
        return {
            "archive": final,
            "manifest": manifest_path(final),
            "sha256": manifest["sha256"],
            "size": manifest["size"],
            "files": manifest["files"],
            "bytes": manifest["bytes"],
            "compression": compression,
            "duration": round(time.time() - started, 3),
        }

    def backup(self, name):
        attrs = get_volume(self.client, name)
        dest = self.params["dest"]
        self.check_dest(dest)
        compression = self.compression()
        if self.module.check_mode:
            return {
                "changed": True,
                "archive": os.path.join(dest, archive_name(name, compression)),
                "compression": compression,
                "stopped_containers": [],
                "pruned": [],
                "duration": 0.0,
            }
        started = time.time()
        with StoppedUsers(self.client, name, self.params["stop_containers"], self.params["stop_timeout"]) as stopped:
            result = self.copy_volume(name, attrs, dest, compression)
        result.update(
            changed=True,
            stopped_containers=stopped.names,
            pruned=prune(dest, name, self.params["keep"]) if self.params["keep"] else [],
            duration=round(time.time() - started, 3),
        )
        return result

    # -- restore --------------------------------------------------------------------------
    def current_members(self, name):
        with Helper(self.client, name) as helper:
            return read_members(ChunkReader(helper.stream()), strict=False)

    def restored_members(self, attrs, sent):
        """What the volume holds after a restore: every member's type, size, mode, owner, time
        and link read back (from the mount point when this host sees it, else from the engine),
        with the sha256 of each file as it was sent. The contents are not read back: they were
        hashed on their way to the engine from an archive whose sha256 was proven first."""
        mountpoint = local_mountpoint(self.client, attrs)
        if mountpoint:
            members = tree_members(mountpoint)
        else:
            with Helper(self.client, attrs["Name"]) as helper:
                members = read_members(ChunkReader(helper.stream()), strict=False, digests=False)
        for name, record in members.items():
            if record["type"] == "file":
                record["sha256"] = sent.get(name)
        return members

    def write_contents(self, attrs, archive, compression):
        """Replace the volume's contents with the archive's; return {name: sha256} of the files sent."""
        clear_contents(self.client, attrs)
        sent = {}
        with Helper(self.client, attrs["Name"], read_only=False) as helper:
            helper.extract_at_root(
                rewrite_for_root(decompressed_chunks(archive, compression, self.zstd), MOUNT.lstrip("/"), sent)
            )
        return sent

    def restore(self, name):
        archive = self.params["archive"]
        if not archive:
            raise ArchiveError("state=restore needs archive, the archive to restore")
        # Whole-file sha256 and every header before the volume is touched; file contents are
        # hashed on their way in and, with every member's metadata read back, compared after.
        manifest = verify_archive(archive, self.zstd, digests=False)
        compression = manifest.get("compression") or compression_of(archive)
        started = time.time()
        try:
            attrs = get_volume(self.client, name)
        except ArchiveError:
            if not self.params["create_volume"]:
                raise
            if self.module.check_mode:
                return {
                    "changed": True,
                    "archive": archive,
                    "differences": ["volume %s would be created" % name],
                    "stopped_containers": [],
                    "duration": 0.0,
                }
            recorded = manifest.get("volume", {})
            self.client.volumes.create(
                name=name,
                driver=recorded.get("driver") or "local",
                driver_opts=recorded.get("options") or None,
                labels=recorded.get("labels") or None,
            )
            attrs = get_volume(self.client, name)
        differences = compare_members(manifest["members"], self.current_members(name))
        result = dict(
            archive_facts(archive, manifest),
            compression=compression,
            differences=differences[:20],
            stopped_containers=[],
        )
        if not differences or self.module.check_mode:
            result.update(changed=bool(differences), duration=round(time.time() - started, 3))
            return result
        safety_dir = self.params["safety_dir"] or os.path.dirname(os.path.abspath(archive))
        self.check_dest(safety_dir)
        with StoppedUsers(self.client, name, self.params["stop_containers"], self.params["stop_timeout"]) as stopped:
            safety = self.copy_volume(name, attrs, safety_dir, compression, kind="safety")
            try:
                sent = self.write_contents(attrs, archive, compression)
                after = compare_members(manifest["members"], self.restored_members(attrs, sent))
                if after:
                    raise ArchiveError("the restored volume does not match the archive: %s" % "; ".join(after[:5]))
            except Exception as exc:
                # Put back what was there, from the safety copy just written and verified.
                self.write_contents(attrs, safety["archive"], compression)
                raise ArchiveError(
                    "restore of volume %s from %s failed (%s); the volume was put back as it was from the safety "
                    "backup %s" % (name, archive, describe(exc), safety["archive"])
                ) from exc
        result.update(
            changed=True,
            safety_archive=safety["archive"],
            stopped_containers=stopped.names,
            duration=round(time.time() - started, 3),
        )
        return result

    def verify(self):
        archive = self.params["archive"]
        if not archive:
            raise ArchiveError("state=verify needs archive, the archive to check")
        started = time.time()
        manifest = verify_archive(archive, self.zstd)
        return dict(
            archive_facts(archive, manifest),
            changed=False,
            compression=manifest.get("compression"),
            stopped_containers=[],
            duration=round(time.time() - started, 3),
        )

    def run(self):
        p = self.params
        if p["state"] == "verify":
            return self.verify()
        if p["project"]:
            if p["state"] != "backup":
                raise ArchiveError("project works with state=backup; restore volumes one by one with name")
            volumes = sorted(
                v.name
                for v in self.client.volumes.list(filters={"label": "com.docker.compose.project=%s" % p["project"]})
            )
            if not volumes:
                raise ArchiveError("compose project %s has no volume on this engine; check the name" % p["project"])
            backups = [dict(self.backup(name), volume=name) for name in volumes]
            return {
                "changed": True,
                "backups": backups,
                "duration": sum(b["duration"] for b in backups),
                "stopped_containers": sorted({c for b in backups for c in b["stopped_containers"]}),
            }
        return self.backup(p["name"]) if p["state"] == "backup" else self.restore(p["name"])


def main():
    argument_spec = dict(
        name=dict(type="str"),
        project=dict(type="str"),
        state=dict(type="str", choices=["backup", "restore", "verify"], default="backup"),
        dest=dict(type="path"),
        archive=dict(type="path"),
        compression=dict(type="str", choices=["zstd", "gzip", "none"]),
        stop_containers=dict(type="bool", default=True),
        stop_timeout=dict(type="int", default=30),
        keep=dict(type="int", default=0),
        safety_dir=dict(type="path"),
        create_volume=dict(type="bool", default=False),
    )
    argument_spec.update(DOCKER_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("name", "project")],
        required_if=[("state", "backup", ("name", "project"), True), ("state", "restore", ("name", "archive"))],
        supports_check_mode=True,
    )
    client = None if module.params["state"] == "verify" else get_client(module)
    try:
        result = VolumeBackupManager(module, client).run()
    except ArchiveError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(
            msg="%s (%s): no partial archive was left; the volume and its containers are as before"
            % (exc.strerror or exc, exc.filename or module.params.get("dest"))
        )
    except Exception as exc:
        if not is_docker_error(exc):
            raise
        module.fail_json(msg="Docker engine error: %s; the volume and its containers are as before" % describe(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
