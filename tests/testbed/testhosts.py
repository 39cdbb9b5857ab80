"""Docker-in-Docker test hosts: each a container of the testhost image (tests/testbed/images/testhost)
with an engine of its own, reached by Ansible through the outer engine (community.docker.docker).
A fault that takes a host's engine away (its daemon stopped) hits that host only, never the test
bed's own engine, which every other test runs on.

    with testhosts.DockerHost.started("st-dind") as host:
        host.load(images)                   # the outer engine's images, into the inner one
        host.inventory(path)                # an inventory naming it
        host.stop_engine(); host.start_engine()
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import signal
import subprocess
from pathlib import Path

import testbed
import yaml

TESTHOST_IMAGE = "stackops-testbed/testhost:latest"
# The capabilities and options Molecule's hosts run with (--privileged fails on these machines):
# one list, in .config/molecule/config.yml.
MOLECULE_CONFIG = testbed.REPO_ROOT / ".config" / "molecule" / "config.yml"
INNER_DOCKERD = ["dockerd", "--cgroup-parent=/stackops-inner", "--host=unix:///var/run/docker.sock"]
# As the entrypoint starts it (root with the key only; no PAM, which a container's login session lacks).
SSHD = ["/usr/sbin/sshd", "-o", "PasswordAuthentication=no", "-o", "PermitRootLogin=prohibit-password"]
SSHD += ["-o", "UsePAM=no", "-E", "/var/log/sshd.log"]
PREPARE_SHOP = testbed.REPO_ROOT / "molecule" / "shared" / "prepare_shop.yml"
RECREATE_PLAYBOOK = testbed.REPO_ROOT / "playbooks" / "rollback_recreate.yml"
SHOP_DIR = "/srv/shop"
LEDGER_DIR = "/var/lib/stackops-rollback"


def molecule_platform():
    return yaml.safe_load(MOLECULE_CONFIG.read_text())["platforms"][0]


class SshKey:
    """A key pair made for one test run (ed25519, no passphrase); the test hosts' root accepts it.
    Host keys are not checked: each host makes its own at start, on an address the bridge reuses."""

    options = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR")

    def __init__(self, directory):
        self.private = Path(directory) / "id_ed25519"
        testbed.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stackops-testbed", "-f", str(self.private)])
        self.public = self.private.with_suffix(".pub").read_text().strip()

    def run(self, address, *argv, check=True):
        """argv run as root on the host at address, over SSH with this key (at most 10 s to connect)."""
        ssh = ["ssh", "-i", str(self.private), *self.options, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        return testbed.run([*ssh, "root@" + address, "--", *argv], check=check, timeout=60)


class DockerHost:
    def __init__(self, name):
        self.name = name
        # How a test reaches the inner engine: `docker exec -i <host> docker ...`.
        self.docker = ["docker", "exec", "-i", name, "docker"]

    @classmethod
    @contextlib.contextmanager
    def started(cls, prefix="st-dind", ssh_key=None):
        """A new test host with its engine answering; removed with its engine's volume at the end.
        With ssh_key (an SshKey), its sshd lets root in with that key (see ssh_inventory_line)."""
        host = cls(testbed.unique_name(prefix))
        try:
            host.run(ssh_key)
            host.wait_for_engine()
            if ssh_key:
                host.wait_for_ssh(ssh_key)
            yield host
        finally:
            host.remove()

    def run(self, ssh_key=None):
        """docker run the host (detached), as Molecule runs its hosts."""
        platform = molecule_platform()
        argv = ["docker", "run", "-d", "--name", self.name, "--tmpfs", "/run", "-v", "/var/lib/docker"]
        argv += ["--cap-add=%s" % cap for cap in platform["capabilities"]]
        argv += ["--security-opt=%s" % opt for opt in platform["security_opts"]]
        if ssh_key:
            argv += ["-e", "TESTHOST_AUTHORIZED_KEY=" + ssh_key.public]
        testbed.run([*argv, TESTHOST_IMAGE])

    def remove(self):
        testbed.run(["docker", "rm", "-f", "-v", self.name], check=False)

    def exec(self, *argv, check=True, **kwargs):
        return testbed.run(["docker", "exec", "-i", self.name, *argv], check=check, **kwargs)

    def engine_answers(self):
        return self.exec("docker", "info", "--format", "{{.ServerVersion}}", check=False).returncode == 0

    def wait_for_engine(self, timeout=90):
        testbed.wait_for(self.engine_answers, timeout, "the engine of test host %s" % self.name, interval=0.5)

    def load(self, images):
        """The outer engine's images, loaded into the inner engine (there is no registry it could reach)."""
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        try:
            self._load_from(save.stdout)
        finally:
            save.stdout.close()
            save.wait(timeout=300)
        assert save.returncode == 0, "docker save %s failed" % " ".join(images)

    def load_archive(self, archive):
        """Images from a `docker save` archive, loaded into the inner engine."""
        with open(archive, "rb") as stream:
            self._load_from(stream)

    def _load_from(self, stream):
        load = subprocess.run([*self.docker, "load", "-q"], stdin=stream, capture_output=True, check=False)
        assert load.returncode == 0, load.stderr

    def stop_engine(self, timeout=60):
        """Stop the inner dockerd as a service manager does (SIGTERM: it stops its containers first)."""
        self.exec("pkill", "-TERM", "-x", "dockerd")
        testbed.wait_for(
            lambda: not self.engine_running(),
            timeout,
            "dockerd to stop in %s" % self.name,
            interval=0.5,
        )

    def engine_running(self):
        """Whether a dockerd lives in the host (a dead one stays a zombie: the host's PID 1, a sleep,
        reaps nothing)."""
        states = self.exec("ps", "-C", "dockerd", "-o", "stat=", check=False).stdout.split()
        return any(not state.startswith("Z") for state in states)

    def start_engine(self):
        detached = ["docker", "exec", "-d", self.name, "sh", "-c", 'exec "$@" >>/var/log/dockerd.log 2>&1', "sh"]
        testbed.run([*detached, *INNER_DOCKERD])
        self.wait_for_engine()

    def inventory(self, path, group="hosts", **variables):
        """An inventory file naming this host, reached through the outer engine."""
        settings = dict(
            ansible_connection="community.docker.docker",
            ansible_host=self.name,
            ansible_python_interpreter="/usr/bin/python3",
            **variables,
        )
        line = " ".join("%s=%s" % item for item in settings.items())
        Path(path).write_text("[%s]\n%s %s\n" % (group, self.name, line))
        return path

    @functools.cached_property
    def address(self):
        """The host's address on the test bed engine's bridge network (its SSH server listens there);
        read once, as it stays the container's for its life."""
        found = testbed.run(
            ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", self.name]
        )
        return found.stdout.split()[0]

    def ssh_answers(self, ssh_key):
        return ssh_key.run(self.address, "true", check=False).returncode == 0

    def wait_for_ssh(self, ssh_key, timeout=60):
        testbed.wait_for(lambda: self.ssh_answers(ssh_key), timeout, "sshd of test host %s" % self.name, interval=0.5)

    def stop_ssh(self):
        """Stop every sshd of the host, the listener and the sessions Ansible holds open (as a host
        that went away does): every later connection is refused."""
        self.exec("pkill", "-KILL", "-x", "sshd")

    def start_ssh(self, ssh_key):
        self.exec(*SSHD)
        self.wait_for_ssh(ssh_key)

    def ssh_inventory_line(self, name, ssh_key, **variables):
        """An inventory line naming this host `name`, reached over SSH as root with ssh_key."""
        settings = dict(
            ansible_host=self.address,
            ansible_user="root",
            ansible_ssh_private_key_file=str(ssh_key.private),
            ansible_ssh_common_args="'%s'" % " ".join(ssh_key.options),
            ansible_python_interpreter="/usr/bin/python3",
            **variables,
        )
        return "%s %s\n" % (name, " ".join("%s=%s" % item for item in settings.items()))

    def lock(self, project="shop"):
        """A project's lock record on the host, read through the outer engine ({} when none)."""
        text = self.exec("cat", "%s/projects/%s/lock" % (LEDGER_DIR, project), check=False).stdout
        try:
            return json.loads(text)
        except ValueError:
            return {}

    def signal(self, pid, name):
        """Send signal `name` (STOP, CONT, ...) to process pid of the host; False when it is gone."""
        return self.exec("kill", "-" + name, str(pid), check=False).returncode == 0

    def process_state(self, pid):
        """The state of process pid (ps's STAT: T stopped, S sleeping...); '' when there is none."""
        return self.exec("ps", "-o", "stat=", "-p", str(pid), check=False).stdout.strip()

    def hold_lock_worker(self, project="shop"):
        """Stop (SIGSTOP) the module the project's lock names as the worker of its step: its pid,
        once stopped while the lock still names it; None when there is none or it had ended."""
        pid = (self.lock(project).get("worker") or {}).get("pid")
        if not pid or not self.signal(pid, "STOP"):
            return None
        if (self.lock(project).get("worker") or {}).get("pid") == pid:
            return pid
        self.signal(pid, "CONT")
        return None

    def read(self, path):
        return self.exec("cat", path).stdout

    def http_get(self, url):
        """GET url from inside the host (its 127.0.0.1): (status, body); 0 when nothing answers."""
        probe = (
            "import sys, urllib.request\n"
            "try:\n"
            "    r = urllib.request.urlopen(sys.argv[1], timeout=3)\n"
            "    print(r.status); sys.stdout.write(r.read().decode())\n"
            "except Exception as e:\n"
            "    print(getattr(e, 'code', 0))\n"
        )
        out = self.exec("python3", "-c", probe, url, check=False).stdout
        status, _newline, body = out.partition("\n")
        return int(status or 0), body


