# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Docker volumes through the engine gateway only: a helper container that is created but never
started (so no image is pulled and nothing runs), its archive endpoints, and the containers that
use a volume. Used by the volume backups (_backup.py); the archive format is _archive.py's."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
import uuid

from ansible_collections.stackops.rollback.plugins.module_utils._docker import EngineError, within

MOUNT = "/stackops-volume"
HELPER_LABEL = "org.stackops.rollback.helper"


class VolumeError(Exception):
    """A volume cannot be read, emptied or given back to its containers; says what is left as it was."""


# Host directories whose bind mounts are the system's, never an application's data.
SYSTEM_PATHS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/run",
)


def is_system_path(path):
    """A host directory that is the system's (or the root), never an application's data."""
    return path == "/" or any(within(path, system) for system in SYSTEM_PATHS)


def is_path(source):
    """A backup's source is a host directory (a bind mount's) when absolute, else a volume's name:
    a volume's name never starts with '/'."""
    return source.startswith("/")


def data_sources(containers, project_dir, volumes, declared=(), dumped_services=(), is_dir=os.path.isdir):
    """What a backup of a compose project copies, and what it leaves out and why.

    `containers`: [{"service": name, "mounts": the engine's Mounts}]; `volumes`: the project's
    named volumes; `declared`: host directories the operator declared as data; the services in
    `dumped_services` are dumped online, so their mounts are not copied. A writable bind mount of
    a directory under the project directory is data; one elsewhere only when declared. Returns
    {"volumes": [...], "paths": [...], "dumped": [volumes and directories of the dumped services],
    "not_backed_up": [{"source", "services", "reason"}]}.
    """
    project_dir = os.path.normpath(project_dir) if project_dir else None
    declared = [os.path.normpath(path) for path in declared]
    dumped, skipped, paths = set(), {}, set(declared)
    for container in containers:
        service = container.get("service") or "?"
        for mount in container.get("mounts") or []:
            if mount.get("Type") in ("volume", "bind") and service in dumped_services:
                dumped.add(
                    mount.get("Name") if mount.get("Type") == "volume" else os.path.normpath(mount.get("Source"))
                )
            if mount.get("Type") != "bind":
                continue
            source = os.path.normpath(mount.get("Source") or "/")
            reason = bind_refusal(source, mount, service, project_dir, declared, dumped_services, is_dir)
            if reason is None:
                paths.add(source)
            elif reason:
                entry = skipped.setdefault(source, {"source": source, "services": [], "reason": reason})
                entry["services"] = sorted(set(entry["services"]) | {service})
    # A directory inside another one copied is in that copy already.
    outer = sorted(p for p in paths if not any(other != p and within(p, other) for other in paths))
    return {
        "volumes": sorted(set(volumes) - dumped),
        "dumped": sorted(dumped),
        "paths": outer,
        "not_backed_up": [skipped[s] for s in sorted(skipped) if not any(within(s, p) for p in outer)],
    }


def bind_refusal(source, mount, service, project_dir, declared, dumped_services, is_dir):
    """Why a bind mount is not copied ('' when a declared directory covers it), None when it is."""
    if any(within(source, path) for path in declared):
        return ""
    if service in dumped_services:
        return "dumped online with database service %s" % service
    if is_system_path(source):
        return "a system path"
    if not is_dir(source):
        return "a file or socket, not a directory"
    if not mount.get("RW", True):
        return "read-only"
    if project_dir is None or not within(source, project_dir):
        return "outside the project directory; declare it as data (data_paths) to back it up"
    if source == project_dir:
        return "the project directory itself (its files are the release's)"
    return None


def missing_volume(name):
    return VolumeError(
        "volume %s does not exist on this engine; check the name (docker volume ls). Nothing was created "
        "or changed" % name
    )


