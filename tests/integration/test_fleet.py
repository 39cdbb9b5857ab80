"""A fleet rollback (playbooks/fleet.yml, through playbooks/rollback_recreate.yml): five inventory
hosts, each its own compose project (the app) on the test bed's engine, with a ledger of the
test's own. Reaching other machines over SSH is the fleet's part 3."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import shutil
import sys

import pytest
import testbed
from proxy import HostCaddy, host_migrates_queued_connections
from shop import LEDGER, BlueGreenShop

PLAYBOOK = testbed.REPO_ROOT / "playbooks" / "rollback_recreate.yml"
BLUE_GREEN = testbed.REPO_ROOT / "playbooks" / "rollback_blue_green.yml"
HOSTS = ["web1", "web2", "web3", "web4", "web5"]

# v1 reads an env file of the host, outside the project (no release can record it): a test makes
# one host's v1 drift through it. v2 reads one of its own instead, so the way back is unaffected.
FLEET_HOST = """\
services:
  app:
    image: {app}:${{APP_TAG}}
    env_file:
      - path: {env_file}
        required: false
    ports:
      - "127.0.0.1:{port}:8080"
"""


class FleetHost:
    def __init__(self, name, stack, port, ledger, app_image):
        self.name, self.stack, self.port, self.ledger, self.app_image = name, stack, port, ledger, app_image
        self.url = "http://127.0.0.1:%d" % port
        self.host_env = stack.dir.parent / (stack.name + "-host.env")
        self.host_env.write_text("APP_CRASH_ON_START=0\n")

    def deploy(self, tag, env_file):
        self.stack.write(FLEET_HOST.format(app=self.app_image, env_file=env_file, port=self.port))
        (self.stack.dir / ".env").write_text("APP_TAG=%s\n" % tag)
        self.stack.up()
        testbed.wait_http(self.url + "/version", body_contains=tag)
        result = testbed.run_module(
            "compose_release",
            dict(
                project_src=str(self.stack.dir), project_name=self.stack.name, version=tag, ledger_dir=str(self.ledger)
            ),
        )
        assert not result.get("failed"), result

    def deploy_v1_then_v2(self):
        self.deploy("v1", str(self.host_env))
        self.deploy("v2", "./app-v2-extra.env")

    def version(self):
        return testbed.http_get(self.url + "/version")[1].strip()

    def container(self):
        return self.stack.container_id("app")

    def inventory_line(self, tmp_path, extra=""):
        return "%s ansible_connection=local ansible_python_interpreter=%s recreate_project_src=%s %s\n" % (
            self.name,
            sys.executable,
            self.stack.dir,
            " ".join(
                [
                    "recreate_project_name=%s" % self.stack.name,
                    "recreate_ledger_dir=%s" % self.ledger,
                    "recreate_backup_dir=%s" % (tmp_path / "backups" / self.name),
                    extra,
                ]
            ),
        )


def write_inventory(path, hosts, extra=None):
    """The group `web` of the hosts; `extra` adds inventory variables to some of them."""
    path.write_text("[web]\n" + "".join(h.inventory_line(path.parent, (extra or {}).get(h.name, "")) for h in hosts))
    return path


@pytest.fixture
def fleet(compose_stack, images, free_port, tmp_path):
    """Five hosts on v2 (v1 before it), deployed side by side, in an inventory group `web`."""
    ledger = tmp_path / "ledger"
    hosts = [
        FleetHost(name, compose_stack(FLEET_HOST, prefix="st-fleet"), free_port(), ledger, images["APP_IMAGE"])
        for name in HOSTS
    ]
    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        list(pool.map(FleetHost.deploy_v1_then_v2, hosts))
    return dict(zip(HOSTS, hosts)), write_inventory(tmp_path / "fleet.ini", hosts)


def roll_back(inventory, tmp_path, **settings):
    extra = dict(
        {
            "recreate_health_timeout": 15,
            "recreate_health_min_uptime": 1,
            "rollback_report_dir": str(tmp_path / "reports"),
        },
        **settings,
    )
    return testbed.run_playbook(
        PLAYBOOK,
        extra,
        inventory=str(inventory),
        extra_args=["-l", "web"],
        env={"ANSIBLE_SHOW_CUSTOM_STATS": "1"},
    )


def printed_table(stdout):
    """The lines of the fleet table the playbook printed (its debug message, a list of lines)."""
    section = stdout.split("TASK [Show the fleet's outcome, host by host]")[1].split("TASK [")[0]
    lines = [line.strip().rstrip(",") for line in section.splitlines()]
    return [json.loads(line) for line in lines if line.startswith('"') and not line.startswith('"msg"')]


def the_report(tmp_path, stdout):
    """The newest report's JSON and Markdown, checked against the printed table and the job's stats."""
    reports = sorted((tmp_path / "reports").glob("recreate-*.json"))
    assert reports, "no report written under %s" % (tmp_path / "reports")
    document = json.loads(reports[-1].read_text())
    markdown = reports[-1].with_suffix(".md").read_text()
    assert oct(reports[-1].stat().st_mode & 0o777) == "0o600"
    table = printed_table(stdout)
    # One row per host, in the inventory's order, the same cells in the printout and in Markdown.
    assert [row["host"] for row in document["hosts"]] == HOSTS
    assert len(table) == 2 + len(HOSTS) and table[-1] == document["summary"]
    markdown_rows = [line for line in markdown.splitlines() if line.startswith("| web")]
    for printed, md in zip(table[1:-1], markdown_rows):
        assert printed.split() == md.strip("| ").replace(" | ", " ").split()
    assert document["summary"] in markdown
    # set_stats carried the same report (ansible-playbook prints the job's custom stats).
    stats = stdout.split("CUSTOM STATS:")[1]
    assert "rollback_report" in stats and document["summary"] in stats
    return document


def statuses(document):
    return [(row["host"], row.get("batch"), row["status"]) for row in document["hosts"]]


def test_a_failure_in_the_second_batch_halts_the_fleet_and_the_same_command_then_finishes_it(fleet, tmp_path):
    hosts, inventory = fleet
    # web3, first of the second batch (web3, web4), runs a v1 that crashes at start: drifted.
    hosts["web3"].host_env.write_text("APP_CRASH_ON_START=1\n")
    untouched = hosts["web5"].container()

    halted = roll_back(inventory, tmp_path, rollback_batch=2)
    assert halted.returncode != 0, halted.stdout[-4000:]
    assert "FAILED at step 'start'" in halted.stdout
    assert "Halted: web3 failed or went unreachable, so batch 3 (web5)" in halted.stdout
    assert [hosts[h].version() for h in HOSTS] == ["v1", "v1", "v2", "v1", "v2"]
    assert hosts["web5"].container() == untouched, "web5, in the batch after the failure, was touched"
    document = the_report(tmp_path, halted.stdout)
    assert statuses(document) == [
        ("web1", 1, "rolled_back"),
        ("web2", 1, "rolled_back"),
        ("web3", 2, "reverted"),
        ("web4", 2, "rolled_back"),
        ("web5", 3, "not_started"),
    ]
    web3 = document["hosts"][2]
    assert web3["failed_step"] == "start" and "FAILED at step 'start'" in web3["reason"]
    assert document["summary"] == (
        "Halted: web3 FAILED, put back at step 'start'. On their target: web1, web2, web4. "
        "Not started, unchanged: web5."
    )

    # The drift fixed, the same command again: the hosts already on the target are left alone.
    hosts["web3"].host_env.write_text("APP_CRASH_ON_START=0\n")
    done = {h: hosts[h].container() for h in ("web1", "web2", "web4")}
    resumed = roll_back(inventory, tmp_path, rollback_batch=2)
    assert resumed.returncode == 0, resumed.stdout[-6000:] + resumed.stderr[-2000:]
    assert [hosts[h].version() for h in HOSTS] == ["v1"] * 5
    assert {h: hosts[h].container() for h in done} == done, "a host already on the target was recreated"
    assert [row["status"] for row in the_report(tmp_path, resumed.stdout)["hosts"]] == [
        "already_on_target",
        "already_on_target",
        "rolled_back",
        "already_on_target",
        "rolled_back",
    ]


def started_at(container):
    state = json.loads(testbed.run(["docker", "inspect", "--format", "{{json .State}}", container]).stdout)
    return testbed.docker_time(state["StartedAt"])


def test_a_failure_in_verification_halts_before_the_next_batch_of_one_or_of_half_and_revert_puts_back(fleet, tmp_path):
    hosts, inventory = fleet
    # Batches of one with web2 failing, then, on the same fleet, batches of 50 % (two of five) with
    # web3 failing: each time the failing host is put back and the batches after its own untouched.
    for batch, failing in [(1, "web2"), ("50%", "web3")]:
        # The failing host's own HTTP check passes on v2 only: its v1 starts and is caught in the
        # verification, and the way back to v2 verifies.
        check = "[{'url': 'http://127.0.0.1:%d/version', 'body_regex': '^v2'}]" % hosts[failing].port
        write_inventory(inventory, hosts.values(), {failing: 'recreate_health_http="%s"' % check})
        later = HOSTS[HOSTS.index(failing) + (1 if batch == 1 else 2) :]
        before = {h: hosts[h].container() for h in later}

        # The second time, the hosts this run rolled back go back to v2 after the halt, whatever
        # target the command line gives (an extra var outranks anything a playbook passes a role).
        settings = {"rollback_on_halt": "revert", "recreate_target": "previous"} if batch == "50%" else {}
        halted = roll_back(inventory, tmp_path, rollback_batch=batch, **settings)
        assert halted.returncode != 0, halted.stdout[-4000:]
        document = the_report(tmp_path, halted.stdout)
        failed = next(row for row in document["hosts"] if row["host"] == failing)
        assert (failed["status"], failed["failed_step"]) == ("reverted", "verify"), (batch, failed)
        assert hosts[failing].version() == "v2", "the failing host was not put back"
        assert {h: hosts[h].container() for h in later} == before, "a later batch was touched"
        assert [row["host"] for row in document["hosts"] if row["status"] == "not_started"] == later

    # The second run: web1 was already on v1 (left there), web2 (batch 1) and web4 (web3's partner)
    # rolled back to v1 and went back to v2 after the halt, web4's batch first.
    assert statuses(document) == [
        ("web1", 1, "already_on_target"),
        ("web2", 1, "put_back"),
        ("web3", 2, "reverted"),
        ("web4", 2, "put_back"),
        ("web5", 3, "not_started"),
    ], document
    assert [hosts[h].version() for h in HOSTS] == ["v1", "v2", "v2", "v2", "v2"]
    assert started_at(hosts["web4"].container()) < started_at(hosts["web2"].container()), "not the last batch first"
    web2 = document["hosts"][1]
    assert web2["from_version"] == "v2" and web2["to_version"] == "v1" and web2["put_back_downtime_seconds"] is not None
    assert document["summary"] == (
        "Halted: web3 FAILED, put back at step 'verify'. Put back on what they ran: web2, web4. "
        "On their target: web1. Not started, unchanged: web5."
    )
    assert "v2 -> v1 -> v2" in next(line for line in printed_table(halted.stdout) if line.startswith("web2"))


def state_of(hosts, ledger):
    """What a rollback could change: each host's container and project files, the whole ledger."""
    files = sorted(
        [p for h in hosts.values() for p in h.stack.dir.rglob("*") if p.is_file()]
        + [p for p in ledger.rglob("*") if p.is_file()]
    )
    return (
        {name: host.container() for name, host in hosts.items()},
        {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files},
    )


