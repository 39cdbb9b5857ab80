"""Smoke test of the whole test bed: ansible-playbook on localhost deploys app v1 and
PostgreSQL from the local registry (a real pull) and checks /version."""

from __future__ import annotations

from pathlib import Path

import pytest
import testbed

PLAYBOOK = Path(__file__).parent / "playbooks" / "smoke.yml"


@pytest.fixture
def smoke_vars(tmp_path, images):
    name = testbed.engine_name("st-smoke")
    yield {
        "smoke_project_dir": str(tmp_path),
        "smoke_project_name": name,
        "smoke_port": testbed.free_port(),
        "smoke_app_image": images["APP_IMAGE"] + ":v1",
        "smoke_postgres_image": images["POSTGRES_IMAGE"],
    }
    testbed.run(
        ["docker", "compose", "--project-directory", str(tmp_path), "-p", name, "down", "-v", "-t", "2"], check=False
    )


def test_smoke_deploys_v1_from_the_local_registry(smoke_vars):
    result = testbed.run_playbook(PLAYBOOK, smoke_vars, extra_args=["-c", "local"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "app answers v1" in result.stdout
    status, body = testbed.http_get("http://127.0.0.1:%d/version" % smoke_vars["smoke_port"])
    assert (status, body.strip()) == (200, "v1")


def test_smoke_fails_when_the_version_is_wrong(smoke_vars):
    """The smoke check is not a test that cannot fail: expecting v2 of a v1 stack fails."""
    result = testbed.run_playbook(PLAYBOOK, dict(smoke_vars, smoke_expected_version="v2"), extra_args=["-c", "local"])
    assert result.returncode != 0
    assert "app answered v1, expected v2" in result.stdout
