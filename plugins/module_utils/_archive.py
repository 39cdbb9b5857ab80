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
import queue
import re
import stat
import subprocess
import tarfile
import threading
import zlib

from ansible_collections.stackops.rollback.plugins.module_utils._files import atomic_write, fsync_dir
from ansible_collections.stackops.rollback.plugins.module_utils._streams import CHUNK

TOOL = "stackops.rollback.volume_backup"
MANIFEST_SUFFIX = ".manifest.json"
EXTENSIONS = {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}
# A database's online dump (kind "dump"): the engine's own SQL, compressed the same ways.
DUMP_EXTENSIONS = {"zstd": ".sql.zst", "gzip": ".sql.gz", "none": ".sql"}
ROOT = "."
BLOCK = tarfile.BLOCKSIZE


class ArchiveError(Exception):
    """Bad or unsafe archive, or a failed copy; the message names the thing and what to do."""


def choose_compression(module, wanted, zstd):
    """The archives' compression: the one asked for, else zstd where its binary is on the managed
    host, else gzip (slower: said in a warning)."""
    if wanted == "zstd" and not zstd:
        raise ArchiveError(
            "compression=zstd was asked for, but the zstd binary is not on the managed host; "
            "install zstd or choose gzip"
        )
    if wanted:
        return wanted
    if zstd:
        return "zstd"
    module.warn("zstd is not installed on the managed host: writing gzip archives (slower)")
    return "gzip"


def prepare_dir(module, path, option, contents):
    """The directory archives go to: created (0700) when missing, and writable; in check mode only
    checked. `option` names the module option and `contents` what it holds, for the errors."""
    if not path:
        raise ArchiveError("%s is needed: the directory for %s" % (option, contents))
    if not os.path.isdir(path):
        if module.check_mode:
            return
        try:
            os.makedirs(path, mode=0o700)
        except OSError as exc:
            raise ArchiveError("%s %s does not exist and cannot be created: %s" % (option, path, exc.strerror)) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise ArchiveError("%s %s is not writable; choose a writable directory. Nothing was changed" % (option, path))


def utc_stamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def archive_name(volume, compression, stamp=None, kind="volume"):
    extensions = DUMP_EXTENSIONS if kind == "dump" else EXTENSIONS
    return "%s-%s%s" % (volume, stamp or utc_stamp(), extensions[compression])


def archive_pattern(volume, kind="volume"):
    body = r"\.sql" if kind == "dump" else r"\.tar"
    return re.compile(r"^%s-\d{8}T\d{12}Z%s(\.zst|\.gz)?$" % (re.escape(volume), body))


def compression_of(path):
    for extensions in (EXTENSIONS, DUMP_EXTENSIONS):
        for compression, extension in sorted(extensions.items(), key=lambda e: -len(e[1])):
            if path.endswith(extension):
                return compression
    raise ArchiveError("%s is not an archive of ours (.tar, .tar.gz, .tar.zst, .sql, .sql.gz or .sql.zst)" % path)


# -- member checks ------------------------------------------------------------------------


def normalize(name):
    """A member name relative to the volume root ('.' for the root)."""
    if name in (".", "./"):
        return ROOT
    return posixpath.normpath(name[2:] if name.startswith("./") else name)


def symlinked_parent(name, known):
    """The first directory of a member's path that the archive made a symlink, or None."""
    parts = name.split("/")
    for end in range(1, len(parts)):
        parent = "/".join(parts[:end])
        entry = known.get(parent)
        if (entry.get("type") if isinstance(entry, dict) else entry) == "symlink":
            return parent
    return None


def hostile_reason(info, known):
    """Why a member may not be restored, or None. `known` maps the names seen before it to their
    records (or types).

    Links are data and come back exactly as they were, wherever they point (`current ->
    /srv/releases/7`, a socket's path); what is refused is a member written *through* a link (a
    parent directory that the archive made a symlink), a hard link to a member outside the
    archive, '..', absolute names and device nodes.
    """
    raw = info.name
    if raw.startswith("/") or (info.linkname.startswith("/") and info.islnk()):
        return "absolute path"
    name = normalize(raw)
    if name == ".." or name.startswith("../") or "/../" in "/%s/" % name:
        return "path leaves the volume ('..')"
    if info.ischr() or info.isblk() or info.isfifo() or info.isdev():
        return "device node or FIFO"
    through = symlinked_parent(name, known)
    if through:
        return "written through a symlink (%s is a symlink in the archive)" % through
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
    kinds = (("dir", info.isdir), ("file", info.isreg), ("symlink", info.issym), ("hardlink", info.islnk))
    kind = next((k for k, test in kinds if test()), "fifo" if info.isfifo() else "device")
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


