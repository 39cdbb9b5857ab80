"""The test shop, app + PostgreSQL, shared by the rollback tests of both strategies."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import testbed

LEDGER = Path("/var/lib/stackops-rollback")


class Shop:
    """The test shop (app + PostgreSQL) on the local engine: deploy, record, write and read rows."""

    def __init__(self, stack, port, tmp_path):
        self.stack = stack
        self.port = port
        self.url = "http://127.0.0.1:%d" % port
        self.backups = tmp_path / "backups"
        self.inventory = tmp_path / "inventory.ini"
        self.inventory.write_text(
            "[shops]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable
        )

    @property
    def dir(self):
        return self.stack.dir

    def deploy(self, tag, record=True, secret=None, expect=None):
        env = self.dir / ".env"
        env.write_text("APP_TAG=%s\nDB_PASSWORD=pw-shop\nAPP_SECRET=%s\n" % (tag, secret or "secret-" + tag))
        env.chmod(0o600)
        self.stack.up()
        testbed.wait_http(self.url + "/version", body_contains=expect or tag)
        return self.record(tag) if record else None

    def record(self, version):
        result = testbed.run_module(
            "compose_release", dict(project_src=str(self.dir), project_name=self.stack.name, version=version)
        )
        assert not result.get("failed"), result
        return result["release_id"]

    def write(self, body):
        status, answer = testbed.http_post(self.url + "/records", body)
        assert status == 201, answer

    def version(self):
        return testbed.http_get(self.url + "/version")[1].strip()

    def rows(self):
        status, body = testbed.http_get(self.url + "/records")
        assert status == 200, body
        return [r["body"] for r in json.loads(body)]

    def info(self, **extra):
        return testbed.run_module(
            "compose_release_info", dict(project_src=str(self.dir), project_name=self.stack.name, **extra)
        )

    def audit(self):
        path = LEDGER / "audit.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(x) for x in lines if json.loads(x).get("project") == self.stack.name]
