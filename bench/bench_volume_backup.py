"""volume_backup against the field guide's helper-container tar and against bare floors, side by side.

For each volume (two mixes at 1 GiB: text-heavy and random-heavy, and the default mix at 0.25,
1 and 4 GiB), in one run: our backup reading the mount point and through the engine, the field
guide's `docker run ... tar czf`, a bare `tar -c | zstd -3 -T0` of the volume's directory (the
floor on this machine) and the same with the fsync and `zstd -t` read-back that every archive of
ours gets; our restore (into a fresh volume, through the engine) against `rm -rf /data/* && tar
xzf` and against a bare upload of the same tar through the engine. Our module runs as its own
process so that its peak memory (VmHWM) can be read. Run: `make bench BENCH=volume_backup`
(SIZES_MB to change the sizes, MIXES the mixes).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "testbed"))

import report  # noqa: E402
import testbed  # noqa: E402

# (logs %, random %, small files %) of the volume's size.
MIXES = {"mixed": (45, 45, 10), "text-heavy": (70, 20, 10), "random-heavy": (20, 70, 10)}
RUNS = [
    ("text-heavy", 1024),
    ("random-heavy", 1024),
    ("mixed", 256),
    ("mixed", 1024),
    ("mixed", 4096),
]
if os.environ.get("SIZES_MB") or os.environ.get("MIXES"):
    RUNS = [
        (mix, int(size))
        for mix in os.environ.get("MIXES", "mixed").split(",")
        for size in os.environ.get("SIZES_MB", "1024").split(",")
    ]
METHOD = (
    "Ours: the module run as a process on the host, zstd -3 -T0, every member recorded with its "
    "sha256, the file fsynced, checked with `zstd -t` and hashed before the rename; restore into a "
    "fresh volume through the engine with the archive's sha256 and headers checked against its "
    "manifest first, a safety copy, every file hashed on its way in, and every restored member's "
    "type, size, mode, owner, time and link compared with the manifest after. Field guide: busybox "
    "(standing in for alpine) `tar czf` / `rm -rf /data/* && tar xzf` in a helper container, "
    "nothing checked. Bare: GNU tar of the mount point piped into `zstd -3 -T0` (nothing hashed, "
    "synced or read back), and the same tar uploaded through the engine's archive endpoint."
)
MODULE = testbed.REPO_ROOT / "plugins" / "modules" / "volume_backup.py"


def populate(volume, mix, size_mb):
    """Logs, random data and small files (about 50 KiB each on average) in the mix's shares."""
    text_pct, random_pct, small_pct = MIXES[mix]
    script = (
        "set -e; mkdir -p /data/logs /data/blobs; "
        "yes '2026-11-24T12:00:00Z INFO request handled path=/api/orders status=200 duration_ms=12 user=4711' "
        "| head -c %d > /data/logs/app.log; "
        "dd if=/dev/urandom of=/data/blobs/random.bin bs=1M count=%d 2>/dev/null"
        % (size_mb * text_pct // 100 * 1024 * 1024, size_mb * random_pct // 100)
    )
    testbed.run(
        ["docker", "run", "--rm", "-v", "%s:/data" % volume, testbed.IMAGES["BUSYBOX_IMAGE"], "sh", "-c", script]
    )
    small_files = max(1, size_mb * small_pct // 100 * 1024 // 50)
    # 20k small files, put through the engine in one tar (a shell loop would take minutes).
    rng = random.Random(42)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n in range(small_files):
            data = (
                (("record %d " % n) * rng.randint(1000, 9000)).encode()
                if n % 3
                else os.urandom(rng.randint(1000, 60000))
            )
            info = tarfile.TarInfo("small/%03d/file-%05d.txt" % (n // 200, n))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    helper = "bench-populate-%d" % os.getpid()
    testbed.run(
        ["docker", "create", "--name", helper, "-v", "%s:/data" % volume, testbed.IMAGES["BUSYBOX_IMAGE"], "true"]
    )
    try:
        subprocess.run(["docker", "cp", "-", "%s:/data" % helper], input=buf.getvalue(), check=True)
    finally:
        testbed.run(["docker", "rm", "-f", helper], check=False)


def run_module(args):
    """Run the module as a plain process (as Ansible would on the host); return (result, peak RSS MiB)."""
    env = dict(os.environ, PYTHONPATH=str(testbed.COLLECTIONS_PATH))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, fh)
    proc = subprocess.Popen(
        [sys.executable, str(MODULE), fh.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    peak = {"kb": 0}

    def watch():
        status = Path("/proc/%d/status" % proc.pid)
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak["kb"] = max(peak["kb"], int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    os.unlink(fh.name)
    result = json.loads(out)
    if result.get("failed"):
        raise RuntimeError("module failed: %s %s" % (result.get("msg"), err[-2000:]))
    return result, peak["kb"] / 1024


def compress(chunks, out):
    zstd = subprocess.Popen(["zstd", "-q", "-T0", "-3", "-c"], stdin=subprocess.PIPE, stdout=out)
    for chunk in chunks:
        zstd.stdin.write(chunk)
    zstd.stdin.close()
    return zstd.wait()


def endpoint_floor(source, fresh, raw_tar):
    """The Engine's archive endpoints alone, as fast as a client can drive them: the volume's tar
    streamed out to nowhere, then (kept in raw_tar) uploaded into an empty volume. Nothing is
    compressed, parsed, hashed or checked: a floor for any tool that copies through the API."""
    import docker

    client = docker.from_env(timeout=600)
    image = testbed.IMAGES["BUSYBOX_IMAGE"]
    reader = client.containers.create(image, "true", volumes={source: {"bind": "/v", "mode": "ro"}})
    writer = client.containers.create(image, "true", volumes={fresh: {"bind": "/v", "mode": "rw"}})
    try:
        chunks, _stat = reader.get_archive("/v/.", chunk_size=1024 * 1024)
        t_out, _n = timed(lambda: sum(len(c) for c in chunks))
        chunks, _stat = reader.get_archive("/v/.", chunk_size=1024 * 1024)
        with open(str(raw_tar) + ".zst", "wb") as out:
            t_out_zstd, _rc = timed(lambda: compress(chunks, out))
        os.unlink(str(raw_tar) + ".zst")
        chunks, _stat = reader.get_archive("/v/.", chunk_size=1024 * 1024)
        with open(raw_tar, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        with open(raw_tar, "rb") as fh:
            t_in, _ok = timed(lambda: client.api.put_archive(writer.id, "/v", fh))
    finally:
        for container in (reader, writer):
            container.remove(force=True)
    return t_out, t_out_zstd, t_in


def bare_pipe(volume, out, checked=False):
    """GNU tar of the volume's mount point into zstd -3 -T0: the floor of a backup on this host.
    checked: plus what every archive of ours gets after it is written (fsync, `zstd -t`)."""
    mountpoint = json.loads(testbed.run(["docker", "volume", "inspect", volume]).stdout)[0]["Mountpoint"]
    with open(out, "wb") as fh:
        tar = subprocess.Popen(["tar", "-C", mountpoint, "-cf", "-", "."], stdout=subprocess.PIPE)
        zstd = subprocess.run(["zstd", "-q", "-3", "-T0", "-c"], stdin=tar.stdout, stdout=fh, check=True)
        tar.stdout.close()
        tar.wait()
        if checked:
            os.fsync(fh.fileno())
    if checked:
        subprocess.run(["zstd", "-q", "-t", str(out)], check=True)
    os.unlink(out)
    return zstd.returncode


def speed(ours, guide):
    """'**2.9 x** faster' or '**2.1 x** slower': a ratio read the right way round."""
    if ours <= guide:
        return "**%.1f x** faster" % (guide / ours)
    return "**%.1f x** slower" % (ours / guide)


def timed(fn):
    t0 = time.monotonic()
    value = fn()
    return time.monotonic() - t0, value


def measure(mix, size_mb, work):
    """Every figure of one volume, side by side."""
    source = testbed.engine_name("bench-vb-src")
    fresh = {k: testbed.engine_name("bench-vb-" + k) for k in ("ours", "guide", "floor")}
    try:
        testbed.run(["docker", "volume", "create", source])
        t_pop, _populated = timed(lambda: populate(source, mix, size_mb))
        size = testbed.run(
            [
                "docker",
                "run",
                "--rm",
                "-v",
                "%s:/data:ro" % source,
                testbed.IMAGES["BUSYBOX_IMAGE"],
                "du",
                "-sm",
                "/data",
            ]
        ).stdout.split()[0]
        print("%s volume populated: %s MiB in %.1f s" % (mix, size, t_pop), flush=True)
        for sub in ("mountpoint", "api", "guide"):
            (work / sub).mkdir(parents=True)
        guide_run = ["docker", "run", "--rm", "-v", "%s:/backup" % (work / "guide")]
        guide_backup = ["-v", "%s:/data:ro" % source, testbed.IMAGES["BUSYBOX_IMAGE"], "tar", "czf"]
        t_guide_backup, _done = timed(
            lambda: testbed.run([*guide_run, *guide_backup, "/backup/volume.tar.gz", "-C", "/data", "."])
        )
        backups = {}
        for method in ("mountpoint", "api"):
            args = {"name": source, "dest": str(work / method), "stop_containers": False, "method": method}
            backups[method] = timed(lambda a=args: run_module(a))
        t_bare, _rc = timed(lambda: bare_pipe(source, work / "bare.tar.zst"))
        t_bare_checked, _rc = timed(lambda: bare_pipe(source, work / "bare.tar.zst", checked=True))
        guide_size = (work / "guide" / "volume.tar.gz").stat().st_size
        t_ours, (backup, rss_backup) = backups["mountpoint"]
        print(
            "backup: ours %.1f s (api %.1f s), guide %.1f s, bare %.1f s"
            % (t_ours, backups["api"][0], t_guide_backup, t_bare)
        )

        testbed.run(["docker", "volume", "create", fresh["guide"]])
        guide_restore = ["-v", "%s:/data" % fresh["guide"], testbed.IMAGES["BUSYBOX_IMAGE"], "sh", "-c"]
        t_guide_restore, _done = timed(
            lambda: testbed.run(
                [*guide_run, *guide_restore, "rm -rf /data/* && tar xzf /backup/volume.tar.gz -C /data"]
            )
        )
        restore_args = {
            "name": fresh["ours"],
            "state": "restore",
            "archive": backup["archive"],
            "create_volume": True,
            "safety_dir": str(work / "mountpoint"),
        }
        t_ours_restore, (_restored, rss_restore) = timed(lambda: run_module(restore_args))
        testbed.run(["docker", "volume", "create", fresh["floor"]])
        t_floor_out, t_floor_zstd, t_floor_in = endpoint_floor(source, fresh["floor"], work / "raw.tar")
        print("restore: ours %.1f s, guide %.1f s, bare upload %.1f s" % (t_ours_restore, t_guide_restore, t_floor_in))
        return {
            "mix": mix,
            "size_mib": int(size),
            "backup": t_ours,
            "backup_api": backups["api"][0],
            "guide_backup": t_guide_backup,
            "bare": t_bare,
            "bare_checked": t_bare_checked,
            "endpoint_out": t_floor_out,
            "endpoint_out_zstd": t_floor_zstd,
            "archive_mib": backup["size"] / 2**20,
            "guide_mib": guide_size / 2**20,
            "restore": t_ours_restore,
            "guide_restore": t_guide_restore,
            "bare_upload": t_floor_in,
            "rss_backup": rss_backup,
            "rss_restore": rss_restore,
        }
    finally:
        for volume in [source, *fresh.values()]:
            testbed.run(["docker", "volume", "rm", "-f", volume], check=False)
        shutil.rmtree(work, ignore_errors=True)


def ratio(ours, other):
    return "%.2f" % (ours / other)


def main():
    root = Path(tempfile.mkdtemp(prefix="bench-vb-"))
    try:
        results = [measure(mix, size, root / ("%s-%d" % (mix, size))) for mix, size in RUNS]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    backup_rows = [
        [
            "%s %d MiB" % (r["mix"], r["size_mib"]),
            "%.1f" % r["backup"],
            "%.1f" % r["backup_api"],
            "%.1f" % r["guide_backup"],
            "%.1f / %.1f" % (r["bare"], r["bare_checked"]),
            "**%.1f x**" % (r["guide_backup"] / r["backup"]),
            "**%s** / %s" % (ratio(r["backup"], r["bare"]), ratio(r["backup"], r["bare_checked"])),
            "%.0f / %.0f (**%+.1f %%**)"
            % (r["archive_mib"], r["guide_mib"], 100 * (r["archive_mib"] / r["guide_mib"] - 1)),
            "%.2f" % (r["backup"] / (r["size_mib"] / 1024)),
            "%.0f" % r["rss_backup"],
        ]
        for r in results
    ]
    restore_rows = [
        [
            "%s %d MiB" % (r["mix"], r["size_mib"]),
            "%.1f" % r["restore"],
            "%.1f" % r["guide_restore"],
            "%.1f" % r["bare_upload"],
            speed(r["restore"], r["guide_restore"]),
            "**%s**" % ratio(r["restore"], r["bare_upload"]),
            "%.2f" % (r["restore"] / (r["size_mib"] / 1024)),
            "%.0f" % r["rss_restore"],
        ]
        for r in results
    ]
    body = "\n".join(
        [
            METHOD,
            "",
            "Shares (logs / random / small files of about 50 KiB): "
            + ", ".join("%s %d / %d / %d %%" % ((m,) + MIXES[m]) for m in sorted({r["mix"] for r in results}))
            + ".",
            "",
            "### Backup (seconds; ours reads the mount point, method=auto picks it here)",
            "",
            report.table(
                [
                    "volume",
                    "ours",
                    "ours through the engine",
                    "field guide tar czf",
                    "bare tar into zstd, without / with fsync and zstd -t",
                    "vs field guide (goal >= 5 x)",
                    "x of bare, without / with its checks (goal <= 1.3)",
                    "archive MiB ours / guide (goal <= +10 %)",
                    "s per GiB",
                    "peak MiB (goal < 100)",
                ],
                backup_rows,
            ),
            "",
            "### Restore (seconds; through the engine, as every restore writes)",
            "",
            report.table(
                [
                    "volume",
                    "ours",
                    "field guide tar xzf",
                    "bare upload",
                    "vs field guide (goal: faster)",
                    "x of bare upload (goal <= 1.3)",
                    "s per GiB",
                    "peak MiB (goal < 100)",
                ],
                restore_rows,
            ),
        ]
    )
    report.write_section(
        "volume_backup",
        "volume_backup: backup and restore, two mixes and three sizes",
        "make bench BENCH=volume_backup",
        body,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
