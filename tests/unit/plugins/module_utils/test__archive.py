"""Unit tests of the archive code: hostile members, truncation, manifests (no engine)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _archive
from ansible_collections.stackops.rollback.plugins.module_utils._archive import ArchiveError


def tar_bytes(*members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        for info, data in members:
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def info(name, kind=tarfile.REGTYPE, link=""):
    i = tarfile.TarInfo(name)
    i.type = kind
    i.linkname = link
    return i


HOSTILE = [
    (info("../x"), "path leaves the volume"),
    (info("./a/../../x"), "path leaves the volume"),
    (info("/abs"), "absolute path"),
    (info("./h", tarfile.LNKTYPE, "../x"), "hard link leaves the volume"),
    (info("./h", tarfile.LNKTYPE, "./never-seen"), "hard link to a member that is not in the archive"),
    (info("./c", tarfile.CHRTYPE), "device node"),
    (info("./b", tarfile.BLKTYPE), "device node"),
    (info("./f", tarfile.FIFOTYPE), "device node or FIFO"),
]


@pytest.mark.parametrize(("member", "reason"), HOSTILE)
def test_hostile_members_are_refused(member, reason):
    data = tar_bytes((member, b""))
    with pytest.raises(ArchiveError, match="refusing member"):
        _archive.read_members(_archive.ChunkReader([data]))
    assert reason in _archive.hostile_reason(member, {})


def test_a_member_written_through_a_symlink_is_refused():
    data = tar_bytes(
        (info("./d", tarfile.SYMTYPE, "/etc"), b""),
        (info("./d/passwd"), b"x"),
    )
    with pytest.raises(ArchiveError, match=r"refusing member './d/passwd': written through a symlink \(d is a symlink"):
        _archive.read_members(_archive.ChunkReader([data]))


@pytest.mark.parametrize(
    "member",
    [
        info("./abs-link", tarfile.SYMTYPE, "/etc/passwd"),
        info("./current", tarfile.SYMTYPE, "/srv/releases/7"),
        info("./d/up", tarfile.SYMTYPE, "../../outside"),
        info("./ok"),
        info("./d/l", tarfile.SYMTYPE, "../ok"),
        info("./l", tarfile.SYMTYPE, "sub/file"),
        info(".hidden"),
    ],
)
def test_safe_members_pass(member):
    assert _archive.hostile_reason(member, {}) is None


def test_members_record_content_and_metadata():
    f = info("./a")
    f.mode, f.uid, f.gid, f.mtime = 0o640, 1, 2, 1000
    h = info("./h", tarfile.LNKTYPE, "./a")
    members = _archive.read_members(_archive.ChunkReader([tar_bytes((f, b"hello"), (h, None))]))
    assert members["a"] == {
        "type": "file",
        "mode": "0640",
        "uid": 1,
        "gid": 2,
        "mtime": 1000,
        "size": 5,
        "sha256": hashlib.sha256(b"hello").hexdigest(),
    }
    assert members["h"]["type"] == "hardlink" and members["h"]["link"] == "a"


@pytest.mark.parametrize("cut", [700, 1024, 1100, 3000, 5632])
def test_truncated_stream_fails(cut):
    data = tar_bytes((info("./big"), b"x" * 4000))
    with pytest.raises(ArchiveError, match=r"truncated|corrupt"):
        _archive.read_members(_archive.ChunkReader([data[:cut]]))


def test_stream_without_root_is_not_a_volume_archive():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(info("./a"), io.BytesIO(b""))
    with pytest.raises(ArchiveError, match="no root entry"):
        _archive.read_members(_archive.ChunkReader([buf.getvalue()]))


def test_compare_members_names_each_difference():
    a = {".": {"type": "dir", "mtime": 1}, "x": {"type": "file", "sha256": "1", "mode": "0644"}}
    b = {".": {"type": "dir", "mtime": 2}, "x": {"type": "file", "sha256": "2", "mode": "0600"}, "y": {}}
    assert _archive.compare_members(a, b) == ["x: mode, sha256 differ", "y: not expected"]
    assert _archive.compare_members(a, b, ignore_dir_mtime=False)[0] == ".: mtime differ"


def test_rewrite_for_root_prefixes_names_and_links():
    f = info("./a")
    h = info("./h", tarfile.LNKTYPE, "./a")
    data = b"".join(_archive.rewrite_for_root([tar_bytes((f, b"hi"), (h, None))], "stackops-volume"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = [(m.name, m.linkname) for m in tar.getmembers()]
    assert names == [("stackops-volume", ""), ("stackops-volume/a", ""), ("stackops-volume/h", "stackops-volume/a")]


def test_manifest_must_be_ours(tmp_path):
    archive = tmp_path / "v-20260101T000000000000Z.tar"
    archive.write_bytes(b"")
    with pytest.raises(ArchiveError, match="has no manifest"):
        _archive.read_manifest(str(archive))
    (tmp_path / (archive.name + ".manifest.json")).write_text(json.dumps({"tool": "other"}))
    with pytest.raises(ArchiveError, match="not a manifest written by"):
        _archive.read_manifest(str(archive))


def test_archive_names_match_the_retention_pattern():
    name = _archive.archive_name("shop_db", "zstd")
    assert _archive.archive_pattern("shop_db").match(name)
    assert not _archive.archive_pattern("shop").match(name)


# -- the stream parser: every header kind tarfile writes, in pieces of any size ----------------


def split(data, size):
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("piece", [1, 511, 512, 4096, 10**6])
def test_parser_reads_long_names_and_contents_whatever_the_chunking(fmt, piece):
    deep = "./" + "/".join(["d" * 60] * 3)  # with the file below, past what ustar holds: GNU 'L' or pax
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        d = tarfile.TarInfo(deep)
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name, data in [(deep + "/" + "f" * 90 + ".txt", b"a" * 700), ("./small", b"xyz"), ("./empty", b"")]:
            i = tarfile.TarInfo(name)
            i.size = len(data)
            tar.addfile(i, io.BytesIO(data))
    data = buf.getvalue()
    seen = []
    reader = _archive.ChunkReader(split(data, piece), tee=seen.append)
    members = _archive.read_members(reader)
    assert b"".join(seen) == data
    assert reader.total == len(data)
    long_name = _archive.normalize(deep + "/" + "f" * 90 + ".txt")
    assert members[long_name]["sha256"] == hashlib.sha256(b"a" * 700).hexdigest()
    assert members["small"]["size"] == 3 and members["empty"]["size"] == 0
    assert members[_archive.normalize(deep)]["type"] == "dir"


def test_parser_accepts_record_padding_after_the_end_marker():
    data = tar_bytes((info("./a"), b"1"))
    assert len(data) % tarfile.RECORDSIZE == 0 and len(data) > 3 * tarfile.BLOCKSIZE  # tarfile pads
    assert "a" in _archive.read_members(_archive.ChunkReader(split(data, 700)))


def test_parser_refuses_a_stream_cut_after_the_first_zero_block():
    data = tar_bytes((info("./a"), b"1"))
    end = 3 * tarfile.BLOCKSIZE + tarfile.BLOCKSIZE  # root, header a, data a, first zero block
    with pytest.raises(ArchiveError, match="without the end-of-archive marker"):
        _archive.read_members(_archive.ChunkReader([data[:end]]))


def test_parser_refuses_a_header_with_a_bad_checksum():
    data = bytearray(tar_bytes((info("./a"), b"1")))
    data[tarfile.BLOCKSIZE + 5] ^= 0x01  # a bit of member a's name: its checksum no longer matches
    with pytest.raises(ArchiveError, match="corrupt"):
        _archive.read_members(_archive.ChunkReader([bytes(data)]))


def test_parser_skips_contents_when_digests_are_not_wanted():
    data = tar_bytes((info("./a"), b"hello"), (info("./b"), b"x" * 5000))
    members = _archive.read_members(_archive.ChunkReader(split(data, 1000)), digests=False)
    assert members["a"]["sha256"] is None and members["b"]["size"] == 5000


def test_fifos_and_devices_are_recorded_as_such_when_not_strict():
    members = _archive.read_members(
        _archive.ChunkReader([tar_bytes((info("./p", tarfile.FIFOTYPE), None), (info("./c", tarfile.CHRTYPE), None))]),
        strict=False,
    )
    assert (members["p"]["type"], members["c"]["type"]) == ("fifo", "device")


# -- the tree walk used to check a restored volume ---------------------------------------------------


def test_tree_members_matches_what_the_tar_of_the_same_tree_records(tmp_path):
    root = tmp_path / "vol"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello")
    (root / "b" / "deep" / ".hidden").write_bytes(b"")
    (root / "b" / "z-link").symlink_to("../a.txt")
    (root / "b" / "hard").hardlink_to(root / "a.txt")  # a.txt comes first: the file; b/hard: the link
    root.chmod(0o700)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(root), arcname=".")  # tarfile also walks sorted and depth first
    from_tar = _archive.read_members(_archive.ChunkReader([buf.getvalue()]), digests=False)
    walked = _archive.tree_members(str(root))
    assert _archive.compare_members(from_tar, walked, ignore_digests=True) == []
    assert walked["b/hard"] == dict(walked["b/hard"], type="hardlink", link="a.txt")
    assert walked["."]["mode"] == "0700"
    written = os.stat(root / "a.txt")
    (root / "a.txt").write_bytes(b"changed size")
    # Its mtime kept: a write in a later second would change it (and b/hard's, the same inode) too.
    os.utime(root / "a.txt", ns=(written.st_atime_ns, written.st_mtime_ns))
    problems = _archive.compare_members(from_tar, _archive.tree_members(str(root)), ignore_digests=True)
    assert len(problems) == 1 and problems[0].startswith("a.txt: ") and "size" in problems[0], problems


# -- the tar a backup reads from the volume's mount point --------------------------------------------


def sample_tree(root):
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello")
    (root / "big.bin").write_bytes(bytes(range(256)) * 9000)  # several chunks, not a block multiple
    (root / "b" / "deep" / ".hidden").write_bytes(b"")
    (root / "b" / "abs").symlink_to("/etc/passwd")
    (root / "b" / "dangling").symlink_to("no-such-file")
    (root / "b" / "hard").hardlink_to(root / "a.txt")
    (root / ("n" * 120)).write_bytes(b"a long name needs a pax header")
    root.chmod(0o750)


def write_tree(root):
    """The tar pieces of a directory and the member table tree_tar filled in."""
    members = {}
    pieces = list(_archive.tree_tar(str(root), members))
    return members, pieces


def test_tree_tar_gives_the_archive_and_members_the_parser_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(_archive, "CHUNK", 1000)  # files cross chunk boundaries
    root = tmp_path / "vol"
    sample_tree(root)
    written, out = write_tree(root)
    parsed = _archive.read_members(_archive.ChunkReader(out))  # strict: nothing hostile, digests recomputed
    assert parsed == written
    assert written["big.bin"]["sha256"] == hashlib.sha256((root / "big.bin").read_bytes()).hexdigest()
    assert written["b/hard"]["type"] == "hardlink" and written["b/hard"]["link"] == "a.txt"
    assert written["b/abs"]["link"] == "/etc/passwd" and written["."]["mode"] == "0750"
    walked = _archive.tree_members(str(root))
    assert _archive.compare_members(written, walked, ignore_digests=True) == []
    # Python's own tarfile reads it too, contents included.
    with tarfile.open(fileobj=io.BytesIO(b"".join(out))) as tar:
        assert tar.extractfile("./big.bin").read() == (root / "big.bin").read_bytes()


@pytest.mark.parametrize("new_size", [150, 10], ids=["grows", "shrinks"])
def test_tree_tar_fails_on_a_file_that_changes_while_it_is_read(tmp_path, monkeypatch, new_size):
    root = tmp_path / "vol"
    root.mkdir()
    (root / "grows.log").write_bytes(b"x" * 100)
    real_walk = _archive.walk_tree

    def walk_then_write(top):
        for path, name, st in real_walk(top):
            if name == "grows.log":
                (root / "grows.log").write_bytes(b"x" * new_size)
            yield path, name, st

    monkeypatch.setattr(_archive, "walk_tree", walk_then_write)
    with pytest.raises(ArchiveError, match=r"grows\.log changed while it was read"):
        write_tree(root)


def test_tree_tar_leaves_sockets_out_as_the_engine_does(tmp_path):
    import socket

    root = tmp_path / "v"
    root.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "s.sock"))
    try:
        members, _pieces = write_tree(root)
    finally:
        sock.close()
    assert sorted(members) == ["."] and sorted(_archive.tree_members(str(root))) == ["."]