def test_a_preflight_failure_anywhere_changes_nothing_and_a_host_gone_mid_fleet_halts_it(fleet, tmp_path):
    hosts, inventory = fleet
    before = state_of(hosts, tmp_path / "ledger")
    # web2's target is not in its ledger and web5's project is not where the inventory says.
    write_inventory(
        inventory,
        hosts.values(),
        {"web2": "recreate_target=0000deadbeef", "web5": "recreate_project_src=%s" % (tmp_path / "moved")},
    )
    refused = roll_back(inventory, tmp_path, rollback_batch=2)
    assert refused.returncode != 0, refused.stdout[-4000:]
    message = refused.stdout.split("The preflight failed on")[-1]
    assert message.startswith(" 2 of 5 hosts, so no host was changed: web2: "), message[:2000]
    assert "0000deadbeef" in message and "web5: project_src '%s' is not a directory" % (tmp_path / "moved") in message
    assert "PLAY [Roll back batch after batch" not in refused.stdout, "the run went on after its preflight failed"
    assert state_of(hosts, tmp_path / "ledger") == before, "the preflight changed something"
    assert [hosts[h].version() for h in HOSTS] == ["v2"] * 5

    # web3's SSH goes away as its rollback starts (its connection is local until then): the second
    # batch halts the fleet, web3 is reported unreachable, web5 is not started.
    gone = "ansible_connection=\"{{ 'ssh' if _fleet_started | default(false) else 'local' }}\" ansible_port=9"
    write_inventory(inventory, hosts.values(), {"web3": gone + " ansible_host=127.0.0.1"})
    untouched = hosts["web5"].container()
    halted = roll_back(inventory, tmp_path, rollback_batch=2)
    assert halted.returncode != 0, halted.stdout[-4000:]
    assert "fatal: [web3]: UNREACHABLE!" in halted.stdout
    assert "Halted: web3 failed or went unreachable, so batch 3 (web5)" in halted.stdout
    document = the_report(tmp_path, halted.stdout)
    assert statuses(document) == [
        ("web1", 1, "rolled_back"),
        ("web2", 1, "rolled_back"),
        ("web3", 2, "unreachable"),
        ("web4", 2, "rolled_back"),
        ("web5", 3, "not_started"),
    ]
    assert document["hosts"][2]["failed_step"] == "preflight"
    assert [hosts[h].version() for h in HOSTS] == ["v1", "v1", "v2", "v1", "v2"]
    assert hosts["web5"].container() == untouched


