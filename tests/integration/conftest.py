"""Fixtures for integration tests: the real Docker engine, real Compose, real images.

These tests never skip for a missing engine: `make test` sets the engine up first, and when it
is not answering here the whole session fails with the reason.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testbed"))

import faults
import testbed
from proxy import HostCaddy, host_migrates_queued_connections
from shop import LEDGER, BlueGreenShop, RecreateShop

# Test files whose tests share hosts made once (a module-scoped fixture) and must run one after
# another on one worker: the SSH fleet's five test hosts.
SHARED_HOST_FILES = ("tests/integration/test_fleet_ssh.py",)


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` as scripts/integration asks for it: every test scheduled on its own, as
    a worker frees up, except the tests of SHARED_HOST_FILES, one unit per file. pytest-xdist's
    own loadgroup no longer groups (it renames items by their `_nodeid`, which pytest 9 no longer
    reads), so the groups are the files named here."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedHostsScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            return path if path in SHARED_HOST_FILES else nodeid

    return SharedHostsScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def docker_engine():
    reason = testbed.docker_ready()
    if reason:
        pytest.exit(
            "The Docker engine is not answering (%s). Integration tests need it: run "
            "'make testbed' (as root) or 'make test', which start it." % reason,
            returncode=3,
        )


def pytest_collection_modifyitems(config, items):
    unrecorded = [
        item.nodeid for item in items if item.get_closest_marker("fault") and "fault_case" not in item.fixturenames
    ]
    if unrecorded:
        raise pytest.UsageError("tests marked fault must take the fault_case fixture: %s" % ", ".join(unrecorded))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.fault_call_report = report


@pytest.fixture
def fault_case(request):
    """One row of the fault matrix (tests/testbed/faults.py): the test's `fault` mark says what, where
    and the outcome expected; the test adds what it observed; rows come from its row writers. The
    row is written when the test ends, passed or not."""
    marker = request.node.get_closest_marker("fault")
    if marker is None:
        pytest.fail("fault_case is for tests marked @pytest.mark.fault(what, where=..., expected=...)")
    callspec = getattr(request.node, "callspec", None)
    case = faults.FaultCase(
        request.node.nodeid, *marker.args, params=callspec.params if callspec else {}, **marker.kwargs
    )
    faults.current = case
    started = time.monotonic()
    yield case
    faults.current = None
    report = getattr(request.node, "fault_call_report", None)
    case.write(passed=bool(report and report.passed), seconds=time.monotonic() - started)


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
def make_shop(compose_stack, images, free_port, tmp_path):
    """Factory: make_shop(app=None) -> the test shop (app + PostgreSQL, not deployed) rolled back by
    the recreate playbook, its app's image from repository `app` (the test images' by default)."""
    made = []

    def make(app=None):
        port = free_port()
        stack = compose_stack(
            testbed.SHOP_COMPOSE.format(postgres=images["POSTGRES_IMAGE"], app=app or images["APP_IMAGE"], port=port)
        )
        made.append(stack.name)
        return RecreateShop(stack, port, tmp_path)

    yield make
    for name in made:
        shutil.rmtree(LEDGER / "projects" / name, ignore_errors=True)


@pytest.fixture
def shop(make_shop):
    """The test shop (app + PostgreSQL, not deployed) rolled back by the recreate playbook."""
    return make_shop()


@pytest.fixture
def bg_shop(compose_stack, images, free_port, tmp_path):
    """The test shop behind a Caddy of its own (on the host network), rolled back by the blue_green playbook."""
    port = free_port()
    stack = compose_stack(
        testbed.SHOP_COMPOSE.format(postgres=images["POSTGRES_IMAGE"], app=images["APP_IMAGE"], port=port)
    )
    with host_migrates_queued_connections():
        caddy = HostCaddy(compose_stack, images, tmp_path / "proxy", stack.name, "127.0.0.1:%d" % port)
        yield BlueGreenShop(stack, port, tmp_path, caddy)
    shutil.rmtree(LEDGER / "projects" / stack.name, ignore_errors=True)


@pytest.fixture
def free_port():
    return testbed.free_port


@pytest.fixture
def run_module():
    return testbed.run_module


@pytest.fixture
def run_playbook():
    return testbed.run_playbook


# CPU_REPORT=path: one line per test with the CPU seconds its own process and the processes it
# waited for (ansible-playbook and its modules, docker and psql clients) used, to find where
# make test's time goes on a machine whose cores are busy. Containers' own CPU is not in it.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    path = os.environ.get("CPU_REPORT")
    if not path:
        yield
        return
    import resource

    def used():
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    cpu, wall = used(), time.monotonic()
    yield
    with open(path, "a") as fh:
        fh.write("%.1f\t%.1f\t%s\n" % (used() - cpu, time.monotonic() - wall, item.nodeid))
