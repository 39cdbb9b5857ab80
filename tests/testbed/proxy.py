"""A Caddy in front of app v1 ("blue") and v2 ("green"): shared by the proxy tests and benchmarks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path

import testbed
from loadgen import LoadGenerator, summarize

CADDYFILE = """\
# stackops test proxy: the comment, the tabs and the other site must survive every switch
{{
\tadmin {admin}
}}

(headers) {{
\theader X-Proxy stackops
}}

:{port} {{
\timport headers
\treverse_proxy {upstream} {{
\t\thealth_uri /health
\t}}
}}

:{other_port} {{
\trespond "other site" 200
}}
"""

PROXY_COMPOSE = """\
services:
  blue:
    image: {app}:v1
  green:
    image: {app}:v2
  caddy:
    image: {caddy}
    command: ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
    ports:
      - "127.0.0.1:{port}:80"
    volumes:
      - {mount}
    depends_on: [blue, green]
{sysctls}"""

# Without it a reload resets now and then a connection queued on Caddy's old listening socket.
MIGRATE_REQ_SYSCTLS = """\
    sysctls:
      net.ipv4.tcp_migrate_req: 1
"""


class Proxy:
    """A Caddy in front of blue and green, and how to call caddy_upstream against it."""

    def __init__(self, caddyfile, url, module_args, version_of):
        self.caddyfile = caddyfile
        self.url = url
        self.module_args = module_args
        self.version_of = version_of  # upstream -> the version it serves

    def switch(self, upstreams, **extra):
        args = dict(self.module_args, upstreams=upstreams)
        args.update(extra)
        return testbed.run_module("caddy_upstream", args, diff=True)

    def served(self):
        status, body = testbed.http_get(self.url + "/version")
        return body.strip() if status == 200 else "HTTP %s %s" % (status, body[:80])


def container_proxy(compose_stack, images, tmp_path, single_file, migrate_req=True):
    """Caddy 2.6 in a container, its Caddyfile (or the Caddyfile's directory) bind-mounted.

    migrate_req: set net.ipv4.tcp_migrate_req=1 in Caddy's network namespace, as caddy_upstream
    recommends (the benchmark measures without it too).
    """
    port = testbed.free_port()
    proxy_dir = tmp_path / "proxy"
    proxy_dir.mkdir()
    caddyfile = proxy_dir / "Caddyfile"
    caddyfile.write_text(CADDYFILE.format(admin="localhost:2019", port=80, upstream="blue:8080", other_port=8081))
    mount = "%s:/etc/caddy/Caddyfile" % caddyfile if single_file else "%s:/etc/caddy" % proxy_dir
    stack = compose_stack(
        PROXY_COMPOSE.format(
            app=images["APP_IMAGE"],
            caddy=images["CADDY_IMAGE"],
            port=port,
            mount=mount,
            sysctls=MIGRATE_REQ_SYSCTLS if migrate_req else "",
        ),
        prefix="st-caddy",
    )
    stack.up(wait=False)
    url = "http://127.0.0.1:%d" % port
    testbed.wait_http(url + "/version", body_contains="v1", timeout=60)
    container = stack.container_id("caddy")
    proxy = Proxy(
        caddyfile,
        url,
        {"caddyfile": str(caddyfile), "site": ":80", "container": container},
        {"blue:8080": "v1", "green:8080": "v2"},
    )
    proxy.stack = stack
    proxy.container = container
    return proxy


def running_dials_in(container):
    out = testbed.run(["docker", "exec", container, "wget", "-q", "-O", "-", "http://localhost:2019/config/"]).stdout
    return dials(json.loads(out))


def admin_dials(admin_url):
    """What a Caddy reachable on 127.0.0.1 dials, read from its admin API's running config."""
    status, body = testbed.http_get(admin_url + "/config/")
    assert status == 200, body
    return dials(json.loads(body))


def dials(config):
    from ansible_collections.stackops.rollback.plugins.module_utils._caddyfile import proxy_dials

    return proxy_dials(config)


def switch_under_load(proxy, switch, switches=10, rate=120, min_requests=2100, hold=1.0):
    """Switch back and forth `switches` times with switch(upstream) under `rate` requests/s.

    Returns (summary, wrong, marks): the load summary, (switch index, version, answer, delay) of
    requests sent after a switch returned that still came from the other version, and
    (start, end, version) per switch.
    """
    upstreams = list(proxy.version_of)
    marks = []
    load = LoadGenerator(proxy.url + "/version", rate=rate, max_requests=6000, max_seconds=150).start()
    try:
        time.sleep(1.0)
        for i in range(switches):
            target = upstreams[(i + 1) % 2]
            started = time.monotonic()
            switch(target)
            marks.append((started, time.monotonic(), proxy.version_of[target]))
            time.sleep(hold)  # every switch gets a window of answers to be judged by
        # Keep the load on until there are enough samples after the last switch.
        load.wait_for_samples(min_requests, within=30)
        time.sleep(1.0)
    finally:
        samples = load.stop()
    wrong = []
    for index, ((_start, done, version), following) in enumerate(zip(marks, [*marks[1:], (float("inf"), 0, None)])):
        for sample in samples:
            if done < sample.started < following[0] and sample.ok and sample.body.strip() != version:
                wrong.append((index, version, sample.body.strip(), round(sample.started - done, 3)))
    return summarize(samples), wrong, marks


# Caddy in a container on the host's network, in front of a compose project's published port:
# the field guide's blue-green setup, where green gets alternate host ports.
HOST_CADDYFILE = """\
# stackops test proxy for {project}
{{
\tadmin 127.0.0.1:{admin}
}}

http://127.0.0.1:{port} {{
\treverse_proxy {upstream}
}}
"""

HOST_CADDY_COMPOSE = """\
services:
  caddy:
    image: {caddy}
    network_mode: host
    command: ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
    volumes:
      - {directory}:/etc/caddy
"""

MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")
# Tests run in parallel (pytest -n): the host's setting is shared, so the processes that need it
# are kept in one file under a lock, and the last one out puts the kernel's value back.
MIGRATE_REQ_HOLDERS = Path(tempfile.gettempdir()) / "stackops-tcp-migrate-req.json"


@contextlib.contextmanager
def _holders():
    with open(str(MIGRATE_REQ_HOLDERS) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(MIGRATE_REQ_HOLDERS.read_text())
        except (OSError, ValueError):
            state = {"before": None, "holders": []}
        # A holder killed before its exit would keep the setting forever: drop the dead.
        state["holders"] = [pid for pid in state["holders"] if Path("/proc/%d" % pid).exists()]
        yield state
        MIGRATE_REQ_HOLDERS.write_text(json.dumps(state))


@contextlib.contextmanager
def host_migrates_queued_connections():
    """net.ipv4.tcp_migrate_req=1 on the host while a Caddy runs in its network namespace."""
    with _holders() as state:
        if not state["holders"]:
            state["before"] = MIGRATE_REQ.read_text().strip()
        state["holders"].append(os.getpid())
        MIGRATE_REQ.write_text("1\n")
    try:
        yield
    finally:
        with _holders() as state:
            if os.getpid() in state["holders"]:
                state["holders"].remove(os.getpid())
            if not state["holders"] and state["before"] is not None:
                MIGRATE_REQ.write_text(state["before"] + "\n")


class HostCaddy:
    """A Caddy container on the host network sending http://127.0.0.1:<port> to one upstream."""

    def __init__(self, compose_stack, images, directory, project, upstream):
        self.port, self.admin = testbed.free_port(), testbed.free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.caddyfile = directory / "Caddyfile"
        self.caddyfile.write_text(
            HOST_CADDYFILE.format(project=project, admin=self.admin, port=self.port, upstream=upstream)
        )
        self.site = "http://127.0.0.1:%d" % self.port
        self.url = self.site
        self.admin_url = "http://127.0.0.1:%d" % self.admin
        self.stack = compose_stack(
            HOST_CADDY_COMPOSE.format(caddy=images["CADDY_IMAGE"], directory=directory), prefix="st-bg-caddy"
        )
        self.stack.up(wait=False)
        self.container = self.stack.container_id("caddy")
        testbed.wait_http(self.admin_url + "/config/", timeout=60)

    def running_dials(self):
        return admin_dials(self.admin_url)