def existing_volume(engine, name):
    """The volume's attributes, or a host directory's as a volume of the local driver would have
    them; an error when it does not exist (nothing is created)."""
    if is_path(name):
        if not engine.is_local():
            raise VolumeError(
                "directory %s is on the engine's host, and the engine is not reached through this host's Unix "
                "socket: run this on the engine's host. Nothing was changed" % name
            )
        if os.path.islink(name) or not os.path.isdir(name):
            raise VolumeError("directory %s does not exist on this host (or is a symlink); nothing was changed" % name)
        return {"Name": name, "Driver": "local", "Mountpoint": name, "Options": {}, "Labels": {}, "Path": True}
    attrs = engine.volume(name)
    if attrs is None:
        raise missing_volume(name)
    return attrs


def archive_key(source):
    """The name archives of a source are filed under: a volume's name, or for a directory its base
    name and a hash of its path (two directories of one name stay apart)."""
    if not is_path(source):
        return source
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(source.rstrip("/")) or "root")
    return "dir-%s-%s" % (base, hashlib.sha256(source.encode("utf-8")).hexdigest()[:10])


def describe_source(source):
    return ("directory %s" if is_path(source) else "volume %s") % source


def users(engine, source):
    """Containers (all states) that mount the volume, or bind-mount the directory (or a part of it)."""
    return engine.containers_binding(source) if is_path(source) else engine.containers_using(source)


def pick_image(engine, name):
    """A local image to create the helper from: one a user of the volume runs, else any.

    The helper is created and never started, so any image will do; none is ever pulled.
    """
    for container in users(engine, name):
        return container.attrs["Image"]
    images = engine.local_images()
    if not images:
        raise VolumeError(
            "no image on this engine to create a helper container from (none is pulled); load any image, then retry"
        )
    return min(images, key=lambda image: image[1])[0]


class Helper:
    """A created (never started) container that mounts the volume at MOUNT."""

    def __init__(self, engine, volume, read_only=True):
        self.engine = engine
        self.container = engine.create_container(
            pick_image(engine, volume),
            command=["/stackops-never-started"],
            entrypoint=[],
            volumes={volume: {"bind": MOUNT, "mode": "ro" if read_only else "rw"}},
            network_disabled=True,
            labels={HELPER_LABEL: "volume_backup"},
            name="stackops-volume-helper-%s" % uuid.uuid4().hex[:12],
        )

    def stream(self, chunk_size=256 * 1024):
        """The volume's contents as tar chunks (names './...', the root as '.')."""
        return self.engine.get_archive(self.container, MOUNT + "/.", chunk_size)

    def extract_at_root(self, chunks):
        """Upload a tar whose names start with the mount point's name, extracted at '/', owners kept."""
        self.engine.put_archive_stream(self.container, "/", chunks, copy_owners=True)

    def remove(self):
        with contextlib.suppress(EngineError):  # a helper that is already gone is fine
            self.engine.remove_container(self.container)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def local_mountpoint(engine, volume_attrs):
    """The volume's directory when this process sees the engine's own files, else None.

    Only for the local driver, an engine reached through its local Unix socket (an engine over
    TCP or SSH is another machine, where the same path would be another directory), and a
    mount point that exists here.
    """
    mountpoint = volume_attrs.get("Mountpoint")
    if volume_attrs.get("Driver") == "local" and mountpoint and engine.is_local() and os.path.isdir(mountpoint):
        return mountpoint
    return None


