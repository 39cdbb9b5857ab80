"""volume_backup versus the field guide's helper-container tar, on the same ~1 GiB volume.

The volume holds compressible text (logs), incompressible random data and 20,000 small files.
Side by side in one run: our backup vs `docker run ... tar czf`, our restore (into a fresh
volume) vs `sh -c "rm -rf /data/* && tar xzf ..."`. Our module runs as its own process so that
its peak memory (VmHWM) can be read. Run: `make bench BENCH=volume_backup` (SIZE_MB to scale).
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

SIZE_MB = int(os.environ.get("SIZE_MB", "1024"))
SMALL_FILES = 20000
METHOD = (
    "Ours: the module run as a process on the host, zstd -3 -T0, every member recorded with its "
    "sha256, the file checked with `zstd -t` and hashed before the rename; restore into a fresh volume "
    "with the archive's sha256 and headers checked against its manifest first, a safety copy, "
    "every file hashed on its way in, and every restored member's type, size, mode, owner, time "
    "and link compared with the manifest after. Field guide: busybox (standing in for alpine) "
    "`tar czf` / `rm -rf /data/* && tar xzf` in a helper container."
)
NOTE = (
    "Our restore does more than the field guide's: it verifies the archive (sha256 and every "
    "header) before touching the volume, writes a safety backup of what it replaces, and checks "
    "every restored member after. Both of ours copy through the Engine's archive endpoints (no "
    "helper image, any engine), and those set a floor: the row 'endpoints alone' is the raw tar "
    "streamed out of the volume (to nowhere, then into `zstd -3` writing a file) and uploaded into "
    "an empty one, in a bare loop with nothing parsed, hashed or checked, in the same run. Where it "
    "is near what a goal needs, no tool that copies through the API with checks meets that goal on "
    "this machine."
)
MODULE = testbed.REPO_ROOT / "plugins" / "modules" / "volume_backup.py"


def populate(volume):
    text_mb = SIZE_MB * 45 // 100
    random_mb = SIZE_MB * 45 // 100
    script = (
        "set -e; mkdir -p /data/logs /data/blobs; "
        "yes '2026-11-24T12:00:00Z INFO request handled path=/api/orders status=200 duration_ms=12 user=4711' "
        "| head -c %d > /data/logs/app.log; "
        "dd if=/dev/urandom of=/data/blobs/random.bin bs=1M count=%d 2>/dev/null" % (text_mb * 1024 * 1024, random_mb)
    )
    testbed.run(
        ["docker", "run", "--rm", "-v", "%s:/data" % volume, testbed.IMAGES["BUSYBOX_IMAGE"], "sh", "-c", script]
    )
    # 20k small files, put through the engine in one tar (a shell loop would take minutes).
    rng = random.Random(42)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n in range(SMALL_FILES):
            data = (("record %d " % n) * rng.randint(5, 200)).encode() if n % 3 else os.urandom(rng.randint(100, 3000))
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


def speed(ours, guide):
    """'**2.9 x** faster' or '**2.1 x** slower': a ratio read the right way round."""
    if ours <= guide:
        return "**%.1f x** faster" % (guide / ours)
    return "**%.1f x** slower" % (ours / guide)


def timed(fn):
    t0 = time.monotonic()
    value = fn()
    return time.monotonic() - t0, value


def main():
    work = Path(tempfile.mkdtemp(prefix="bench-vb-"))
    source = testbed.unique_name("bench-vb-src")
    fresh_ours = testbed.unique_name("bench-vb-ours")
    fresh_guide = testbed.unique_name("bench-vb-guide")
    fresh_floor = testbed.unique_name("bench-vb-floor")
    try:
        testbed.run(["docker", "volume", "create", source])
        t_pop, _populated = timed(lambda: populate(source))
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
        print("volume populated: %s MiB in %.1f s" % (size, t_pop), flush=True)
        (work / "ours").mkdir()
        (work / "guide").mkdir()

        t_guide_backup, _guide_backup = timed(
            lambda: testbed.run(
                [
                    "docker",
                    "run",
                    "--rm",
                    "-v",
                    "%s:/data:ro" % source,
                    "-v",
                    "%s:/backup" % (work / "guide"),
                    testbed.IMAGES["BUSYBOX_IMAGE"],
                    "tar",
                    "czf",
                    "/backup/volume.tar.gz",
                    "-C",
                    "/data",
                    ".",
                ]
            )
        )
        t_ours_backup, (backup, rss_backup) = timed(
            lambda: run_module({"name": source, "dest": str(work / "ours"), "stop_containers": False})
        )
        guide_size = (work / "guide" / "volume.tar.gz").stat().st_size
        print(
            "backup: ours %.1f s (%.0f MiB), guide %.1f s (%.0f MiB)"
            % (t_ours_backup, backup["size"] / 2**20, t_guide_backup, guide_size / 2**20),
            flush=True,
        )

        testbed.run(["docker", "volume", "create", fresh_guide])
        t_guide_restore, _guide_restore = timed(
            lambda: testbed.run(
                [
                    "docker",
                    "run",
                    "--rm",
                    "-v",
                    "%s:/data" % fresh_guide,
                    "-v",
                    "%s:/backup" % (work / "guide"),
                    testbed.IMAGES["BUSYBOX_IMAGE"],
                    "sh",
                    "-c",
                    "rm -rf /data/* && tar xzf /backup/volume.tar.gz -C /data",
                ]
            )
        )
        t_ours_restore, (_restored, rss_restore) = timed(
            lambda: run_module(
                {
                    "name": fresh_ours,
                    "state": "restore",
                    "archive": backup["archive"],
                    "create_volume": True,
                    "safety_dir": str(work / "ours"),
                }
            )
        )
        print("restore: ours %.1f s, guide %.1f s" % (t_ours_restore, t_guide_restore), flush=True)

        testbed.run(["docker", "volume", "create", fresh_floor])
        t_floor_out, t_floor_zstd, t_floor_in = endpoint_floor(source, fresh_floor, work / "raw.tar")
        print(
            "engine endpoints alone: out %.1f s, out into zstd %.1f s, in %.1f s"
            % (t_floor_out, t_floor_zstd, t_floor_in),
            flush=True,
        )

        rows = [
            [
                "backup",
                "%.1f s" % t_ours_backup,
                "%.1f s" % t_guide_backup,
                speed(t_ours_backup, t_guide_backup),
                ">= 5 x",
            ],
            [
                "archive size",
                "%.0f MiB (zstd)" % (backup["size"] / 2**20),
                "%.0f MiB (gzip)" % (guide_size / 2**20),
                "**%+.1f %%**" % (100.0 * (backup["size"] - guide_size) / guide_size),
                "<= +10 %",
            ],
            [
                "restore",
                "%.1f s" % t_ours_restore,
                "%.1f s" % t_guide_restore,
                speed(t_ours_restore, t_guide_restore),
                ">= 2 x",
            ],
            [
                "the Engine's archive endpoints alone: out / out into zstd -3 / in",
                "%.1f s / %.1f s / %.1f s" % (t_floor_out, t_floor_zstd, t_floor_in),
                "-",
                "goals need %.1f s (backup) / %.1f s (restore)" % (t_guide_backup / 5, t_guide_restore / 2),
                "-",
            ],
            [
                "peak memory of the module",
                "%.0f MiB backup, %.0f MiB restore" % (rss_backup, rss_restore),
                "-",
                "-",
                "< 100 MiB",
            ],
        ]
        heading = "Volume: %s MiB (45 %% compressible logs, 45 %% random data, %d small files). " % (size, SMALL_FILES)
        table = report.table(["", "stackops.rollback.volume_backup", "field guide", "ratio", "goal"], rows)
        body = "\n".join([heading + METHOD, "", table, "", NOTE])
        report.write_section(
            "volume_backup",
            "volume_backup: backup and restore of a %s MiB volume" % size,
            "make bench BENCH=volume_backup",
            body,
        )
    finally:
        for volume in (source, fresh_ours, fresh_guide, fresh_floor):
            testbed.run(["docker", "volume", "rm", "-f", volume], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
