"""volume_backup against the real engine: round trips, PostgreSQL, bad input, check mode."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import stat
import tarfile
import threading
import time
from pathlib import Path

import docker
import pytest
import testbed
from faults import REFUSED, REVERTED

POPULATE = r"""
set -e
cd /data
echo hello > small.txt
: > empty
echo secret > .dotfile
mkdir -p .hidden/deeper sub/dir
echo nested > sub/dir/file
dd if=/dev/urandom of=large.bin bs=1M count=24 2>/dev/null
i=0; while [ $i -lt 300 ]; do echo "line $i" >> sub/log.txt; i=$((i+1)); done
ln -s small.txt link-to-small
ln -s sub/dir dir-link
ln small.txt hardlink-to-small
# Links are data, wherever they point: absolute, out of the volume, dangling.
ln -s /etc/passwd abs-link
ln -s /srv/releases/7 current
ln -s ../../outside up-link
ln -s no-such-file dangling
chown 1234:5678 small.txt
chown -R 70:70 sub
chmod 0640 small.txt
chmod 0700 .
chown 999:999 .
touch -d '2020-01-02 03:04:05' large.bin
"""

LISTING = (
    "cd /data && find . -exec stat -c '%n %f %u %g %s %Y %h %N' {} + | sort && find . -type f -exec md5sum {} + | sort"
)


def busybox(volume, script, images, mode="rw"):
    return testbed.run(
        ["docker", "run", "--rm", "-v", "%s:/data:%s" % (volume, mode), images["BUSYBOX_IMAGE"], "sh", "-c", script]
    ).stdout


def listing(volume, images):
    """Every entry's name, mode, owner, size, mtime, links and target, and every file's md5."""
    lines = busybox(volume, LISTING, images, "ro").splitlines()
    # The root directory's mtime changes when its entries are written; everything else must match.
    return [" ".join(p for i, p in enumerate(line.split()) if not (line.startswith(". ") and i == 5)) for line in lines]


@pytest.fixture
def volumes():
    made = []

    def make(populate=None, images=None):
        name = testbed.engine_name("st-vol")
        testbed.run(["docker", "volume", "create", name])
        made.append(name)
        if populate:
            busybox(name, populate, images)
        return name

    yield make
    for name in made:
        testbed.run(["docker", "volume", "rm", "-f", name], check=False)


def backup(volume, dest, **extra):
    return testbed.run_module("volume_backup", dict(name=volume, dest=str(dest), **extra))


@pytest.mark.parametrize("method", ["api", "mountpoint"])
def test_round_trip_keeps_every_file_owner_mode_link_and_time(volumes, images, tmp_path, method):
    source = volumes(POPULATE, images)
    result = backup(source, tmp_path, keep=3, method=method)
    assert result["changed"] and not result.get("failed"), result
    assert result["compression"] == "zstd" and result["method"] == method
    assert result["files"] == 6 and result["bytes"] > 24 * 1024 * 1024
    assert stat.S_IMODE(os.stat(result["archive"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(result["manifest"]).st_mode) == 0o600
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["sha256"] == result["sha256"] and manifest["members"]["."]["mode"] == "0700"
    assert manifest["method"] == method
    assert manifest["members"]["."]["uid"] == 999

    target = volumes()
    restored = testbed.run_module(
        "volume_backup", dict(name=target, state="restore", archive=result["archive"], safety_dir=str(tmp_path))
    )
    assert restored["changed"], restored
    assert listing(source, images) == listing(target, images)
    again = testbed.run_module("volume_backup", dict(name=target, state="restore", archive=result["archive"]))
    assert not again["changed"], again


def test_archives_from_the_mount_point_and_through_the_engine_are_alike_and_restore_alike(volumes, images, tmp_path):
    """The two read paths make the same member table; each archive restores (through the engine,
    as every restore does) to exactly the source, and each volume restored from one matches the
    other's archive."""
    source = volumes(POPULATE, images)
    made = {m: backup(source, tmp_path / m, method=m) for m in ("api", "mountpoint")}
    members = {m: json.loads(Path(r["manifest"]).read_text())["members"] for m, r in made.items()}
    assert members["api"] == members["mountpoint"]
    for method, result in made.items():
        target = volumes()
        restored = testbed.run_module(
            "volume_backup", dict(name=target, state="restore", archive=result["archive"], safety_dir=str(tmp_path))
        )
        assert restored["changed"] and not restored.get("failed"), restored
        assert listing(target, images) == listing(source, images), "restored from the %s archive" % method
        other = made["api" if method == "mountpoint" else "mountpoint"]["archive"]
        again = testbed.run_module("volume_backup", dict(name=target, state="restore", archive=other))
        assert not again["changed"] and not again.get("failed"), again


