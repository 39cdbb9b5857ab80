#!/usr/bin/python
# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: caddy_upstream
short_description: Switch the upstreams of a Caddy reverse_proxy, validated, reloaded and confirmed
version_added: 1.0.0
description:
  - Points one C(reverse_proxy) of one site of a Caddyfile at new upstreams, the blue-green switch of
    the field guide, done so that it cannot leave a broken or silently ignored Caddyfile behind.
  - Only the upstream tokens change (on the directive line or in its C(to) lines); comments,
    formatting, snippets, imports, matchers, other sites and placeholders stay byte for byte. The site
    and directive are found with a tokenizer for the Caddyfile syntax, not a regular expression.
  - The candidate is adapted and validated by the very Caddy that will run it (C(caddy adapt --validate)
    in the container, or the local binary) before anything is written; if Caddy rejects it, nothing is
    written.
  - The file is rewritten in place (same inode), so a Caddyfile bind-mounted into a container as a
    single file sees the change; a copy of the previous file is kept when O(backup=true).
  - After the reload (with a time limit) the admin API's running config must dial exactly the
    upstreams the new file adapts to. If the reload fails or times out, or the running config does not
    match, the previous file is put back and reloaded, and the module fails with the reason.
  - A file that already names the requested upstreams, with a running config that dials them, is left
    alone - no write and no reload.
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.docker
  - stackops.rollback.ledger
  - stackops.rollback.ledger.lease
attributes:
  check_mode:
    support: full
    details: Reads the file, finds the directive, checks that Caddy is reachable; writes and reloads nothing.
  diff_mode:
    support: full
    details: The Caddyfile before and after.
  idempotent:
    support: full
