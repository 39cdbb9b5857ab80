"""A fleet rollback (playbooks/fleet.yml, through playbooks/rollback_recreate.yml): five inventory
hosts, each its own compose project (the app) on the test bed's engine, with a ledger of the
test's own. Reaching other machines over SSH is the fleet's part 3."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import threading

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


def roll_back(inventory, tmp_path, extra_args=(), **settings):
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
        extra_args=["-l", "web", *extra_args],
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
    # The canary web1 first (rollback_canary's default), then batches of two: web3, second of the
    # second batch (web2, web3), runs a v1 that crashes at start: drifted.
    hosts["web3"].host_env.write_text("APP_CRASH_ON_START=1\n")
    untouched = {h: hosts[h].container() for h in ("web4", "web5")}

    halted = roll_back(inventory, tmp_path, rollback_batch=2)
    assert halted.returncode != 0, halted.stdout[-4000:]
    assert "FAILED at step 'start'" in halted.stdout
    assert "Halted: web3 failed or went unreachable, so batch 3 (web4, web5)" in halted.stdout
    assert [hosts[h].version() for h in HOSTS] == ["v1", "v1", "v2", "v2", "v2"]
    assert {h: hosts[h].container() for h in untouched} == untouched, "a host of the batch after web3's was touched"
    document = the_report(tmp_path, halted.stdout)
    assert statuses(document) == [
        ("web1", 1, "rolled_back"),
        ("web2", 2, "rolled_back"),
        ("web3", 2, "reverted"),
        ("web4", 3, "not_started"),
        ("web5", 3, "not_started"),
    ]
    assert [row.get("canary") for row in document["hosts"][:3]] == [True, False, False]
    web3 = document["hosts"][2]
    assert web3["failed_step"] == "start" and "FAILED at step 'start'" in web3["reason"]
    assert document["summary"] == (
        "Halted: web3 FAILED, put back at step 'start'. On their target: web1, web2. "
        "Not started, unchanged: web4, web5."
    )

    # The drift fixed, the same command again: the hosts already on the target are left alone.
    hosts["web3"].host_env.write_text("APP_CRASH_ON_START=0\n")
    done = {h: hosts[h].container() for h in ("web1", "web2")}
    resumed = roll_back(inventory, tmp_path, rollback_batch=2)
    assert resumed.returncode == 0, resumed.stdout[-6000:] + resumed.stderr[-2000:]
    assert [hosts[h].version() for h in HOSTS] == ["v1"] * 5
    assert {h: hosts[h].container() for h in done} == done, "a host already on the target was recreated"
    assert [row["status"] for row in the_report(tmp_path, resumed.stdout)["hosts"]] == [
        "already_on_target",
        "already_on_target",
        "rolled_back",
        "rolled_back",
        "rolled_back",
    ]
    # Batch after batch: web3 (batch 2) started before web4 and web5 (batch 3).
    third = min(started_at(hosts[h].container()) for h in ("web4", "web5"))
    assert started_at(hosts["web3"].container()) < third, "batch 3 started before batch 2 ended"


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
        revert = {"rollback_on_halt": "revert", "recreate_target": "previous", "rollback_canary": 0}
        settings = revert if batch == "50%" else {}
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


def test_a_failing_canary_is_put_back_alone_and_a_host_degrading_in_the_soak_halts_the_fleet(fleet, tmp_path):
    hosts, inventory = fleet
    # The canary web1 runs a v1 that crashes at start: put back, and no other host touched.
    hosts["web1"].host_env.write_text("APP_CRASH_ON_START=1\n")
    others = {h: hosts[h].container() for h in HOSTS[1:]}
    not_started = [(h, batch, "not_started") for h, batch in zip(HOSTS[1:], [2, 2, 3, 3])]
    halted = roll_back(inventory, tmp_path, rollback_batch="50%")
    assert halted.returncode != 0, halted.stdout[-4000:]
    document = the_report(tmp_path, halted.stdout)
    assert statuses(document) == [("web1", 1, "reverted"), *not_started]
    assert "batch 1 (canary)" in halted.stdout and hosts["web1"].version() == "v2"
    assert {h: hosts[h].container() for h in others} == others, "a host after the failing canary was touched"

    # Fixed, the canary rolls back; during its soak of 10 s its container dies: verified again
    # before the next batch, it halts the fleet with no other host touched.
    hosts["web1"].host_env.write_text("APP_CRASH_ON_START=0\n")
    project = tmp_path / "ledger" / "projects" / hosts["web1"].stack.name
    killed = []

    def kill_once_rolled_back():
        def finished():
            history = (project / "history.jsonl").read_text() if (project / "history.jsonl").exists() else ""
            return '"rollback"' in history and not (project / "lock").exists()

        testbed.wait_for(finished, 180, "web1's rollback finished")
        testbed.run(["docker", "kill", hosts["web1"].container()])
        killed.append(True)

    thread = threading.Thread(target=kill_once_rolled_back, daemon=True)
    thread.start()
    degraded = roll_back(inventory, tmp_path, rollback_batch="50%", rollback_pause=10)
    thread.join(timeout=30)
    assert killed, "web1's container was not killed during its soak"
    assert degraded.returncode != 0, degraded.stdout[-4000:]
    assert "Pausing for 10 seconds" in degraded.stdout, degraded.stdout[-4000:]
    document = the_report(tmp_path, degraded.stdout)
    assert statuses(document) == [("web1", 1, "degraded"), *not_started]
    assert document["hosts"][0]["failed_step"] == "soak after batch 1", document["hosts"][0]
    assert {h: hosts[h].container() for h in others} == others, "a host was touched after the canary degraded"
    assert document["summary"].startswith("Halted: web1 DEGRADED in the soak at step 'soak after batch 1'.")


def test_tiers_roll_back_in_order_each_with_its_canary_and_check_mode_shows_the_plan_changing_nothing(fleet, tmp_path):
    hosts, inventory = fleet
    # Two tiers within the group web: back (web4, web5) first, then front (web1, web2, web3).
    inventory.write_text(inventory.read_text() + "[back]\nweb4\nweb5\n[front]\nweb1\nweb2\nweb3\n")
    settings = {"rollback_tiers": ["back", "front"], "rollback_batch": "50%"}
    order = ["web4", "web5", "web1", "web2", "web3"]
    plan = [
        "batch 1 (back, canary): web4",
        "batch 2 (back): web5",
        "batch 3 (front, canary): web1",
        "batch 4 (front): web2",
        "batch 5 (front): web3",
    ]
    before = state_of(hosts, tmp_path / "ledger")

    checked = roll_back(inventory, tmp_path, **settings, extra_args=["--check"])
    assert checked.returncode == 0, checked.stdout[-6000:] + checked.stderr[-2000:]
    assert all('"%s"' % line in checked.stdout for line in plan), checked.stdout[-6000:]
    assert "Check mode: nothing was changed on any host." in checked.stdout
    assert state_of(hosts, tmp_path / "ledger") == before, "check mode changed something"

    done = roll_back(inventory, tmp_path, **settings)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert [hosts[h].version() for h in HOSTS] == ["v1"] * 5
    # Each batch started after the one before it had finished: the containers' start times and the
    # ledger's audit lines follow the plan.
    started = [started_at(hosts[h].container()) for h in order]
    assert started == sorted(started), dict(zip(order, started))
    audit = [json.loads(line) for line in (tmp_path / "ledger" / "audit.log").read_text().splitlines()]
    projects = {hosts[h].stack.name: h for h in HOSTS}
    rolled = [projects[a["project"]] for a in audit if a.get("event") == "rollback" and a.get("project") in projects]
    assert rolled == order, audit[-10:]


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
    # Each host's project has content of its own (its port): no release is on every host.
    no_common = roll_back(inventory, tmp_path, rollback_target="common")
    assert no_common.returncode != 0, no_common.stdout[-4000:]
    assert "rollback_target common: no release is recorded on every host" in no_common.stdout
    assert "web1: v2 (" in no_common.stdout and "), v1 (" in no_common.stdout, no_common.stdout[-4000:]
    assert "No host was changed." in no_common.stdout
    assert state_of(hosts, tmp_path / "ledger") == before, "looking for a common release changed something"

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
    halted = roll_back(inventory, tmp_path, rollback_batch=2, rollback_canary=0)
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


# The same project on three hosts, no port of its own, no file outside it: a release has the same
# id (a hash of files and images) on every host that deployed it.
SAME_EVERYWHERE = """\
services:
  app:
    image: {app}:${{APP_TAG}}