@contextlib.contextmanager
def engine_over_tcp():
    """This host's engine reached over TCP on 127.0.0.1 (a byte relay to its Unix socket): to the
    module, an engine on another machine."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def pump(src, dst):
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve():
        while not stop.is_set():
            try:
                client, _addr = listener.accept()
            except OSError:
                continue
            client.settimeout(None)
            engine = socket.socket(socket.AF_UNIX)
            engine.connect("/var/run/docker.sock")
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield "tcp://127.0.0.1:%d" % listener.getsockname()[1]
    finally:
        stop.set()
        server.join(5)
        listener.close()


@pytest.mark.fault(
    "method=mountpoint for a volume it cannot read there (driver options, a remote engine, in use)",
    where="volume_backup backup",
    expected=REFUSED,
)
def test_mountpoint_that_does_not_qualify_is_refused_saying_why_and_auto_uses_the_engine(
    volumes, compose_stack, images, tmp_path, fault_case
):
    tmpfs = testbed.engine_name("st-vol-tmpfs")
    testbed.run(["docker", "volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", tmpfs])
    try:
        busybox(tmpfs, "echo a > /data/a", images)
        refused = backup(tmpfs, tmp_path / "tmpfs", method="mountpoint")
        assert refused["failed"] and "has driver options (device, type)" in refused["msg"], refused
        assert "nothing was changed" in refused["msg"] and not (tmp_path / "tmpfs").exists()
        fault_case.observed(refused["msg"])
        assert backup(tmpfs, tmp_path / "tmpfs")["method"] == "api"
    finally:
        testbed.run(["docker", "volume", "rm", "-f", tmpfs], check=False)

    vol = volumes("echo a > /data/a", images)
    with engine_over_tcp() as remote:
        refused = backup(vol, tmp_path / "remote", method="mountpoint", docker_host=remote)
        assert refused["failed"] and "not reached through this host's Unix socket" in refused["msg"], refused
        assert not (tmp_path / "remote").exists()
        made = backup(vol, tmp_path / "remote", docker_host=remote)
        assert made["method"] == "api" and not made.get("failed"), made

    stack = compose_stack(
        "services:\n  s:\n    image: {bb}\n    command: [sleep, '600']\n    volumes: [data:/data]\n"
        "volumes:\n  data:\n".format(bb=images["BUSYBOX_IMAGE"])
    )
    stack.up(wait=False)
    refused = backup(stack.volume("data"), tmp_path / "busy", method="mountpoint", stop_containers=False)
    assert refused["failed"] and "stop_containers is false" in refused["msg"], refused
    fault_case.observed(refused["msg"])
    assert not (tmp_path / "busy").exists()
    running = testbed.run(["docker", "inspect", "-f", "{{.State.Running}}", stack.container_id("s")]).stdout.strip()
    assert running == "true"
    stopped_for_it = backup(stack.volume("data"), tmp_path / "busy", method="mountpoint")
    assert stopped_for_it["method"] == "mountpoint" and len(stopped_for_it["stopped_containers"]) == 1, stopped_for_it


def test_restore_replaces_contents_completely_and_keeps_a_safety_copy(volumes, images, tmp_path):
    vol = volumes("echo v1 > /data/keep; echo old > /data/.old-dotfile", images)
    first = backup(vol, tmp_path)
    busybox(vol, "echo v2 > /data/keep; echo new > /data/.new-dotfile; rm /data/.old-dotfile", images)
    before = listing(vol, images)
    restored = testbed.run_module("volume_backup", dict(name=vol, state="restore", archive=first["archive"]))
    assert restored["changed"], restored
    after = busybox(vol, "ls -A /data; cat /data/keep", images, "ro").split()
    assert after == [".old-dotfile", "keep", "v1"], after
    # The safety copy holds what the restore replaced, and restores it exactly.
    undo = testbed.run_module("volume_backup", dict(name=vol, state="restore", archive=restored["safety_archive"]))
    assert undo["changed"] and listing(vol, images) == before


def test_gzip_and_none_round_trip(volumes, images, tmp_path):
    vol = volumes("echo a > /data/a; mkdir /data/b", images)
    for compression in ("gzip", "none"):
        result = backup(vol, tmp_path / compression, compression=compression)
        assert result["archive"].endswith({"gzip": ".tar.gz", "none": ".tar"}[compression]), result
        check = testbed.run_module("volume_backup", dict(archive=result["archive"], state="verify"))
        assert not check["changed"] and not check.get("failed"), check


def test_postgres_volume_backed_up_consistently_restores_into_a_fresh_volume(compose_stack, images, tmp_path):
    port = testbed.free_port()
    stack = compose_stack(
        """\