def mountpoint_refusal(engine, volume_attrs):
    """Why a backup may not read this volume's mount point (None when it may).

    Only a plain directory of the local driver with no driver options (with options the local
    driver mounts NFS, CIFS, a device or a tmpfs there), of an engine reached through this
    host's Unix socket, readable by this process. Consistency is the caller's: nothing may write
    into the volume meanwhile.
    """
    name = volume_attrs.get("Name")
    if volume_attrs.get("Driver") != "local":
        return "volume %s uses the %s driver, not local" % (name, volume_attrs.get("Driver"))
    if volume_attrs.get("Options"):
        return (
            "volume %s has driver options (%s): the local driver mounts something there (NFS, CIFS, a device, "
            "tmpfs)" % (name, ", ".join(sorted(volume_attrs["Options"])))
        )
    if not engine.is_local():
        return "the engine is not reached through this host's Unix socket: its volumes are on another machine"
    mountpoint = volume_attrs.get("Mountpoint")
    if not mountpoint or os.path.islink(mountpoint) or not os.path.isdir(mountpoint):
        return "the mount point of volume %s (%s) is not a directory on this host" % (name, mountpoint)
    if not os.access(mountpoint, os.R_OK | os.X_OK):
        return "this user cannot read the mount point of volume %s (%s); run as root (become: true)" % (
            name,
            mountpoint,
        )
    return None


def clear_contents(engine, volume_attrs):
    """Remove everything inside a volume (dotfiles too), keeping the volume and its root.

    Through the volume's mount point when this host can reach it (local_mountpoint); otherwise
    with `find -delete` in a short-lived container from a local image that has find.
    """
    mountpoint = local_mountpoint(engine, volume_attrs)
    if mountpoint:
        for entry in os.listdir(mountpoint):
            path = os.path.join(mountpoint, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        return "mountpoint"
    name = volume_attrs["Name"]
    tried = []
    candidates = [c.attrs["Image"] for c in users(engine, name)] + [i for i, _size in engine.local_images()]
    for image in list(dict.fromkeys(candidates))[:5]:
        try:
            engine.run_container(
                image,
                ["find", MOUNT, "-mindepth", "1", "-delete"],
                entrypoint=[],
                volumes={name: {"bind": MOUNT, "mode": "rw"}},
                network_disabled=True,
                labels={HELPER_LABEL: "volume_backup"},
            )
            return "find in a helper container"
        except EngineError as exc:  # try the next image
            tried.append("%s (%s)" % (image[:19], str(exc).splitlines()[0][:80]))
    raise VolumeError(
        "cannot empty volume %s before the restore: its mount point is not on this host and no local image "
        "could run find (tried %s); nothing was changed" % (name, "; ".join(tried) or "none")
    )


class StoppedUsers:
    """Stop the running containers that use a volume; start them again on exit, even on failure."""

    def __init__(self, engine, volume, enabled, timeout=30):
        self.engine = engine
        self.volume = volume
        self.enabled = enabled
        self.timeout = timeout
        self.stopped = []

    def __enter__(self):
        if self.enabled:
            for container in users(self.engine, self.volume):
                if container.status == "running" and not (container.labels or {}).get(HELPER_LABEL):
                    self.engine.stop(container, self.timeout)
                    self.stopped.append(container)
        return self

    def __exit__(self, *exc):
        errors = []
        for container in reversed(self.stopped):
            try:
                self.engine.start(container)
            except EngineError as err:  # start the others, then report
                errors.append("%s: %s" % (container.name, err))
        if not errors:
            errors = self.wait_until_serving()
        if errors and exc[0] is None:
            raise VolumeError("could not start again container(s) %s" % "; ".join(errors))

    def wait_until_serving(self, poll=0.2):
        """Wait for the restarted containers to run (and pass their health check, if they have one).

        Returning before a database is healthy again would hand the next step a stack whose
        dependants cannot start yet: a rollback would count that wait as downtime.
        """
        deadline = time.monotonic() + max(60, self.timeout)
        pending = list(self.stopped)
        while pending:
            for container in list(pending):
                state = self.engine.refresh(container).get("State") or {}
                health = (state.get("Health") or {}).get("Status")
                if state.get("Status") == "running" and health in (None, "healthy"):
                    pending.remove(container)
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(poll)
        return ["%s: started again but not healthy within %d s" % (c.name, max(60, self.timeout)) for c in pending]

    @property
    def names(self):
        return [c.name for c in self.stopped]