"""


def test_one_target_for_the_fleet_common_then_a_version_label(compose_stack, images, tmp_path):
    ledger = tmp_path / "ledger"
    names = ["web1", "web2", "web3"]
    stacks = {name: compose_stack(SAME_EVERYWHERE.format(app=images["APP_IMAGE"]), prefix="st-fleet") for name in names}
    # web2 never got v2: the hosts' ledgers differ, v1 is the newest release every host holds.
    deploys = {"web1": ["v1", "v2", "v3"], "web2": ["v1", "v3"], "web3": ["v1", "v2", "v3"]}

    def deploy(name):
        stack = stacks[name]
        for tag in deploys[name]:
            (stack.dir / ".env").write_text("APP_TAG=%s\n" % tag)
            stack.up()
            recorded = testbed.run_module(
                "compose_release",
                dict(project_src=str(stack.dir), project_name=stack.name, version=tag, ledger_dir=str(ledger)),
            )
            assert not recorded.get("failed"), recorded
        return recorded["release_id"]

    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        current = dict(zip(names, pool.map(deploy, names)))
    assert len(set(current.values())) == 1, "the same content recorded different ids: %s" % current
    inventory = tmp_path / "same.ini"
    inventory.write_text(
        "[web]\n"
        + "".join(
            "%s ansible_connection=local ansible_python_interpreter=%s recreate_project_src=%s "
            "recreate_project_name=%s recreate_ledger_dir=%s recreate_backup_dir=%s\n"
            % (name, sys.executable, stacks[name].dir, stacks[name].name, ledger, tmp_path / "backups" / name)
            for name in names
        )
    )

    def running():
        return [stacks[name].container_env("app")["APP_VERSION"] for name in names]

    common = roll_back(inventory, tmp_path, rollback_target="common", rollback_batch=3)
    assert common.returncode == 0, common.stdout[-6000:] + common.stderr[-2000:]
    assert "the newest release they all hold (rollback_target common)" in common.stdout
    assert "(v1), the newest release they all hold" in common.stdout
    assert running() == ["v1", "v1", "v1"]  # web1 and web3's previous is v2: common is not previous

    # A version label as recorded at deploy, for every host, whatever the hosts' own target says
    # (recreate_target given with -e; v3 is no host's previous).
    labelled = roll_back(inventory, tmp_path, rollback_target="v3", rollback_batch=3, recreate_target="previous")
    assert labelled.returncode == 0, labelled.stdout[-6000:] + labelled.stderr[-2000:]
    assert running() == ["v3", "v3", "v3"]


# -- run as AWX runs a job --------------------------------------------------------------------------
# AWX hands ansible-runner a private data directory: env/ (extravars, envvars, settings, cmdline
# with the job template's limit), inventory/hosts, project/ (the operator's repository, whose
# collections/requirements.yml AWX installs into requirements_collections/). The job's artifacts
# (artifacts/<job id>/) keep its status, its stdout and its events; the fleet report reaches AWX
# through set_stats, in the artifact_data of the playbook_on_stats event.

AWX_JOB_PLAYBOOK = """\
---
# The operator's project: the collection's playbook, as a job template would run it.
- name: Roll the web tier back
  ansible.builtin.import_playbook: stackops.rollback.rollback_recreate
