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

import contextlib
import subprocess
from pathlib import Path

import testbed
import yaml

TESTHOST_IMAGE = "stackops-testbed/testhost:latest"
# The capabilities and options Molecule's hosts run with (--privileged fails on these machines):
# one list, in .config/molecule/config.yml.
MOLECULE_CONFIG = testbed.REPO_ROOT / ".config" / "molecule" / "config.yml"
INNER_DOCKERD = ["dockerd", "--cgroup-parent=/stackops-inner", "--host=unix:///var/run/docker.sock"]


def molecule_platform():
    return yaml.safe_load(MOLECULE_CONFIG.read_text())["platforms"][0]


class DockerHost:
    def __init__(self, name):
        self.name = name
        # How a test reaches the inner engine: `docker exec -i <host> docker ...`.
        self.docker = ["docker", "exec", "-i", name, "docker"]

    @classmethod
    @contextlib.contextmanager
    def started(cls, prefix="st-dind"):
        """A new test host with its engine answering; removed with its engine's volume at the end."""
        host = cls(testbed.unique_name(prefix))
        platform = molecule_platform()
        argv = ["docker", "run", "-d", "--name", host.name, "--tmpfs", "/run", "-v", "/var/lib/docker"]
        argv += ["--cap-add=%s" % cap for cap in platform["capabilities"]]
        argv += ["--security-opt=%s" % opt for opt in platform["security_opts"]]
        try:
            testbed.run([*argv, TESTHOST_IMAGE])
            host.wait_for_engine()
            yield host
        finally:
            testbed.run(["docker", "rm", "-f", "-v", host.name], check=False)

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
            load = subprocess.run(
                ["docker", "exec", "-i", self.name, "docker", "load", "-q"],
                stdin=save.stdout,
                capture_output=True,
                check=False,
            )
        finally:
            save.stdout.close()
            save.wait(timeout=300)
        assert save.returncode == 0 and load.returncode == 0, load.stderr

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