def iter_members(reader):
    """Yield the TarInfo of every member of a tar stream (a ChunkReader), in order.

    When a member is yielded the reader stands at its contents: the caller may read them
    (reader.pieces) or not; whatever it leaves, padding included, is skipped before the next
    header. Headers (ustar, pax, GNU long names) are parsed by tarfile itself; contents never
    pass through it. Raises ArchiveError on a truncated or malformed stream. Python's tarfile
    takes a stream cut inside a header for a shorter, complete archive: here the end-of-archive
    marker (two zero blocks) is required.
    """
    headers = _HeaderSource(reader)
    while True:
        try:
            info = tarfile.TarInfo.fromtarfile(headers)
        except tarfile.EOFHeaderError:
            break
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError) as exc:
            raise ArchiveError(
                "the tar stream is truncated: it stops at byte %d without the end-of-archive marker (%s)"
                % (reader.tell(), exc)
            ) from exc
        except tarfile.HeaderError as exc:
            raise ArchiveError("the tar stream is corrupt at byte %d: %s" % (reader.tell(), exc)) from exc
        yield info
        reader.skip(headers.offset - reader.tell())
    second = reader.read(BLOCK)
    if len(second) < BLOCK or second.strip(b"\0"):
        raise ArchiveError(
            "the tar stream is truncated: it stops at byte %d without the end-of-archive marker" % reader.tell()
        )


class _HeaderSource:
    """What tarfile.TarInfo.fromtarfile reads headers from: the reader and the pax state."""

    encoding = "utf-8"
    errors = "surrogateescape"

    def __init__(self, reader):
        self.fileobj = reader
        self.pax_headers = {}
        self.offset = 0


def read_members(reader, strict=True, on_member=None, digests=True):
    """Parse a tar stream (a ChunkReader); return {name: record} for every member.

    Raises ArchiveError on a truncated or malformed stream, or (strict) on a hostile member.
    With digests=False file contents are skipped, not hashed (their records carry no sha256).
    The rest of the stream is read too, so that a tee sees all of it.
    """
    members = {}
    for info in iter_members(reader):
        name = normalize(info.name)
        reason = hostile_reason(info, members)
        if reason and strict:
            raise ArchiveError("refusing member %r: %s" % (info.name, reason))
        digest = None
        if info.isreg() and digests:
            h = hashlib.sha256()
            for piece in reader.pieces(info.size, info.name):
                h.update(piece)
            digest = h.hexdigest()
        members[name] = member_record(info, digest)
        if on_member:
            on_member(name, members[name])
    reader.drain()
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


def walk_tree(root):
    """(path, name, lstat) of every entry of a directory, the root first, walked as the engine
    walks (names sorted bytewise, depth first), so that the first name of a hard-linked file is
    the file and the later ones are links to it. Paths are bytes; names are relative ('.' for
    the root)."""
    pending = [(os.fsencode(root), ROOT)]  # a stack, not recursion: any depth will do
    while pending:
        path, name = pending.pop()
        st = os.lstat(path)
        yield path, name, st
        if stat.S_ISDIR(st.st_mode):
            pending.extend(
                (os.path.join(path, e), os.fsdecode(e) if name == ROOT else "%s/%s" % (name, os.fsdecode(e)))
                for e in sorted(os.listdir(path), reverse=True)
            )


def tree_info(path, name, st, first_names):
    """The tar header of one walked entry as the engine's archive holds it, or None for what a
    tar cannot hold (a socket: the engine leaves it out too). `first_names` maps (device, inode)
    to the first name of each file seen, to write later names as hard links."""
    info = tarfile.TarInfo(ROOT if name == ROOT else "./" + name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid, info.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFDIR:
        info.type = tarfile.DIRTYPE
    elif kind == stat.S_IFLNK:
        info.type, info.linkname = tarfile.SYMTYPE, os.fsdecode(os.readlink(path))
    elif kind == stat.S_IFREG and st.st_nlink > 1 and (st.st_dev, st.st_ino) in first_names:
        info.type, info.linkname = tarfile.LNKTYPE, "./" + first_names[(st.st_dev, st.st_ino)]
    elif kind == stat.S_IFREG:
        info.type, info.size = tarfile.REGTYPE, st.st_size
        first_names[(st.st_dev, st.st_ino)] = name
    elif kind in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK):
        info.type = {stat.S_IFIFO: tarfile.FIFOTYPE, stat.S_IFCHR: tarfile.CHRTYPE, stat.S_IFBLK: tarfile.BLKTYPE}[kind]
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        return None
    return info


