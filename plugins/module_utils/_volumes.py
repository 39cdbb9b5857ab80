# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Docker volumes through the Engine API only: a helper container that is created but never
started (so no image is pulled and nothing runs), its archive endpoints, and the containers that
use a volume. Used by volume_backup; the archive format is _archive.py's."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid

from ansible_collections.stackops.rollback.plugins.module_utils._archive import ArchiveError

MOUNT = "/stackops-volume"
HELPER_LABEL = "org.stackops.rollback.helper"


def get_volume(client, name):
    """The volume's attributes; ArchiveError when it does not exist (nothing is created)."""
    from ansible_collections.stackops.rollback.plugins.module_utils._docker import is_not_found

    try:
        return client.volumes.get(name).attrs
    except Exception as exc:
        if is_not_found(exc):
            raise ArchiveError(
                "volume %s does not exist on this engine; check the name (docker volume ls). Nothing was created "
                "or changed" % name
            ) from exc
        raise


def users(client, name):
    """Containers (all states) that mount the volume."""
    return client.containers.list(all=True, filters={"volume": name})


def pick_image(client, name):
    """A local image to create the helper from: one a user of the volume runs, else any.

    The helper is created and never started, so any image will do; none is ever pulled.
    """
    for container in users(client, name):
        return container.attrs["Image"]
    images = client.images.list()
    if not images:
        raise ArchiveError(
            "no image on this engine to create a helper container from (none is pulled); load any image, then retry"
        )
    return min(images, key=lambda i: i.attrs.get("Size", 0)).id


def coalesce(pieces, size=1024 * 1024):
    """Join small pieces (tar headers, padding) into chunks of about size bytes.

    Every piece of a generator body becomes one chunk of an HTTP chunked upload: sent one by
    one, the headers and padding of 20,000 small files cost more than their contents.
    """
    batch, length = [], 0
    for piece in pieces:
        batch.append(piece)
        length += len(piece)
        if length >= size:
            yield b"".join(batch)
            batch, length = [], 0
    if batch:
        yield b"".join(batch)


class Helper:
    """A created (never started) container that mounts the volume at MOUNT."""

    def __init__(self, client, volume, read_only=True):
        self.client = client
        self.container = client.containers.create(
            pick_image(client, volume),
            command=["/stackops-never-started"],
            entrypoint=[],
            volumes={volume: {"bind": MOUNT, "mode": "ro" if read_only else "rw"}},
            network_disabled=True,
            labels={HELPER_LABEL: "volume_backup"},
            name="stackops-volume-helper-%s" % uuid.uuid4().hex[:12],
        )

    def stream(self, chunk_size=256 * 1024):
        """The volume's contents as tar chunks (names './...', the root as '.')."""
        chunks, _stat = self.container.get_archive(MOUNT + "/.", chunk_size=chunk_size)
        return chunks

    def extract_at_root(self, chunks):
        """PUT a tar whose names start with the mount point's name, extracted at '/'.

        copyUIDGID keeps the owners of the archive (the Engine otherwise maps them to root).
        """
        api = self.client.api
        response = api._put(
            api._url("/containers/{0}/archive", self.container.id),
            params={"path": "/", "copyUIDGID": "1"},
            data=coalesce(chunks),
        )
        api._raise_for_status(response)

    def remove(self):
        with contextlib.suppress(Exception):  # a helper that is already gone is fine
            self.container.remove(force=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def local_mountpoint(client, volume_attrs):
    """The volume's directory when this process sees the engine's own files, else None.

    Only for the local driver, an engine reached through its local Unix socket (an engine over
    TCP or SSH is another machine, where the same path would be another directory), and a
    mount point that exists here.
    """
    mountpoint = volume_attrs.get("Mountpoint")
    on_this_host = getattr(client.api, "base_url", "").startswith("http+docker://localhost")
    if volume_attrs.get("Driver") == "local" and on_this_host and mountpoint and os.path.isdir(mountpoint):
        return mountpoint
    return None


def clear_contents(client, volume_attrs):
    """Remove everything inside a volume (dotfiles too), keeping the volume and its root.

    Through the volume's mount point when this host can reach it (local_mountpoint); otherwise
    with `find -delete` in a short-lived container from a local image that has find.
    """
    mountpoint = local_mountpoint(client, volume_attrs)
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
    candidates = [c.attrs["Image"] for c in users(client, name)] + [i.id for i in client.images.list()]
    for image in list(dict.fromkeys(candidates))[:5]:
        try:
            client.containers.run(
                image,
                ["find", MOUNT, "-mindepth", "1", "-delete"],
                entrypoint=[],
                volumes={name: {"bind": MOUNT, "mode": "rw"}},
                network_disabled=True,
                remove=True,
                labels={HELPER_LABEL: "volume_backup"},
            )
            return "find in a helper container"
        except Exception as exc:  # noqa: BLE001 - try the next image
            tried.append("%s (%s)" % (image[:19], str(exc).splitlines()[0][:80]))
    raise ArchiveError(
        "cannot empty volume %s before the restore: its mount point is not on this host and no local image "
        "could run find (tried %s); nothing was changed" % (name, "; ".join(tried) or "none")
    )


class StoppedUsers:
    """Stop the running containers that use a volume; start them again on exit, even on failure."""

    def __init__(self, client, volume, enabled, timeout=30):
        self.client = client
        self.volume = volume
        self.enabled = enabled
        self.timeout = timeout
        self.stopped = []

    def __enter__(self):
        if self.enabled:
            for container in users(self.client, self.volume):
                if container.status == "running" and not (container.labels or {}).get(HELPER_LABEL):
                    container.stop(timeout=self.timeout)
                    self.stopped.append(container)
        return self

    def __exit__(self, *exc):
        errors = []
        for container in reversed(self.stopped):
            try:
                container.start()
            except Exception as err:  # noqa: BLE001 - start the others, then report
                errors.append("%s: %s" % (container.name, err))
        if not errors:
            errors = self.wait_until_serving()
        if errors and exc[0] is None:
            raise ArchiveError("could not start again container(s) %s" % "; ".join(errors))

    def wait_until_serving(self, poll=0.2):
        """Wait for the restarted containers to run (and pass their health check, if they have one).

        Returning before a database is healthy again would hand the next step a stack whose
        dependants cannot start yet: a rollback would count that wait as downtime.
        """
        deadline = time.monotonic() + max(60, self.timeout)
        pending = list(self.stopped)
        while pending:
            for container in list(pending):
                container.reload()
                state = container.attrs.get("State") or {}
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
