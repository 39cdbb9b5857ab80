# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Volume archives: stream, check, compress, verify, manifest. The one copy of this code.

A backup streams the engine's tar of a volume (`GET /containers/{id}/archive`) through a parser
that records every member (type, size, sha256, mode, owner, link) and, byte for byte, into the
compressor writing a temporary file. The file is then read back and checked against what was
parsed, and only then renamed into place beside its manifest. Nothing here holds a whole file
or archive in memory.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import os
import posixpath
import re
import subprocess
import tarfile
import zlib

from ansible_collections.stackops.rollback.plugins.module_utils._ledger import atomic_write

TOOL = "stackops.rollback.volume_backup"
MANIFEST_SUFFIX = ".manifest.json"
EXTENSIONS = {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}
CHUNK = 1024 * 1024
# tarfile's stream reader copies its whole buffer on every read, headers included: a small
# buffer keeps that cheap while file contents still move in CHUNK pieces.
STREAM_BUFSIZE = 64 * 1024
ROOT = "."


class ArchiveError(Exception):
    """Bad or unsafe archive, or a failed copy; the message names the thing and what to do."""


def utc_stamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def archive_name(volume, compression, stamp=None):
    return "%s-%s%s" % (volume, stamp or utc_stamp(), EXTENSIONS[compression])


def archive_pattern(volume):
    return re.compile(r"^%s-\d{8}T\d{12}Z\.tar(\.zst|\.gz)?$" % re.escape(volume))


def compression_of(path):
    if path.endswith(".tar.zst"):
        return "zstd"
    if path.endswith(".tar.gz"):
        return "gzip"
    if path.endswith(".tar"):
        return "none"
    raise ArchiveError("%s is not a volume archive (.tar, .tar.gz or .tar.zst)" % path)


# -- member checks ------------------------------------------------------------------------


def normalize(name):
    """A member name relative to the volume root ('.' for the root)."""
    if name in (".", "./"):
        return ROOT
    return posixpath.normpath(name[2:] if name.startswith("./") else name)


def hostile_reason(info, known):
    """Why a member may not be restored, or None. `known` holds names seen before it."""
    raw = info.name
    if raw.startswith("/") or (info.linkname.startswith("/") and info.islnk()):
        return "absolute path"
    name = normalize(raw)
    if name == ".." or name.startswith("../") or "/../" in "/%s/" % name:
        return "path leaves the volume ('..')"
    if info.ischr() or info.isblk() or info.isfifo() or info.isdev():
        return "device node or FIFO"
    if info.issym():
        target = info.linkname
        if target.startswith("/"):
            return "symlink to an absolute path (%s)" % target
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if resolved == ".." or resolved.startswith("../"):
            return "symlink leaves the volume (%s)" % target
    if info.islnk():
        target = normalize(info.linkname)
        if target == ".." or target.startswith("../"):
            return "hard link leaves the volume (%s)" % info.linkname
        if target not in known:
            return "hard link to a member that is not in the archive (%s)" % info.linkname
    if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
        return "unsupported member type %r" % info.type
    return None


def member_record(info, digest=None):
    kind = "dir" if info.isdir() else "file" if info.isreg() else "symlink" if info.issym() else "hardlink"
    record = {
        "type": kind,
        "mode": "%04o" % (info.mode & 0o7777),
        "uid": info.uid,
        "gid": info.gid,
        "mtime": int(info.mtime),
    }
    if info.isreg():
        record["size"] = info.size
        record["sha256"] = digest
    if info.issym() or info.islnk():
        record["link"] = normalize(info.linkname) if info.islnk() else info.linkname
    return record


def member_blocks(tar, info):
    """The contents of a regular member of a streamed tar, CHUNK by CHUNK; raise when cut short."""
    src = tar.extractfile(info)
    remaining = info.size
    while remaining:
        block = src.read(min(CHUNK, remaining))
        if not block:
            raise ArchiveError("member %r is truncated" % info.name)
        remaining -= len(block)
        yield block


