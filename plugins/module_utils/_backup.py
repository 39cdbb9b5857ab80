# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Volume backups as stackops.rollback.volume_backup makes them: a verified archive of a volume
copied at rest, a restore that checks the archive before the volume is touched and keeps a
safety copy of what it replaces, and the check of an archive against its manifest. The volume
plumbing is _volumes.py's, the archive format _archive.py's, the engine _docker.py's.
"""

from __future__ import annotations

import os
import platform
import time

from ansible_collections.stackops.rollback.plugins.module_utils._archive import (
    ArchiveError,
    ArchiveWriter,
    ChunkReader,
    archive_name,
    choose_compression,
    compare_members,
    compression_of,
    decompressed_chunks,
    manifest_path,
    prepare_dir,
    prune,
    read_members,
    rewrite_for_root,
    tree_members,
    tree_tar,
    utc_stamp,
    verify_archive,
)
from ansible_collections.stackops.rollback.plugins.module_utils._docker import describe
from ansible_collections.stackops.rollback.plugins.module_utils._streams import coalesce, prefetched
from ansible_collections.stackops.rollback.plugins.module_utils._volumes import (
    MOUNT,
    Helper,
    StoppedUsers,
    clear_contents,
    existing_volume,
    local_mountpoint,
    missing_volume,
    mountpoint_refusal,
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


class VolumeBackups:
    """Backup, restore and verify of volumes, as volume_backup does them."""

    def __init__(self, module, engine):
        self.module = module
        self.engine = engine
        self.params = module.params
        self.zstd = module.get_bin_path("zstd")

    # -- helpers --------------------------------------------------------------------------
    def compression(self):
        return choose_compression(self.module, self.params["compression"], self.zstd)

    def method(self, attrs):
        """How the backup reads the volume: 'mountpoint' (its directory on this host, the fast
        path) where that is as safe as the engine's own archive, else 'api' (the engine's archive
        endpoint). Decided before anything is stopped; method=mountpoint that does not qualify
        fails here, with nothing changed."""
        wanted = self.params["method"]
        if wanted == "api":
            return "api"
        refusal = mountpoint_refusal(self.engine, attrs)
        if refusal is None and not self.params["stop_containers"]:
            running = [c.name for c in self.engine.containers_using(attrs["Name"]) if c.status == "running"]
            if running:
                refusal = (
                    "container(s) %s use volume %s and stop_containers is false, so the copy would not be "
                    "consistent" % (", ".join(sorted(running)), attrs["Name"])
                )
        if refusal is None:
            return "mountpoint"
        if wanted == "mountpoint":
            raise ArchiveError(
                "method=mountpoint cannot be used: %s. Use method=auto (or api) to copy through the engine; "
                "nothing was changed" % refusal
            )
        return "api"

    # -- backup ---------------------------------------------------------------------------
    def copy_volume(self, name, attrs, dest, compression, kind="backup", method="api"):
        """Write an archive of the volume into dest (its users must be stopped already), read
        through the engine (method 'api') or from its mount point ('mountpoint')."""
        started = time.time()
        with ArchiveWriter(os.path.join(dest, archive_name(name, compression)), compression, self.zstd) as writer:
            if method == "mountpoint":
                members = {}
                for chunk in coalesce(tree_tar(attrs["Mountpoint"], members)):
                    writer.write(chunk)
            else:
                with Helper(self.engine, name) as helper:
                    reader = ChunkReader(helper.stream(), tee=writer.write)
                    members = read_members(reader, strict=False)
                    reader.drain()
            manifest = writer.commit(
                {
                    "kind": kind,
                    "method": method,
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
                    "versions": {"python": platform.python_version(), "docker_engine": self.engine.version()},
                }
            )
        return {
            "archive": writer.final,
            "manifest": manifest_path(writer.final),
            "sha256": manifest["sha256"],
            "size": manifest["size"],
            "files": manifest["files"],
            "bytes": manifest["bytes"],
            "compression": compression,
            "method": method,
            "duration": round(time.time() - started, 3),
        }

    def backup(self, name):
        attrs = existing_volume(self.engine, name)
        method = self.method(attrs)
        dest = self.params["dest"]
        prepare_dir(self.module, dest, "dest", "the archives")
        compression = self.compression()
        if self.module.check_mode:
            return {
                "changed": True,
                "archive": os.path.join(dest, archive_name(name, compression)),
                "compression": compression,
                "method": method,
                "stopped_containers": [],
                "pruned": [],
                "duration": 0.0,
            }
        started = time.time()
        with StoppedUsers(self.engine, name, self.params["stop_containers"], self.params["stop_timeout"]) as stopped:
            result = self.copy_volume(name, attrs, dest, compression, method=method)
        result.update(
            changed=True,
            stopped_containers=stopped.names,
            pruned=prune(dest, name, self.params["keep"]) if self.params["keep"] else [],
            duration=round(time.time() - started, 3),
        )
        return result

    # -- restore --------------------------------------------------------------------------
    def current_members(self, name):
        with Helper(self.engine, name) as helper:
            return read_members(ChunkReader(helper.stream()), strict=False)

    def restored_members(self, attrs, sent):
        """What the volume holds after a restore: every member's type, size, mode, owner, time
        and link read back (from the mount point when this host sees it, else from the engine),
        with the sha256 of each file as it was sent. The contents are not read back: they were
        hashed on their way to the engine from an archive whose sha256 was proven first."""
        mountpoint = local_mountpoint(self.engine, attrs)
        if mountpoint:
            members = tree_members(mountpoint)
        else:
            with Helper(self.engine, attrs["Name"]) as helper:
                members = read_members(ChunkReader(helper.stream()), strict=False, digests=False)
        for name, record in members.items():
            if record["type"] == "file":
                record["sha256"] = sent.get(name)
        return members

    def write_contents(self, attrs, archive, compression):
        """Replace the volume's contents with the archive's; return {name: sha256} of the files sent."""
        clear_contents(self.engine, attrs)
        sent = {}
        with Helper(self.engine, attrs["Name"], read_only=False) as helper:
            helper.extract_at_root(
                prefetched(
                    coalesce(
                        rewrite_for_root(decompressed_chunks(archive, compression, self.zstd), MOUNT.lstrip("/"), sent)
                    )
                )
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
        attrs = self.engine.volume(name)
        if attrs is None:
            if not self.params["create_volume"]:
                raise missing_volume(name)
            if self.module.check_mode:
                return {
                    "changed": True,
                    "archive": archive,
                    "differences": ["volume %s would be created" % name],
                    "stopped_containers": [],
                    "duration": 0.0,
                }
            recorded = manifest.get("volume", {})
            attrs = self.engine.create_volume(
                name,
                driver=recorded.get("driver") or "local",
                options=recorded.get("options") or None,
                labels=recorded.get("labels") or None,
            )
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
        prepare_dir(self.module, safety_dir, "safety_dir", "the safety copies")
        method = self.method(attrs)
        with StoppedUsers(self.engine, name, self.params["stop_containers"], self.params["stop_timeout"]) as stopped:
            safety = self.copy_volume(name, attrs, safety_dir, compression, kind="safety", method=method)
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
            volumes = self.engine.project_volumes(p["project"])
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