def tree_members(root):
    """The member table of a directory as the engine's tar of it would give it, without contents
    (records carry no sha256)."""
    first_names = {}
    members = {}
    for path, name, st in walk_tree(root):
        info = tree_info(path, name, st, first_names)
        if info is not None:
            members[name] = member_record(info)
    return members


def tree_tar(root, members):
    """A tar of a directory, read from the directory itself, as pieces; `members` is filled with
    its member table, every file's sha256 included: what read_members gives for the engine's
    archive of the same files, so that both make the same archive format and manifest.

    Nothing may write into the directory meanwhile: a file whose size changes while it is read
    fails the copy (ArchiveError), and a partial archive is never kept.
    """
    first_names = {}
    for path, name, st in walk_tree(root):
        info = tree_info(path, name, st, first_names)
        if info is None:
            continue
        yield tar_header(info)
        digest = None
        if info.isreg():
            digest = hashlib.sha256()
            yield from _file_pieces(path, name, info.size, digest)
            digest = digest.hexdigest()
        members[name] = member_record(info, digest)
    yield b"\0" * (2 * BLOCK)


def tar_header(info):
    """The member's tar header: a plain ustar block written here when everything fits one (the
    common case, a tenth of tarfile's cost), else tarfile's pax header. Both read the same."""
    name = info.name + "/" if info.type == tarfile.DIRTYPE and not info.name.endswith("/") else info.name
    try:
        raw_name, raw_link = name.encode("ascii"), info.linkname.encode("ascii")
    except UnicodeEncodeError:
        raw_name = raw_link = None
    fits = raw_name is not None and len(raw_name) <= 100 and len(raw_link) <= 100
    small, large = 8**7, 8**11
    if not (
        fits
        and 0 <= info.mode < small
        and 0 <= info.uid < small
        and 0 <= info.gid < small
        and 0 <= info.size < large
        and 0 <= info.mtime < large
    ):
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (info.mode, info.uid, info.gid, info.size, info.mtime)
    head = raw_name.ljust(100, b"\0") + numbers
    tail = (
        info.type
        + raw_link.ljust(100, b"\0")
        + tarfile.POSIX_MAGIC
        + b"\0" * 64  # uname, gname: the numeric owner is what is restored
        + b"%07o\0%07o\0" % (info.devmajor, info.devminor)
    ).ljust(BLOCK - len(head) - 8, b"\0")
    checksum = sum(head) + sum(tail) + 8 * 32
    return head + b"%06o\0 " % checksum + tail


def _file_pieces(path, name, size, digest):
    """A file's contents, padded to a block, hashed into digest on the way."""
    left = size
    with open(path, "rb", buffering=0) as fh:
        while left:
            piece = fh.read(min(CHUNK, left))
            if not piece:
                break
            digest.update(piece)
            yield piece
            left -= len(piece)
        if left or fh.read(1):
            raise ArchiveError(
                "%s changed while it was read (%d bytes when the copy began): something writes into the "
                "volume; stop its containers for the copy" % (name, size)
            )
    if size % BLOCK:
        yield b"\0" * (BLOCK - size % BLOCK)


# -- streams ------------------------------------------------------------------------------