"""


def awx_private_data_dir(directory, inventory, extravars, limit):
    """The layout AWX writes for a job, with the collection installed from its release tarball."""
    project = directory / "project"
    (project / "collections").mkdir(parents=True)
    (project / "rollback.yml").write_text(AWX_JOB_PLAYBOOK)
    (project / "collections" / "requirements.yml").write_text("---\ncollections:\n  - name: stackops.rollback\n")
    galaxy = str(testbed.VENV_BIN / "ansible-galaxy")
    testbed.run(
        [galaxy, "collection", "build", "--force", "--output-path", str(directory / "dist"), str(testbed.REPO_ROOT)]
    )
    (tarball,) = (directory / "dist").glob("stackops-rollback-*.tar.gz")
    installed = directory / "requirements_collections"
    testbed.run(
        [galaxy, "collection", "install", "--offline", "--no-deps", "--force", "-p", str(installed), str(tarball)]
    )
    (directory / "inventory").mkdir()
    shutil.copy(inventory, directory / "inventory" / "hosts")
    env = directory / "env"
    env.mkdir()
    (env / "extravars").write_text(json.dumps(extravars))
    (env / "envvars").write_text(json.dumps({"ANSIBLE_COLLECTIONS_PATH": str(installed), "ANSIBLE_NOCOLOR": "1"}))
    (env / "settings").write_text(json.dumps({"job_timeout": 900, "idle_timeout": 600, "pexpect_timeout": 5}))
    (env / "cmdline").write_text("--limit %s" % limit)
    return directory


def test_ansible_runner_with_awxs_private_data_dir_rolls_the_fleet_back_and_the_report_is_in_the_artifacts(
    fleet, tmp_path
):
    hosts, inventory = fleet
    reports = tmp_path / "reports"
    data_dir = awx_private_data_dir(
        tmp_path / "awx",
        inventory,
        {
            "recreate_health_timeout": 15,
            "recreate_health_min_uptime": 1,
            "rollback_canary": 1,
            "rollback_batch": "50%",
            "rollback_report_dir": str(reports),
        },
        limit="web",
    )
    env = testbed.ansible_env()
    del env["ANSIBLE_COLLECTIONS_PATH"]  # the job's own envvars say where its collections are
    job = subprocess.run(
        [str(testbed.VENV_BIN / "ansible-runner"), "run", str(data_dir), "-p", "rollback.yml", "--ident", "42"],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    artifacts = data_dir / "artifacts" / "42"
    stdout = (artifacts / "stdout").read_text() if (artifacts / "stdout").exists() else job.stdout
    assert job.returncode == 0, stdout[-6000:] + job.stderr[-3000:]
    assert (artifacts / "status").read_text() == "successful" and (artifacts / "rc").read_text() == "0"
    events = [json.loads(path.read_text()) for path in sorted((artifacts / "job_events").glob("*.json"))]
    # The collection's tasks ran from the job's requirements_collections, not from this checkout.
    installed = str(data_dir / "requirements_collections" / "ansible_collections" / "stackops" / "rollback")
    task_paths = {event.get("event_data", {}).get("task_path", "").rsplit(":", 1)[0] for event in events}
    from_roles = [path for path in task_paths if "/roles/recreate/" in path]
    assert from_roles and all(path.startswith(installed) for path in from_roles), sorted(task_paths)
    (stats,) = [event for event in events if event.get("event") == "playbook_on_stats"]
    report = stats["event_data"]["artifact_data"]["rollback_report"]
    assert [(row["host"], row["status"]) for row in report["hosts"]] == [(name, "rolled_back") for name in HOSTS]
    assert [row["batch"] for row in report["hosts"]] == [1, 2, 2, 3, 3], report["hosts"]
    assert all(host.version() == "v1" for host in hosts.values())
    (written,) = reports.glob("recreate-*.json")
    assert json.loads(written.read_text())["hosts"] == report["hosts"]
    assert report["summary"] in stdout
