"""The blue_green role and playbooks/rollback_blue_green.yml: app + PostgreSQL behind a real Caddy.

The shop runs v2 (blue) and rolls back to v1 (green) while a bounded load generator sends
requests to 127.0.0.1 through Caddy, which runs in a container on the host network (the field
guide's setup: green gets alternate host ports).
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import testbed
from loadgen import LoadGenerator, summarize
from proxy import HostCaddy, host_migrates_queued_connections
from shop import LEDGER, Shop

PLAYBOOK = testbed.REPO_ROOT / "playbooks" / "rollback_blue_green.yml"


class BlueGreenShop(Shop):
    """The shop behind Caddy, rolled back by playbooks/rollback_blue_green.yml."""

    def __init__(self, stack, port, tmp_path, caddy):
        super().__init__(stack, port, tmp_path)
        self.caddy = caddy
        self.green_port = testbed.free_port()

    def rollback(self, check=False, **variables):
        extra = {
            "blue_green_project_src": str(self.dir),
            "blue_green_proxy_service": "app",
            "blue_green_proxy_port": 8080,
            "blue_green_port_map": {str(self.port): self.green_port},
            "blue_green_caddyfile": str(self.caddy.caddyfile),
            "blue_green_caddy_site": self.caddy.site,
            "blue_green_caddy_container": self.caddy.container,
            "blue_green_caddy_admin_url": self.caddy.admin_url,
            "blue_green_proxy_url": self.caddy.url + "/version",
            "blue_green_health_timeout": 60,
            "blue_green_drain_seconds": 1,
        }
        extra.update(variables)
        return testbed.run_playbook(PLAYBOOK, extra, inventory=str(self.inventory), check=check)

    def served(self):
        return testbed.http_get(self.caddy.url + "/version")[1].strip()

    def containers(self, project=None):
        """(service, image tag, status) of the project's containers, from the engine."""
        out = testbed.run(
            [
                "docker",
                "ps",
                "-a",
                "--filter",
                "label=com.docker.compose.project=%s" % (project or self.stack.name),
                "--format",
                '{{.Label "com.docker.compose.service"}} {{.Image}} {{.State}}',
            ]
        ).stdout
        return sorted(tuple(line.split()) for line in out.splitlines() if line.strip())


@pytest.fixture
def bg_shop(compose_stack, images, free_port, tmp_path):
    port = free_port()
    stack = compose_stack(
        testbed.SHOP_COMPOSE.format(postgres=images["POSTGRES_IMAGE"], app=images["APP_IMAGE"], port=port)
    )
    with host_migrates_queued_connections():
        caddy = HostCaddy(compose_stack, images, tmp_path / "proxy", stack.name, "127.0.0.1:%d" % port)
        yield BlueGreenShop(stack, port, tmp_path, caddy)
    shutil.rmtree(LEDGER / "projects" / stack.name, ignore_errors=True)


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-3000:]


class DbWatch:
    """Counts the shop's running db containers every 0.2 s while the rollback runs (bounded)."""

    def __init__(self, shop, max_seconds=300):
        self.shop, self.max_seconds = shop, max_seconds
        self.most = 0
        self.ids = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        ends = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < ends:
            # Both projects' db containers: the green one's names start with the shop's name too.
            mine = testbed.run(
                [
                    "docker",
                    "ps",
                    "-q",
                    "--filter",
                    "status=running",
                    "--filter",
                    "name=" + self.shop.stack.name,
                    "--filter",
                    "label=com.docker.compose.service=db",
                ]
            ).stdout.split()
            self.most = max(self.most, len(mine))
            self.ids.update(mine)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def versions_in_order(samples):
    """The versions served, consecutive repeats folded: ['v2', 'v1'] for one switch."""
    order = []
    for sample in samples:
        if sample.ok and (not order or order[-1] != sample.body.strip()):
            order.append(sample.body.strip())
    return order


def test_rollback_under_load_fails_no_request_and_keeps_one_database(bg_shop):
    shop = bg_shop
    v1 = shop.deploy("v1")
    shop.write("before v2")
    v2 = shop.deploy("v2")
    shop.write("written by v2")
    assert shop.served() == "v2"

    load = LoadGenerator(shop.caddy.url + "/version", rate=120, max_requests=9000, max_seconds=150).start()
    try:
        time.sleep(2.0)
        with DbWatch(shop) as db:
            result = shop.rollback()
        # Keep the load on after the finalize until there are enough samples.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(load.samples) < 5200:
            time.sleep(0.2)
        time.sleep(2.0)
    finally:
        samples = load.stop()
    summary = summarize(samples)
    print("blue-green rollback under load: %s" % summary)
    assert_ok(result)
    assert summary["requests"] >= 5000 and summary["rate"] >= 100, summary
    assert summary["failed"] == 0, summary
    assert versions_in_order(samples) == ["v2", "v1"]
    assert db.most == 1 and len(db.ids) == 1, "the database ran as %d containers (%s)" % (db.most, db.ids)
    assert shop.rows() == ["before v2", "written by v2"]
    # The host looks like a normal deployment of v1: no green left, Caddy on the original port.
    assert shop.containers(shop.stack.name + "-green") == []
    assert shop.caddy.running_dials() == [["127.0.0.1:%d" % shop.port]]
    assert shop.version() == "v1"
    listing = shop.info()
    assert listing["current"]["id"] == v1
    assert "rolled back blue-green from %s (v2) to %s (v1)" % (v2, v1) in result.stdout