class ChunkReader:
    """A reader over an iterator of byte chunks (an engine stream, a decompressor's output).

    Headers are read as bytes; file contents are handed out as memoryviews of the chunks as
    they came, so that a gigabyte is hashed and passed on without being copied. Every chunk is
    also given to `tee` (the compressor) as it arrives.
    """

    def __init__(self, chunks, tee=None):
        self.chunks = iter(chunks)
        self.tee = tee
        self.chunk = b""
        self.pos = 0
        self.offset = 0
        self.total = 0

    def _next_chunk(self):
        for chunk in self.chunks:
            if chunk:
                if self.tee:
                    self.tee(chunk)
                self.total += len(chunk)
                self.chunk, self.pos = chunk, 0
                return True
        return False

    def tell(self):
        return self.offset

    def read(self, size):
        """Up to size bytes (fewer only at the end of the stream)."""
        parts = []
        while size > 0 and (self.pos < len(self.chunk) or self._next_chunk()):
            take = min(size, len(self.chunk) - self.pos)
            parts.append(self.chunk[self.pos : self.pos + take])
            self.pos += take
            self.offset += take
            size -= take
        return b"".join(parts)

    def pieces(self, size, name="the stream"):
        """Exactly size bytes, as memoryviews; ArchiveError when the stream ends first."""
        while size > 0:
            if self.pos >= len(self.chunk) and not self._next_chunk():
                raise ArchiveError("the tar stream is truncated inside member %r" % name)
            take = min(size, len(self.chunk) - self.pos)
            yield memoryview(self.chunk)[self.pos : self.pos + take]
            self.pos += take
            self.offset += take
            size -= take

    def skip(self, size):
        for _piece in self.pieces(size):
            pass

    def drain(self):
        """Read to the end (what follows the end-of-archive marker is only padding)."""
        self.offset += len(self.chunk) - self.pos
        self.pos = len(self.chunk)
        while self._next_chunk():
            self.offset += len(self.chunk)
            self.pos = len(self.chunk)


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
        # The disk takes the archive while it is written, so that the fsync in close() waits only
        # for the last part (for a large archive that wait was half of the time after the copy).
        self.written = threading.Event()
        self.flusher = threading.Thread(target=self._flush_while_writing, daemon=True)
        self.flusher.start()

    def _flush_while_writing(self, every=0.25):
        while not self.written.wait(every):
            try:
                os.fdatasync(self.fh.fileno())
            except (OSError, ValueError):  # closed by abort(): nothing left to flush
                return

    def _stop_flushing(self):
        self.written.set()
        self.flusher.join()

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
        self._stop_flushing()
        os.fsync(self.fh.fileno())
        self.fh.close()

    def abort(self):
        self._stop_flushing()
        for closer in (getattr(self.proc, "kill", None), getattr(self.gz, "close", None), self.fh.close):
            try:
                if closer:
                    closer()
            except Exception:  # noqa: BLE001,S110 - best effort on the way out of a failure
                pass
        if self.proc:
            self.proc.wait()


class ArchiveWriter:
    """A new archive, all or nothing: bytes go to a temporary file beside the final name through
    a Compressor; commit() proves the file decodes to exactly what was written, writes the
    manifest, renames the file into place and syncs the directory. Leaving the with-block on an
    error removes the temporary file: no partial archive is ever left behind."""

    DEPTH = 8  # chunks in flight: the compressor is fed while the next chunk is read and hashed

    def __init__(self, final, compression, zstd_bin=None):
        self.final = final
        self.dest = os.path.dirname(final)
        self.tmp = os.path.join(self.dest, ".%s.partial" % os.path.basename(final))
        self.compression = compression
        self.zstd = zstd_bin
        self.total = 0
        self.crc = 0
        self.compressor = None
        self.pending = queue.Queue(maxsize=self.DEPTH)
        self.feeder = None
        self.failure = None

    def __enter__(self):
        self.compressor = Compressor(self.tmp, self.compression, self.zstd)
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.feeder.start()
        return self

    def _feed(self):
        """The compressor's side, in its own thread (pipe writes and zlib let go of the GIL):
        after a failure it only drains, and write() raises that failure."""
        while True:
            chunk = self.pending.get()
            if chunk is None:
                return
            if self.failure is None:
                try:
                    self.compressor.write(chunk)
                    if self.compression != "zstd":  # zstd carries its own content checksum
                        self.crc = zlib.crc32(chunk, self.crc)
                except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
                    self.failure = exc

    def write(self, chunk):
        if self.failure is not None:
            raise self.failure
        self.pending.put(chunk)
        self.total += len(chunk)

    def _drain(self):
        if self.feeder is not None:
            self.pending.put(None)
            self.feeder.join()
            self.feeder = None

    def commit(self, manifest):
        """Check what was written, then put it in place with its manifest (completed and returned)."""
        self._drain()
        if self.failure is not None:
            raise self.failure
        self.compressor.close()
        # Read the file back while hashing it (two cores): what is on disk must decode to
        # exactly what was written into it.
        digest, _checked, failure = file_sha256_beside(
            self.tmp, lambda: check_written(self.tmp, self.compression, self.total, self.crc, self.zstd)
        )
        if failure:
            raise failure
        manifest = dict(
            manifest,
            tool=TOOL,
            archive=os.path.basename(self.final),
            compression=self.compression,
            sha256=digest,
            size=os.path.getsize(self.tmp),
        )
        write_manifest(manifest_path(self.final), manifest)
        os.rename(self.tmp, self.final)
        fsync_dir(self.dest)
        return manifest

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            if self.compressor:
                self.compressor.abort()  # a feeder blocked on the pipe fails, then drains
            self._drain()
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        return False


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