class SshFleet:
    """Test hosts reached over SSH, each with the shop (app + PostgreSQL) in SHOP_DIR, named in the
    inventory group `web` by the names given (web1, web2, ...)."""

    def __init__(self, hosts, key, directory, registry):
        self.hosts, self.key, self.directory, self.registry = hosts, key, directory, registry
        self.names = list(hosts)

    @classmethod
    @contextlib.contextmanager
    def started(cls, names, images, directory, prefix="st-sshfleet"):
        """The hosts started side by side, the shop's images loaded from one archive, the shop
        deployed at v1 then v2 over SSH; every host removed at the end."""
        key = SshKey(directory)
        hosts = {name: DockerHost(testbed.unique_name(prefix)) for name in names}
        archive = Path(directory) / "images.tar"
        with contextlib.ExitStack() as cleanup:
            for host in hosts.values():
                cleanup.callback(host.remove)
                host.run(ssh_key=key)
            shop_images = [images["APP_IMAGE"] + ":v1", images["APP_IMAGE"] + ":v2", images["POSTGRES_IMAGE"]]
            testbed.run(["docker", "save", "-o", str(archive), *shop_images])

            def ready(host):
                host.wait_for_engine()
                host.wait_for_ssh(key)
                host.load_archive(archive)

            with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
                list(pool.map(ready, hosts.values()))
            archive.unlink()
            fleet = cls(hosts, key, Path(directory), images["APP_IMAGE"].rsplit("/stackops/", 1)[0])
            fleet.deploy(["v1", "v2"])
            yield fleet

    def inventory(self, path, extra=None, names=None):
        """The group `web` of the hosts (or of `names`), over SSH; `extra` adds inventory variables
        to some of them ({name: {variable: value}})."""
        lines = [
            self.hosts[name].ssh_inventory_line(
                name,
                self.key,
                recreate_project_src=SHOP_DIR,
                recreate_backup_dir="/var/backups/shop",
                **(extra or {}).get(name, {}),
            )
            for name in names or self.names
        ]
        Path(path).write_text("[web]\n" + "".join(lines))
        return path

    def deploy(self, versions):
        """Deploy each version in turn on every host (and record it), a row written through each."""
        inventory = self.inventory(self.directory / "deploy.ini")
        result = testbed.run_playbook(
            PREPARE_SHOP,
            {"shop_dir": SHOP_DIR, "testbed_registry": self.registry, "shop_versions": list(versions)},
            inventory=str(inventory),
            extra_args=["--forks", str(len(self.hosts))],
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]

    def on_v2(self):
        """Every host on v2 again (a test or a round before may have rolled some back)."""
        if self.versions() != ["v2"] * len(self.names):
            self.deploy(["v2"])
        assert self.versions() == ["v2"] * len(self.names)
        return self

    def versions(self):
        return [self.hosts[name].http_get("http://127.0.0.1:8080/version")[1].strip() for name in self.names]

    def rows(self, name):
        status, body = self.hosts[name].http_get("http://127.0.0.1:8080/records")
        assert status == 200, body
        return [row["body"] for row in json.loads(body)]

    def state(self):
        """Per host: its containers (id, name, state) and every ledger file with its checksum (the
        lock's guard, an empty file any run's lock creates once, left out)."""
        found = {}
        for name, host in self.hosts.items():
            containers = host.exec("docker", "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.State}}")
            files = ["find", LEDGER_DIR, "-type", "f", "!", "-name", "lock.guard"]
            ledger = host.exec(*files, "-exec", "sha256sum", "{}", "+")
            found[name] = (sorted(containers.stdout.splitlines()), sorted(ledger.stdout.splitlines()))
        return found

    def variables(self, directory, **settings):
        """The rollback's extra vars: the shop's health check, the report under directory/reports."""
        return dict(
            {
                "recreate_health_http": [{"url": "http://127.0.0.1:8080/health", "successes": 2}],
                "recreate_health_timeout": 60,
                "recreate_health_min_uptime": 1,
                "rollback_report_dir": str(Path(directory) / "reports"),
            },
            **settings,
        )

    def roll_back(self, directory, inventory=None, extra_args=(), env=None, **settings):
        """playbooks/rollback_recreate.yml -l web over SSH, a fork per host."""
        inventory = inventory or self.inventory(Path(directory) / "fleet.ini")
        return testbed.run_playbook(
            RECREATE_PLAYBOOK,
            self.variables(directory, **settings),
            inventory=str(inventory),
            extra_args=["-l", "web", "--forks", str(len(self.hosts)), *extra_args],
            env=env,
        )


def fault_at_step(host, step, fault, playbook, variables, inventory, log, within=400, when=None):
    """Start playbook (its output to log), do fault() once host's lock shows `step` (or once
    when(lock record) is true), then wait for the run to end (killing its process group if it has
    not within 600 s). Fails when the run ended before. Returns the run's return code."""
    ready = when or (lambda lock: lock.get("step") == step)
    run = testbed.start_playbook(playbook, variables, str(inventory), str(log))
    try:
        testbed.wait_for(lambda: run.poll() is not None or ready(host.lock()), within, "step " + step)
        assert run.poll() is None, "the run ended before step %s: %s" % (step, Path(log).read_text()[-4000:])
        fault()
        return run.wait(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