services:
  db:
    image: {pg}
    environment:
      POSTGRES_PASSWORD: pw
      POSTGRES_DB: shop
    volumes:
      - data:/var/lib/postgresql/data
  app:
    image: {app}:v1
    environment:
      DATABASE_URL: postgresql://postgres:pw@db/shop
    ports:
      - "127.0.0.1:{port}:8080"
    depends_on:
      db:
        condition: service_healthy
volumes:
  data:
""".format(pg=images["POSTGRES_IMAGE"], app=images["APP_IMAGE"], port=port)
    )
    stack.up()
    for n in range(25):
        testbed.http_post("http://127.0.0.1:%d/records" % port, "row %d" % n)
    result = backup(stack.volume("data"), tmp_path)
    assert stack.container_id("db") and result["stopped_containers"] == ["%s-db-1" % stack.name], result
    assert (
        testbed.run(["docker", "inspect", "-f", "{{.State.Running}}", stack.container_id("db")]).stdout.strip()
        == "true"
    )

    fresh = testbed.engine_name("st-pg-fresh")
    try:
        restored = testbed.run_module(
            "volume_backup",
            dict(name=fresh, state="restore", archive=result["archive"], create_volume=True, safety_dir=str(tmp_path)),
        )
        assert restored["changed"], restored
        labels = json.loads(testbed.run(["docker", "volume", "inspect", "-f", "{{json .Labels}}", fresh]).stdout)
        assert labels["com.docker.compose.project"] == stack.name
        assert testbed.postgres_rows_in_volume(fresh) == "25"
    finally:
        testbed.run(["docker", "volume", "rm", "-f", fresh], check=False)


def test_check_mode_writes_nothing(volumes, images, tmp_path):
    vol = volumes("echo a > /data/a", images)
    checked = testbed.run_module("volume_backup", dict(name=vol, dest=str(tmp_path / "never")), check=True)
    assert checked["changed"] and not (tmp_path / "never").exists(), checked
    real = backup(vol, tmp_path)
    busybox(vol, "echo changed > /data/a", images)
    would = testbed.run_module("volume_backup", dict(name=vol, state="restore", archive=real["archive"]), check=True)
    assert would["changed"] and "a: " in " ".join(would["differences"])
    assert busybox(vol, "cat /data/a", images, "ro").strip() == "changed"
    assert sorted(os.listdir(tmp_path)) == sorted([Path(real["archive"]).name, Path(real["manifest"]).name])


def test_keep_prunes_only_our_own_archives(volumes, images, tmp_path):
    vol = volumes("echo a > /data/a", images)
    foreign = tmp_path / ("%s-20000101T000000000000Z.tar.zst" % vol)
    foreign.write_bytes(b"not ours")
    archives = [backup(vol, tmp_path, keep=2)["archive"] for attempt in range(3)]
    assert not os.path.exists(archives[0]) and not os.path.exists(archives[0] + ".manifest.json")
    assert all(os.path.exists(a) for a in archives[1:])
    assert foreign.exists(), "a file this module did not write was pruned"


def test_project_backs_up_every_volume(compose_stack, images, tmp_path):
    stack = compose_stack(
        "services:\n  s:\n    image: {bb}\n    command: [sleep, '600']\n    volumes: [one:/one, two:/two]\n"
        "volumes:\n  one:\n  two:\n".format(bb=images["BUSYBOX_IMAGE"])
    )
    stack.up(wait=False)
    result = testbed.run_module("volume_backup", dict(project=stack.name, dest=str(tmp_path)))
    assert sorted(b["volume"] for b in result["backups"]) == sorted([stack.volume("one"), stack.volume("two")])


def test_a_disk_usage_read_waits_while_another_runs_on_the_engine(compose_stack, images, tmp_path):
    """The engine computes one disk usage at a time ("a disk usage operation is already running"):
    two rollbacks on one host measure their volumes at the same time. Here the engine's disk usage
    is read back to back through one open connection (bounded) while the module measures the
    project's volumes, again until the engine was seen turning a read away (at least 3 runs, at
    most 15 or 150 s): every run succeeds all the same."""
    stack = compose_stack(
        "services:\n  s:\n    image: {bb}\n    command: [sleep, '600']\n    volumes: [one:/one]\n"
        "volumes:\n  one:\n".format(bb=images["BUSYBOX_IMAGE"])
    )
    stack.up(wait=False)
    client = docker.from_env(timeout=60)
    collisions = []

    def another_df():
        # One connection, no process to start between reads: the engine is busy nearly all the time.
        try:
            client.df()
        except docker.errors.APIError as exc:
            collisions.extend(["busy"] if "already running" in str(exc) else [])
        return False

    runs = 0
    deadline = time.monotonic() + 150
    try:
        with testbed.repeated(another_df, every=0.0, max_seconds=180):
            while runs < 3 or (not collisions and runs < 15 and time.monotonic() < deadline):
                result = testbed.run_module("volume_backup", dict(project=stack.name, dest=str(tmp_path)), check=True)
                assert not result.get("failed"), result
                runs += 1
    finally:
        client.close()
    # The test can fail: the engine did turn away concurrent reads while the module ran.
    assert collisions, "no disk usage read collided in %d runs: the test proved nothing" % runs


# -- bad input: a clear error and nothing changed -----------------------------------------


@pytest.mark.fault("a volume that does not exist", where="volume_backup backup", expected=REFUSED)
def test_missing_volume_is_not_created(tmp_path, fault_case):
    name = testbed.engine_name("st-missing")
    result = backup(name, tmp_path)
    assert result["failed"] and "volume %s does not exist" % name in result["msg"]
    fault_case.observed(result["msg"])
    assert testbed.run(["docker", "volume", "inspect", name], check=False).returncode != 0
    assert os.listdir(tmp_path) == []


def corrupt(archive, how):
    data = bytearray(Path(archive).read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    Path(archive).write_bytes(bytes(data))


@pytest.mark.fault(
    "a backup archive damaged ({how}) between backup and restore",
    where="volume_backup verify, restore",
    expected=REFUSED,
)
@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_damaged_archive_is_refused_before_the_volume_is_touched(volumes, images, tmp_path, how, fault_case):
    vol = volumes("echo original > /data/a", images)
    result = backup(vol, tmp_path)
    busybox(vol, "echo current > /data/a", images)
    corrupt(result["archive"], how)
    for state in ("verify", "restore"):
        answer = testbed.run_module("volume_backup", dict(name=vol, state=state, archive=result["archive"]))
        assert answer["failed"] and "does not match its manifest" in answer["msg"], answer
    fault_case.observed(answer["msg"])
    assert busybox(vol, "cat /data/a", images, "ro").strip() == "current"


@pytest.mark.fault(
    "a manifest whose member checksum the restored data does not match (and an archive that does not exist)",
    where="volume_backup restore",
    expected=REVERTED,
)
def test_missing_archive_and_manifest_mismatch(volumes, images, tmp_path, fault_case):
    vol = volumes("echo a > /data/a", images)
    missing = testbed.run_module(
        "volume_backup", dict(name=vol, state="restore", archive=str(tmp_path / "nope.tar.zst"))
    )
    assert missing["failed"] and "does not exist" in missing["msg"]
    fault_case.observed(missing["msg"])
    result = backup(vol, tmp_path)
    manifest = json.loads(Path(result["manifest"]).read_text())
    manifest["members"]["a"]["sha256"] = "0" * 64
    Path(result["manifest"]).write_text(json.dumps(manifest))
    answer = testbed.run_module("volume_backup", dict(name=vol, state="restore", archive=result["archive"]))
    assert answer["failed"] and "a: sha256 differ" in answer["msg"], answer
    fault_case.observed(answer["msg"])


def hostile_archive(tmp_path, *members):
    """A tar with a hostile member (after the ones it needs) and a manifest that matches it byte for byte."""
    import hashlib

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        root.mode = 0o755
        tar.addfile(root)
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    path = tmp_path / ("hostile-%s.tar" % testbed.unique_name("h"))
    path.write_bytes(buf.getvalue())
    manifest = {
        "tool": "stackops.rollback.volume_backup",
        "compression": "none",
        "members": {},
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        "size": len(buf.getvalue()),
    }
    Path(str(path) + ".manifest.json").write_text(json.dumps(manifest))
    return path


def member(name, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.fault("an archive with a hostile member: {reason}", where="volume_backup restore", expected=REFUSED)
@pytest.mark.parametrize(
    ("info", "reason"),
    [
        (member("../escape"), "path leaves the volume"),
        (member("./a/../../escape"), "path leaves the volume"),
        (member("/etc/evil"), "absolute path"),
        ((member("./etc", tarfile.SYMTYPE, "/etc"), member("./etc/passwd")), "written through a symlink"),
        ((member("./up", tarfile.SYMTYPE, ".."), member("./up/escape")), "written through a symlink"),
        (member("./hard", tarfile.LNKTYPE, "../outside"), "hard link leaves the volume"),
        (member("./dev", tarfile.CHRTYPE), "device node"),
    ],
)
def test_hostile_members_are_refused(volumes, images, tmp_path, info, reason, fault_case):
    vol = volumes("echo safe > /data/a", images)
    archive = hostile_archive(tmp_path, *(info if isinstance(info, tuple) else (info,)))
    answer = testbed.run_module("volume_backup", dict(name=vol, state="restore", archive=str(archive)))
    assert answer["failed"] and "refusing member" in answer["msg"] and reason in answer["msg"], answer
    fault_case.observed(answer["msg"])
    assert busybox(vol, "ls -A /data; cat /data/a", images, "ro").split() == ["a", "safe"]


@pytest.mark.fault(
    "a backup destination that is not writable (a read-only filesystem)", where="volume_backup backup", expected=REFUSED
)
def test_dest_not_writable(volumes, images, tmp_path, fault_case):
    vol = volumes("echo a > /data/a", images)
    with testbed.small_filesystem(tmp_path / "ro", size="1m", options="ro") as readonly:
        answer = backup(vol, readonly)
        assert answer["failed"] and "is not writable" in answer["msg"], answer
        fault_case.observed(answer["msg"])


@pytest.mark.fault(
    "the backup destination's disk fills up during the copy",
    where="volume_backup backup",
    expected=REFUSED,
)
def test_disk_full_leaves_no_partial_file_and_restarts_the_containers(compose_stack, images, tmp_path, fault_case):
    stack = compose_stack(
        "services:\n  s:\n    image: {bb}\n    command: [sleep, '600']\n    volumes: [data:/data]\n"
        "volumes:\n  data:\n".format(bb=images["BUSYBOX_IMAGE"])
    )
    stack.up(wait=False)
    busybox(stack.volume("data"), "dd if=/dev/urandom of=/data/big bs=1M count=8 2>/dev/null", images)
    with testbed.small_filesystem(tmp_path / "small") as small:
        answer = backup(stack.volume("data"), small)
        assert answer["failed"] and "No space left on device" in answer["msg"], answer
        fault_case.observed(answer["msg"])
        assert os.listdir(small) == [], os.listdir(small)
    running = testbed.run(["docker", "inspect", "-f", "{{.State.Running}}", stack.container_id("s")]).stdout.strip()
    assert running == "true", "the container stopped for the copy was not started again"


@pytest.mark.fault("no Docker daemon answering at docker_host", where="volume_backup backup", expected=REFUSED)
def test_stopped_docker_daemon_is_a_clear_error(volumes, images, tmp_path, fault_case):
    vol = volumes("echo a > /data/a", images)
    answer = testbed.run_module(
        "volume_backup", dict(name=vol, dest=str(tmp_path), docker_host="unix://%s/no-daemon.sock" % tmp_path)
    )
    assert answer["failed"] and "cannot reach the Docker engine" in answer["msg"], answer
    fault_case.observed(answer["msg"])
    assert os.listdir(tmp_path) == ["no-daemon.sock"] or os.listdir(tmp_path) == []