def read_members(reader, strict=True, on_member=None, digests=True):
    """Parse a tar stream (an IterReader); return {name: record} for every member.

    Raises ArchiveError on a truncated or malformed stream, or (strict) on a hostile member.
    Python's tarfile takes a stream cut inside a header for a shorter, complete archive: the
    end-of-archive marker (two zero blocks where parsing stopped) is required here. With
    digests=False file contents are skipped, not hashed (their records carry no sha256).
    """
    members = {}
    try:
        with tarfile.open(fileobj=reader, mode="r|", bufsize=STREAM_BUFSIZE) as tar:
            for info in tar:
                name = normalize(info.name)
                reason = hostile_reason(info, members)
                if reason and strict:
                    raise ArchiveError("refusing member %r: %s" % (info.name, reason))
                digest = None
                if info.isreg() and digests:
                    h = hashlib.sha256()
                    for block in member_blocks(tar, info):
                        h.update(block)
                    digest = h.hexdigest()
                members[name] = member_record(info, digest)
                if on_member:
                    on_member(name, members[name])
            end = tar.offset
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError("the tar stream is truncated or corrupt: %s" % exc) from exc
    reader.drain()
    marker = reader.window_at(end, 2 * tarfile.BLOCKSIZE)
    if marker is None or marker.strip(b"\0"):
        raise ArchiveError("the tar stream is truncated: it stops at byte %d without the end-of-archive marker" % end)
    if ROOT not in members:
        raise ArchiveError("the tar stream has no root entry: it is not a volume archive")
    return members


