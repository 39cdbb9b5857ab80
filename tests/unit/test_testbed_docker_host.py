"""The test bed fails loudly, never silently, when the Docker engine cannot start."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "testbed" / "docker-host.sh"


def test_engine_that_cannot_start_fails_with_the_reason(tmp_path):
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    dockerd = fakebin / "dockerd"
    dockerd.write_text('#!/bin/sh\necho "failed to start daemon: simulated" >&2\nexit 1\n')
    dockerd.chmod(0o755)
    env = dict(
        os.environ,
        PATH="%s:%s" % (fakebin, os.environ["PATH"]),
        DOCKER_HOST="unix://%s/nothing.sock" % tmp_path,
        DOCKERD_LOG=str(tmp_path / "dockerd.log"),
    )
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "the Docker engine could not start" in result.stderr
    assert "failed to start daemon: simulated" in result.stderr