options:
  drain_seconds:
    description:
      - After the switch, wait this long (fractions of a second count) before returning, so that the
        requests in flight on the side the traffic left finish before anything stops it. Measured on the
        managed host and returned in RV(drained_seconds); with O(renew_lock) the lock's lease is kept
        meanwhile. Not in check mode.
    type: float
    default: 0
  caddyfile:
    description:
      - Path of the Caddyfile on the managed host.
      - With O(container), the file or its directory must be bind-mounted into the container.
    type: path
    required: true
  site:
    description:
      - The site address as written in the Caddyfile (V(app.example.com), V(:80)); one of the addresses
        of a block that has several.
    type: str
    required: true
  match:
    description:
      - Which C(reverse_proxy) of the site, when it has several - its path matcher or named matcher
        (V(/api/*), V(@api)), or the enclosing block as written (V(handle /api/*), V(handle)).
      - Without it a site with several C(reverse_proxy) directives is an error that lists them.
    type: str
  upstreams:
    description:
      - The new upstreams, each V(host:port), in the order Caddy should use them.
    type: list
    elements: str
    required: true
  container:
    description:
      - Name or id of the container Caddy runs in. Caddy's own binary in it validates and reloads, and
        the admin API is read from inside it (with C(wget) or C(curl) from the image).
      - Without it, the C(caddy) binary on the managed host is used (Caddy run by systemd).
    type: str
  caddy_binary:
    description:
      - Path or name of the C(caddy) binary on the managed host, when O(container) is not set.
    type: str
    default: caddy
  admin_url:
    description:
      - Caddy's admin API, as seen from where Caddy runs (inside the container with O(container)).
      - Defaults to V(http://localhost:2019); when set, it is also passed to C(caddy reload --address).
    type: str
  reload:
    description:
      - Reload Caddy after writing and confirm the running config. With V(false) only the file changes
        (and is still validated).
    type: bool
    default: true
  reload_timeout:
    description:
      - Seconds a validation or reload may take before it counts as failed (and the previous file is
        restored).
    type: int
    default: 30
  backup:
    description:
      - Keep a copy of the previous Caddyfile next to it (its path is returned as RV(backup_file)).
    type: bool
    default: true
notes:
  - Caddy on Linux listens with C(SO_REUSEPORT), and a reload replaces its listening socket. Unless
    C(net.ipv4.tcp_migrate_req=1) is set in Caddy's network namespace, the kernel resets connections
    still queued on the old socket (about one per 20-40 reloads under load). The module reads the
    setting, returns it as RV(reload_keeps_queued_connections) and warns when it is off; set it with
    C(sysctls) on the Caddy container, or C(sysctl) on the host for Caddy under systemd.
  - Order the switch before stopping the old backend, and keep the old backend running until the module
    returns; this module does not stop or start backends.
seealso:
  - module: stackops.rollback.compose_alternate
  - module: stackops.rollback.compose_health
"""

EXAMPLES = r"""
- name: Switch the app site to the green copy (Caddy in a container, Caddyfile bind-mounted)
  stackops.rollback.caddy_upstream:
    caddyfile: /srv/proxy/Caddyfile
    site: app.example.com
    upstreams: ["shop-green-web-1:8000"]
    container: caddy
  register: switch

- name: Switch back to what was there before
  stackops.rollback.caddy_upstream:
    caddyfile: /srv/proxy/Caddyfile
    site: app.example.com
    upstreams: "{{ switch.previous_upstreams }}"
    container: caddy

- name: Only the API handler of a site with several reverse_proxy directives, Caddy under systemd
  stackops.rollback.caddy_upstream:
    caddyfile: /etc/caddy/Caddyfile
    site: ":443"
    match: /api/*
    upstreams: ["127.0.0.1:18000", "127.0.0.1:18001"]
    admin_url: http://localhost:2019
"""

RETURN = r"""
drained_seconds:
  description: How long the drain after the switch took, measured on the managed host.
  returned: when O(drain_seconds) is above 0, not in check mode
  type: float
  sample: 0.5
previous_upstreams:
  description: The upstreams the directive named before (what to pass to switch back).
  returned: always
  type: list
  elements: str
  sample: ["shop-web-1:8000"]
upstreams:
  description: The upstreams the directive names now.
  returned: always
  type: list
  elements: str
  sample: ["shop-green-web-1:8000"]
directive:
  description: Where the switched C(reverse_proxy) stands in the Caddyfile.
  returned: always
  type: str
  sample: "line 7: handle /api/* > reverse_proxy shop-web-1:8000"
written:
  description: Whether the file was (or, in check mode, would be) rewritten.
  returned: always
  type: bool
reloaded:
  description: Whether Caddy was reloaded.
  returned: always
  type: bool
backup_file:
  description: The copy of the previous Caddyfile.
  returned: when the file was rewritten and O(backup=true)
  type: str
  sample: /srv/proxy/Caddyfile.4242.2026-11-24@10:31:02~
reload_keeps_queued_connections:
  description:
    - Whether C(net.ipv4.tcp_migrate_req) is on in Caddy's network namespace, so that a reload resets no
      queued connection; V(null) when it cannot be read (kernels before 5.14 lack it).
  returned: always
  type: bool
  sample: true
reload_seconds:
  description: Time from writing the file to the running config confirming the new upstreams.
  returned: when Caddy was reloaded
  type: float
  sample: 0.21
host_time:
  description:
    - The managed host's clock (epoch seconds) when the module started, before anything switched - where a
      downtime window that begins with this switch opens.
  returned: success
  type: float
  sample: 1764633601.1
switched_at:
  description:
    - The epoch time (seconds) at which the running config was confirmed to dial the new upstreams,
      for a downtime measurement (O(stackops.rollback.compose_health#module:downtime_routes)).
  returned: when Caddy was reloaded
  type: float
  sample: 1764633601.312
"""

import time

from ansible_collections.stackops.rollback.plugins.module_utils._caddy import CaddyError, SwitchFailed, UpstreamSwitch
from ansible_collections.stackops.rollback.plugins.module_utils._caddyfile import CaddyfileError
from ansible_collections.stackops.rollback.plugins.module_utils._docker import EngineError, docker_module
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import LEASE_ARGS, run_keeping_lease


def switch_and_drain(module, engine):
    """The switch, then the drain: requests in flight on the side left finish before it stops."""
    host_time = time.time()  # before anything switches: a downtime window opens here, on the host's clock
    result = UpstreamSwitch(module, engine).run()
    result["host_time"] = host_time
    drain = module.params["drain_seconds"]
    if drain > 0 and not module.check_mode:
        started = time.monotonic()
        time.sleep(drain)
        result["drained_seconds"] = round(time.monotonic() - started, 3)
    return result


def main():
    argument_spec = dict(
        drain_seconds=dict(type="float", default=0),
        caddyfile=dict(type="path", required=True),
        site=dict(type="str", required=True),
        match=dict(type="str"),
        upstreams=dict(type="list", elements="str", required=True),
        container=dict(type="str"),
        caddy_binary=dict(type="str", default="caddy"),
        admin_url=dict(type="str"),
        reload=dict(type="bool", default=True),
        reload_timeout=dict(type="int", default=30),
        backup=dict(type="bool", default=True),
    )
    argument_spec.update(LEASE_ARGS)
    module, engine = docker_module(argument_spec)
    if module.params["drain_seconds"] < 0:
        drain = module.params["drain_seconds"]
        module.fail_json(msg="drain_seconds is %s: give 0 or more seconds; nothing was changed" % drain)
    try:
        result = run_keeping_lease(module, lambda: switch_and_drain(module, engine))
    except SwitchFailed as exc:
        module.fail_json(msg=str(exc), **exc.result)
    except (CaddyfileError, CaddyError, EngineError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