def compare_members(expected, actual, ignore_dir_mtime=True, ignore_digests=False):
    """Differences between two member tables, as short sentences (empty when equal)."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        a, b = expected.get(name), actual.get(name)
        if a is None:
            problems.append("%s: not expected" % name)
        elif b is None:
            problems.append("%s: missing" % name)
        else:
            keys = set(a) | set(b)
            if ignore_dir_mtime and a.get("type") == "dir":
                keys.discard("mtime")
            if ignore_digests:
                keys.discard("sha256")
            diff = sorted(k for k in keys if a.get(k) != b.get(k))
            if diff:
                problems.append("%s: %s differ" % (name, ", ".join(diff)))
    return problems


# -- streams ------------------------------------------------------------------------------


class IterReader:
    """A file-like reader over an iterator of byte chunks, copying every byte to `tee`.

    It keeps the last WINDOW bytes it read, so that the end of a stream can be checked.
    """

    WINDOW = 64 * 1024

    def __init__(self, chunks, tee=None):
        self.chunks = iter(chunks)
        self.buffer = bytearray()
        self.pos = 0
        self.tee = tee
        self.total = 0
        self.window = b""

    def read(self, size=-1):
        # A position into one buffer, compacted only on refill: tarfile reads in small pieces,
        # and slicing a megabyte buffer for each of them cost more than the copy itself.
        while size < 0 or len(self.buffer) - self.pos < size:
            try:
                chunk = next(self.chunks)
            except StopIteration:
                break
            if chunk:
                if self.tee:
                    self.tee(chunk)
                self.total += len(chunk)
                if self.pos:
                    del self.buffer[: self.pos]
                    self.pos = 0
                self.buffer += chunk
                tail = chunk[-self.WINDOW :]
                self.window = tail if len(tail) == self.WINDOW else (self.window + tail)[-self.WINDOW :]
        end = len(self.buffer) if size < 0 else min(len(self.buffer), self.pos + size)
        data = bytes(self.buffer[self.pos : end])
        self.pos = end
        return data

    def drain(self):
        while self.read(CHUNK):
            pass

    def window_at(self, offset, size):
        """Bytes [offset, offset + size) of the stream when still in the window (after drain)."""
        start = offset - (self.total - len(self.window))
        if start < 0 or offset + size > self.total:
            return None
        return self.window[start : start + size]


class Compressor:
    """Writes raw tar bytes to `path` through zstd (a subprocess), gzip or nothing."""

    def __init__(self, path, compression, zstd_bin=None, level=None):
        self.path = path
        self.compression = compression
        self.fh = open(path, "xb")  # noqa: SIM115 - closed by close()/abort(); exclusive: never overwrite
        os.chmod(path, 0o600)
        self.proc = None
        self.gz = None
        if compression == "zstd":
            # --check (zstd's default, made explicit): a content checksum that `zstd -t` verifies.
            args = [zstd_bin, "-q", "-T0", "-%d" % (level or 3), "--check", "-c"]
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=self.fh, stderr=subprocess.PIPE)
        elif compression == "gzip":
            self.gz = gzip.GzipFile(fileobj=self.fh, mode="wb", compresslevel=level or 6, mtime=0)

    def write(self, data):
        if self.proc:
            try:
                self.proc.stdin.write(data)
            except BrokenPipeError as exc:
                raise ArchiveError("zstd stopped: %s" % self.proc.stderr.read().decode("utf-8", "replace")) from exc
        elif self.gz:
            self.gz.write(data)
        else:
            self.fh.write(data)

    def close(self):
        if self.proc:
            self.proc.stdin.close()
            err = self.proc.stderr.read().decode("utf-8", "replace")
            if self.proc.wait() != 0:
                raise ArchiveError("zstd failed: %s" % err.strip())
        if self.gz:
            self.gz.close()
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()

    def abort(self):
        for closer in (getattr(self.proc, "kill", None), getattr(self.gz, "close", None), self.fh.close):
            try:
                if closer:
                    closer()
            except Exception:  # noqa: BLE001,S110 - best effort on the way out of a failure
                pass
        if self.proc:
            self.proc.wait()


def decompressed_chunks(path, compression, zstd_bin=None):
    """Yield the raw tar bytes of an archive, chunk by chunk."""
    if compression == "zstd":
        proc = subprocess.Popen([zstd_bin, "-q", "-d", "-c", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            while True:
                block = proc.stdout.read(CHUNK)
                if not block:
                    break
                yield block
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode("utf-8", "replace")
            if proc.wait() != 0:
                raise ArchiveError("zstd cannot read %s: %s" % (path, err.strip()))
        return
    opener = gzip.open if compression == "gzip" else open
    try:
        with opener(path, "rb") as fh:
            while True:
                block = fh.read(CHUNK)
                if not block:
                    break
                yield block
    except (OSError, EOFError) as exc:
        raise ArchiveError("cannot read %s: %s" % (path, exc)) from exc


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def archive_members(path, compression, zstd_bin=None, strict=True, digests=True):
    return read_members(IterReader(decompressed_chunks(path, compression, zstd_bin)), strict=strict, digests=digests)


def check_written(path, compression, size, crc, zstd_bin=None):
    """Prove that the archive on disk decodes to the stream that was written into it.

    zstd: `zstd -t` checks the content checksum it computed over that stream. gzip and none:
    the decoded bytes must have the stream's length and CRC-32 (gzip also checks its own CRC).
    Raises ArchiveError otherwise.
    """
    if compression == "zstd":
        proc = subprocess.run([zstd_bin, "-q", "-t", path], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ArchiveError("the archive written does not read back: %s" % proc.stderr.strip())
        return
    total, check = 0, 0
    try:
        for block in decompressed_chunks(path, compression, zstd_bin):
            total += len(block)
            check = zlib.crc32(block, check)
    except (OSError, EOFError) as exc:
        raise ArchiveError("the archive written does not read back: %s" % exc) from exc
    if (total, check) != (size, crc):
        raise ArchiveError(
            "the archive written does not read back as sent (%d bytes, crc %08x; sent %d bytes, crc %08x)"
            % (total, check, size, crc)
        )


def rewrite_for_root(chunks, prefix):
    """Re-emit a volume tar with every name under `prefix` ('.' becomes prefix itself).

    Extracted at '/', the prefix directory is the volume's mount point: its owner, mode and
    time come from the archive's root entry, which an extraction into the mount point ignores.
    """
    reader = IterReader(chunks)
    try:
        with tarfile.open(fileobj=reader, mode="r|", bufsize=STREAM_BUFSIZE) as tar:
            known = {}
            for info in tar:
                reason = hostile_reason(info, known)
                if reason:
                    raise ArchiveError("refusing member %r: %s" % (info.name, reason))
                name = normalize(info.name)
                known[name] = True
                info.name = prefix if name == ROOT else "%s/%s" % (prefix, name)
                if info.islnk():
                    info.linkname = "%s/%s" % (prefix, normalize(info.linkname))
                yield info.tobuf(format=tarfile.PAX_FORMAT)
                if info.isreg() and info.size:
                    yield from member_blocks(tar, info)
                    pad = (-info.size) % tarfile.BLOCKSIZE
                    if pad:
                        yield b"\0" * pad
    except tarfile.TarError as exc:
        raise ArchiveError("the archive is truncated or corrupt: %s" % exc) from exc
    yield b"\0" * (tarfile.BLOCKSIZE * 2)


# -- manifest -----------------------------------------------------------------------------


def manifest_path(archive):
    return archive + MANIFEST_SUFFIX


def write_manifest(path, manifest):
    atomic_write(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), 0o600)


def read_manifest(archive):
    path = manifest_path(archive)
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except FileNotFoundError as exc:
        raise ArchiveError(
            "archive %s has no manifest (%s): it was not written by %s, or its manifest was lost; nothing was "
            "changed" % (archive, path, TOOL)
        ) from exc
    except ValueError as exc:
        raise ArchiveError("manifest %s is damaged: %s; nothing was changed" % (path, exc)) from exc
    if manifest.get("tool") != TOOL or "members" not in manifest:
        raise ArchiveError("%s is not a manifest written by %s; nothing was changed" % (path, TOOL))
    return manifest


def verify_archive(archive, zstd_bin=None, digests=True):
    """Check an archive against its manifest: whole-file sha256, then every member.

    With digests=False members are compared without re-hashing their contents: the whole-file
    sha256 already proves the bytes are those written (and verified) at backup time, and the
    headers are still read for hostile members and the end-of-archive marker.
    """
    if not os.path.isfile(archive):
        raise ArchiveError("archive %s does not exist; nothing was changed" % archive)
    manifest = read_manifest(archive)
    digest = file_sha256(archive)
    if digest != manifest.get("sha256"):
        raise ArchiveError(
            "archive %s does not match its manifest (sha256 %s, manifest says %s): it is truncated or corrupt; "
            "nothing was changed" % (archive, digest, manifest.get("sha256"))
        )
    members = archive_members(
        archive, manifest.get("compression") or compression_of(archive), zstd_bin, digests=digests
    )
    problems = compare_members(manifest["members"], members, ignore_dir_mtime=False, ignore_digests=not digests)
    if problems:
        raise ArchiveError(
            "archive %s does not match its manifest: %s; nothing was changed" % (archive, "; ".join(problems[:10]))
        )
    return manifest


def prune(dest, volume, keep):
    """Delete this volume's oldest archives in dest beyond `keep` (only ones with our manifest)."""
    pattern = archive_pattern(volume)
    ours = []
    for name in os.listdir(dest):
        path = os.path.join(dest, name)
        if not pattern.match(name):
            continue
        try:
            manifest = read_manifest(path)
        except ArchiveError:
            continue
        if manifest.get("volume", {}).get("name") == volume:
            ours.append((manifest.get("created", ""), path))
    ours.sort()
    removed = []
    for _created, path in ours[: max(0, len(ours) - keep)]:
        for victim in (path, manifest_path(path)):
            if os.path.exists(victim):
                os.unlink(victim)
        removed.append(path)
    return removed
