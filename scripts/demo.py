"""`make demo`: deploy a demo stack (Caddy, app, PostgreSQL with data) at v1, deploy v2, roll it
back with playbooks/rollback_recreate.yml against localhost, and show that v1 answers with its
data intact. Runs on the machine `make demo` set up; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "testbed"))

import testbed  # noqa: E402

DEMO_DIR = Path(os.environ.get("STACKOPS_DEMO_DIR", "/var/tmp/stackops-demo"))
PROJECT = "stackops-demo"
PORT = int(os.environ.get("STACKOPS_DEMO_PORT", "8800"))
LEDGER = "/var/lib/stackops-rollback"
URL = "http://127.0.0.1:%d" % PORT

COMPOSE = """\
# The demo shop: Caddy in front of the app, PostgreSQL behind it.
services:
  proxy:
    image: {caddy}
    ports:
      - "127.0.0.1:{port}:80"
    volumes:
      - ./Caddyfile:/etc/caddy/Caddyfile:ro
    depends_on:
      - app
  app:
    image: {app}:${{APP_TAG}}
    environment:
      DATABASE_URL: postgresql://postgres:${{DB_PASSWORD}}@db/shop
    depends_on:
      db:
        condition: service_healthy
  db:
    image: {postgres}
    environment:
      POSTGRES_PASSWORD: ${{DB_PASSWORD}}
      POSTGRES_DB: shop
    volumes:
      - dbdata:/var/lib/postgresql/data
volumes:
  dbdata:
"""

CADDYFILE = """\
:80 {
    reverse_proxy app:8080
}
"""


def say(title):
    print("\n\033[1m==> %s\033[0m" % title, flush=True)


def messages(stdout):
    """What the play says to an operator: its debug messages, failures and the recap."""
    shown, in_list = [], False
    for line in stdout.splitlines():
        text = line.strip()
        if text.startswith('"msg": ['):
            in_list = True
        elif in_list:
            if text.startswith("]"):
                in_list = False
            else:
                shown.append(text.rstrip(",").strip('"'))
        elif text.startswith('"msg": "'):
            shown.append(text[len('"msg": "') :].rstrip('"'))
        elif text.startswith("fatal:"):
            shown.append(text)
    return shown


def playbook(path, extra_vars, inventory, limit="all"):
    result = testbed.run_playbook(path, extra_vars, inventory=str(inventory), limit=limit)
    print(textwrap.indent("\n".join(messages(result.stdout)), "    "))
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-2000:])
        raise SystemExit("demo: %s failed (rc=%s)" % (path, result.returncode))
    return result


def main():
    images = testbed.IMAGES
    say("Demo stack in %s: Caddy on %s -> app -> PostgreSQL" % (DEMO_DIR, URL))
    if DEMO_DIR.exists():
        testbed.run(
            ["docker", "compose", "--project-directory", str(DEMO_DIR), "-p", PROJECT, "down", "-v", "-t", "2"],
            check=False,
        )
        shutil.rmtree(DEMO_DIR)
    shutil.rmtree(Path(LEDGER) / "projects" / PROJECT, ignore_errors=True)
    DEMO_DIR.mkdir(parents=True)
    (DEMO_DIR / "compose.yml").write_text(
        COMPOSE.format(
            caddy=images["CADDY_IMAGE"], app=images["APP_IMAGE"], postgres=images["POSTGRES_IMAGE"], port=PORT
        )
    )
    (DEMO_DIR / "Caddyfile").write_text(CADDYFILE)
    env = DEMO_DIR / ".env"
    env.write_text("APP_TAG=v1\nDB_PASSWORD=%s\n" % secrets.token_hex(12))
    env.chmod(0o600)
    inventory = DEMO_DIR / "inventory.ini"
    inventory.write_text("[demo]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    deploy = ROOT / "docs" / "examples" / "deploy.yml"
    common = {"shop_dir": str(DEMO_DIR), "shop_health_url": URL + "/health"}

    say("Deploy v1 with docs/examples/deploy.yml (deploy, verify, record the release and its schema)")
    playbook(deploy, dict(common, shop_version="v1"), inventory)
    for n in range(3):
        assert testbed.http_post(URL + "/records", "order %d (written by v1)" % (n + 1))[0] == 201
    print("    3 orders written through v1")

    say("Deploy v2 (a restore point of v1's data first; v2's migration adds a nullable column)")
    playbook(deploy, dict(common, shop_version="v2", shop_deploy_notes="0002 adds records.note (nullable)"), inventory)
    for n in range(2):
        assert testbed.http_post(URL + "/records", "order %d (written by v2)" % (n + 4))[0] == 201
    print("    2 more orders written through v2; the app answers %s" % testbed.http_get(URL + "/version")[1].strip())

    say("Roll back: ansible-playbook playbooks/rollback_recreate.yml -l localhost")
    t0 = time.monotonic()
    playbook(
        ROOT / "playbooks" / "rollback_recreate.yml",
        {
            "recreate_project_src": str(DEMO_DIR),
            # The schema verdict before anything stops: v2 added a nullable column v1 ignores.
            "recreate_databases": [{"service": "db", "engine": "postgres", "database": "shop"}],
            "recreate_health_http": [{"url": URL + "/health", "successes": 2}],
            "recreate_health_exec": [
                {
                    "service": "db",
                    "command": ["psql", "-U", "postgres", "-d", "shop", "-tAc", "select count(*) from records"],
                    "stdout_regex": "^[1-9][0-9]*$",
                }
            ],
        },
        inventory,
        limit="localhost",
    )
    took = time.monotonic() - t0

    say("After the rollback (%.1f s for the whole playbook)" % took)
    status, version = testbed.http_get(URL + "/version")
    status_r, records = testbed.http_get(URL + "/records")
    rows = json.loads(records) if status_r == 200 else []
    print("    GET %s/version -> %s %s" % (URL, status, version.strip()))
    print("    GET %s/records -> %d rows:" % (URL, len(rows)))
    for row in rows:
        print("      #%d %s" % (row["id"], row["body"]))
    ok = version.strip() == "v1" and len(rows) == 5
    say(
        "Demo %s. The stack keeps running: docker compose -p %s ps; remove it with: "
        "docker compose --project-directory %s -p %s down -v"
        % ("passed" if ok else "FAILED", PROJECT, DEMO_DIR, PROJECT)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
