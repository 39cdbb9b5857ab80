# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Volume backups as stackops.rollback.volume_backup makes them: a verified archive of a volume
copied at rest, a restore that checks the archive before the volume is touched and keeps a
safety copy of what it replaces, and the check of an archive against its manifest. The volume
plumbing is _volumes.py's, the archive format _archive.py's, the engine _docker.py's.
"""

from __future__ import annotations

import contextlib
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
from ansible_collections.stackops.rollback.plugins.module_utils._docker import SERVICE_LABEL, describe, within
from ansible_collections.stackops.rollback.plugins.module_utils._streams import coalesce, prefetched
from ansible_collections.stackops.rollback.plugins.module_utils._volumes import (
    MOUNT,
    Helper,
    StoppedUsers,
    archive_key,
    clear_contents,
    data_sources,
    describe_source,
    existing_volume,
    is_path,
    is_system_path,
    local_mountpoint,
    missing_volume,
    mountpoint_refusal,
    users,
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
            running = [c.name for c in users(self.engine, attrs["Name"]) if c.status == "running"]
            if running:
                refusal = "container(s) %s use %s and stop_containers is false, so the copy would not be consistent" % (
                    ", ".join(sorted(running)),
                    describe_source(attrs["Name"]),
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
        with ArchiveWriter(
            os.path.join(dest, archive_name(archive_key(name), compression)), compression, self.zstd
        ) as writer:
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
                        "directory": bool(attrs.get("Path")),
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
                "archive": os.path.join(dest, archive_name(archive_key(name), compression)),
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
            pruned=self.prune(dest, name),
            duration=round(time.time() - started, 3),
        )
        return result

    def prune(self, dest, name):
        if not self.params["keep"]:
            return []
        key = archive_key(name)
        return prune(dest, key, self.params["keep"], owner=lambda m: archive_key(m.get("volume", {}).get("name") or ""))

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
        attrs = existing_volume(self.engine, name) if is_path(name) else self.engine.volume(name)
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
                    "restore of %s from %s failed (%s); it was put back as it was from the safety "
                    "backup %s" % (describe_source(name), archive, describe(exc), safety["archive"])
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

    # -- a project's data -----------------------------------------------------------------
    def declared_paths(self):
        """The directories declared as data, checked: each an existing directory of this host, none
        a system path or a directory that holds the project's own files."""
        project_dir = os.path.abspath(self.params["project_src"]) if self.params["project_src"] else None
        checked = []
        for given in self.params["data_paths"] or []:
            path = os.path.normpath(given)
            if not os.path.isabs(path):
                raise ArchiveError("data_paths: %s is not an absolute path; nothing was changed" % path)
            if is_system_path(path):
                raise ArchiveError(
                    "data_paths: %s is a system path, not an application's data; nothing was changed" % path
                )
            if project_dir and within(project_dir, path):
                raise ArchiveError(
                    "data_paths: %s holds the project directory %s, whose files are the release's; declare the "
                    "data directories inside it instead. Nothing was changed" % (path, project_dir)
                )
            existing_volume(self.engine, path)
            checked.append(path)
        return checked

    def project_data(self):
        """The project's data as a backup copies it (data_sources), with its size on this host."""
        p = self.params
        containers = [
            {"service": (c.labels or {}).get(SERVICE_LABEL), "mounts": c.attrs.get("Mounts")}
            for c in self.engine.project_containers(p["project"])
        ]
        data = data_sources(
            containers,
            os.path.abspath(p["project_src"]) if p["project_src"] else None,
            self.engine.project_volumes(p["project"]),
            self.declared_paths(),
            p["skip_services"] or [],
        )
        if data["paths"] and not self.engine.is_local():
            # The directories are on the engine's machine, not here: named, never silently skipped.
            data["not_backed_up"] += [
                {
                    "source": path,
                    "services": [],
                    "reason": "the engine is not on this host, so its directories cannot be read",
                }
                for path in data["paths"]
            ]
            data["paths"] = []
        # What the backups need at most: the copies, and the dumps (no bigger than their data).
        measured = data["volumes"] + data["paths"] + data["dumped"]
        sizes = self.engine.volume_sizes() if any(not is_path(s) for s in measured) else {}
        data["bytes"] = sum(tree_bytes(s) if is_path(s) else max(0, sizes.get(s, 0)) for s in measured)
        return data

    def run(self):
        p = self.params
        if p["state"] == "verify":
            return self.verify()
        if p["project"]:
            if p["state"] != "backup":
                raise ArchiveError("project works with state=backup; restore volumes one by one with name")
            data = self.project_data()
            if not data["volumes"] + data["paths"] + data["dumped"] and not self.engine.project_containers(
                p["project"]
            ):
                raise ArchiveError(
                    "compose project %s has no container and no volume on this engine; check the name" % p["project"]
                )
            # In check mode, what the backup would copy: the roles' plans read it.
            backups = [dict(self.backup(name), volume=name) for name in data["volumes"]]
            backups += [dict(self.backup(path), path=path) for path in data["paths"]]
            return dict(
                data,
                changed=bool(backups),
                backups=backups,
                duration=sum(b["duration"] for b in backups),
                stopped_containers=sorted({c for b in backups for c in b["stopped_containers"]}),
            )
        source = p["name"] or p["path"]
        return self.backup(source) if p["state"] == "backup" else self.restore(source)


def tree_bytes(root):
    """Bytes of the files under a directory (links not followed)."""
    total = 0
    for path, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(path, name)).st_size
    return total