def file_sha256_beside(path, work):
    """Hash a file in a second thread (hashlib lets go of the GIL) while work() runs.

    Returns (sha256, what work returned, the ArchiveError it raised or None): the caller decides
    which verdict comes first.
    """
    digest = {}
    hasher = threading.Thread(target=lambda: digest.update(sha256=file_sha256(path)), daemon=True)
    hasher.start()
    try:
        result, failure = work(), None
    except ArchiveError as exc:
        result, failure = None, exc
    finally:
        hasher.join()
    return digest.get("sha256"), result, failure


def archive_members(path, compression, zstd_bin=None, strict=True, digests=True):
    return read_members(ChunkReader(decompressed_chunks(path, compression, zstd_bin)), strict=strict, digests=digests)


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


def rewrite_for_root(chunks, prefix, digests=None):
    """Re-emit a volume tar with every name under `prefix` ('.' becomes prefix itself).

    Extracted at '/', the prefix directory is the volume's mount point: its owner, mode and
    time come from the archive's root entry, which an extraction into the mount point ignores.
    With a dict for digests, the sha256 of every file sent is put there by its member name.
    """
    reader = ChunkReader(chunks)
    known = {}
    for info in iter_members(reader):
        reason = hostile_reason(info, known)
        if reason:
            raise ArchiveError("refusing member %r: %s" % (info.name, reason))
        name = normalize(info.name)
        known[name] = "symlink" if info.issym() else "other"
        info.name = prefix if name == ROOT else "%s/%s" % (prefix, name)
        if info.islnk():
            info.linkname = "%s/%s" % (prefix, normalize(info.linkname))
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        if info.isreg():
            h = hashlib.sha256() if digests is not None else None
            for piece in reader.pieces(info.size, name):
                if h:
                    h.update(piece)
                yield piece
            if h:
                digests[name] = h.hexdigest()
            pad = (-info.size) % BLOCK
            if pad:
                yield b"\0" * pad
    yield b"\0" * (BLOCK * 2)


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
    if manifest.get("tool") != TOOL or ("members" not in manifest and manifest.get("kind") != "dump"):
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
    # The whole-file hash runs beside the member pass; its verdict comes first, as it names the
    # likelier fault.
    compression = manifest.get("compression") or compression_of(archive)
    digest, members, failure = file_sha256_beside(
        archive, lambda: archive_members(archive, compression, zstd_bin, digests=digests)
    )
    if digest != manifest.get("sha256"):
        raise ArchiveError(
            "archive %s does not match its manifest (sha256 %s, manifest says %s): it is truncated or corrupt; "
            "nothing was changed" % (archive, digest, manifest.get("sha256"))
        )
    if failure:
        raise failure
    problems = compare_members(manifest["members"], members, ignore_dir_mtime=False, ignore_digests=not digests)
    if problems:
        raise ArchiveError(
            "archive %s does not match its manifest: %s; nothing was changed" % (archive, "; ".join(problems[:10]))
        )
    return manifest


def prune(dest, volume, keep, kind="volume", owner=None):
    """Delete the oldest archives of a volume (or of a database's dumps) in dest beyond `keep`.

    Only archives whose manifest says they are ours and of that owner are counted or deleted;
    `owner(manifest)` names a manifest's owner (by default the volume it holds).
    """
    pattern = archive_pattern(volume, kind)
    owner = owner or (lambda manifest: manifest.get("volume", {}).get("name"))
    ours = []
    for name in os.listdir(dest):
        path = os.path.join(dest, name)
        if not pattern.match(name):
            continue
        try:
            manifest = read_manifest(path)
        except ArchiveError:
            continue
        if owner(manifest) == volume:
            ours.append((manifest.get("created", ""), path))
    ours.sort()
    removed = []
    for _created, path in ours[: max(0, len(ours) - keep)]:
        for victim in (path, manifest_path(path)):
            if os.path.exists(victim):
                os.unlink(victim)
        removed.append(path)
    return removed
