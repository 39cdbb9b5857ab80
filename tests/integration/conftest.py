"""Fixtures for integration tests: the real Docker engine, real Compose, real images.

These tests never skip for a missing engine: `make test` sets the engine up first, and when it
is not answering here the whole session fails with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testbed"))

import testbed


@pytest.fixture(scope="session", autouse=True)
def docker_engine():
    reason = testbed.docker_ready()
    if reason:
        pytest.exit(
            "The Docker engine is not answering (%s). Integration tests need it: run "
            "'make testbed' (as root) or 'make test', which start it." % reason,
            returncode=3,
        )


@pytest.fixture(scope="session")
def images():
    return dict(testbed.IMAGES)


@pytest.fixture
def compose_stack(tmp_path, request):
    """Factory: compose_stack(yaml, files=None, prefix=None) -> ComposeStack (not started).

    Every stack made here is brought down with its volumes when the test ends, pass or fail.
    """
    stacks = testbed.Stacks(tmp_path, "st-" + request.node.name[:20].lower().replace("_", "-").strip("-"))
    yield stacks
    stacks.down()


@pytest.fixture
def free_port():
    return testbed.free_port


@pytest.fixture
def run_module():
    return testbed.run_module


@pytest.fixture
def run_playbook():
    return testbed.run_playbook