@contextlib.contextmanager
def leaving_no_ledger(shops):
    """The shops record into the host's shared ledger: their projects' records go when the test ends."""
    try:
        yield
    finally:
        for shop in shops:
            shutil.rmtree(LEDGER / "projects" / shop.stack.name, ignore_errors=True)


def test_a_blue_green_fleet_is_checked_first_then_rolled_back_in_order(compose_stack, images, free_port, tmp_path):
    """The same fleet play through playbooks/rollback_blue_green.yml: two shops, each behind its Caddy."""
    shops = []
    with host_migrates_queued_connections(), leaving_no_ledger(shops):
        for n in range(2):
            port = free_port()
            stack = compose_stack(
                testbed.SHOP_COMPOSE.format(postgres=images["POSTGRES_IMAGE"], app=images["APP_IMAGE"], port=port),
                prefix="st-fleet-bg",
            )
            work = tmp_path / ("web%d" % (n + 1))
            caddy = HostCaddy(compose_stack, images, work / "proxy", stack.name, "127.0.0.1:%d" % port)
            shops.append(BlueGreenShop(stack, port, work, caddy))
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda shop: (shop.deploy("v1"), shop.deploy("v2")), shops))
        inventory = tmp_path / "fleet.json"

        def write(**web2):
            hosts = {}
            for n, shop in enumerate(shops):
                variables = shop.variables(blue_green_health_min_uptime=1, **(web2 if n == 1 else {}))
                hosts["web%d" % (n + 1)] = dict(
                    variables, ansible_connection="local", ansible_python_interpreter=sys.executable
                )
            inventory.write_text(json.dumps({"web": {"hosts": hosts}}))

        containers = [shop.containers() for shop in shops]
        write(blue_green_caddy_site="http://127.0.0.1:1")  # not a site of web2's Caddyfile
        refused = testbed.run_playbook(
            BLUE_GREEN,
            {"rollback_report_dir": str(tmp_path / "reports")},
            inventory=str(inventory),
            extra_args=["-l", "web"],
        )
        assert refused.returncode != 0, refused.stdout[-4000:]
        assert "The preflight failed on 1 of 2 hosts, so no host was changed: web2: " in refused.stdout
        assert [shop.served() for shop in shops] == ["v2", "v2"]
        assert [shop.containers() for shop in shops] == containers, "the preflight changed a host"

        write()
        result = testbed.run_playbook(
            BLUE_GREEN,
            {"rollback_report_dir": str(tmp_path / "reports")},
            inventory=str(inventory),
            extra_args=["-l", "web"],
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert [shop.served() for shop in shops] == ["v1", "v1"]
        document = json.loads(sorted((tmp_path / "reports").glob("blue_green-*.json"))[-1].read_text())
        assert [(row["host"], row["batch"], row["status"]) for row in document["hosts"]] == [
            ("web1", 1, "rolled_back"),
            ("web2", 2, "rolled_back"),
        ]
        assert document["summary"] == "Every host is on its target (2 hosts)."
        # Completion in order: web2's green started after web1's rollback was recorded.
        assert result.stdout.index("on web1: rolled back") < result.stdout.index("on web2: rolled back")
