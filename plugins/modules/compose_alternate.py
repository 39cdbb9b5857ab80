#!/usr/bin/python
# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_alternate
short_description: Render the alternate (green) copy of a compose project for a blue-green switch
version_added: 1.0.0
description:
  - Resolves a compose project (C(docker compose config)) and writes a compose file for a second
    copy of it under another project name, to run beside the primary one during a blue-green switch.
  - Only the services that may run twice get a copy - by default those that mount no named volume.
    Services with named volumes (databases) stay single and keep running; the copies join the
    primary project's networks and reach them by name.
  - Starting a second copy of a service that mounts a named volume is refused, as is a service with a
    fixed C(container_name), or a single service whose image the target release changes.
  - Published ports of the copies move by O(port_offset) or O(port_map); the alternate ports must be
    free on the host, or published by the copy itself (a run that resumes a dead one).
  - The written file holds the resolved configuration, environment included, and is made 0600.
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
attributes:
  check_mode:
    support: full
    details: Computes and checks everything, writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: The file is only rewritten when its content changes.
options:
  project_src:
    description:
      - Directory holding the compose files of the version to start as the copy.
    type: path
    required: true
  files:
    description:
      - Compose files, relative to O(project_src) or absolute (the pin override of the target release last).
    type: list
    elements: path
  project_name:
    description:
      - Name of the primary project, whose networks the copy joins.
    type: str
    required: true
  alternate_name:
    description:
      - Project name of the copy. Defaults to O(project_name) followed by C(-green).
    type: str
  services:
    description:
      - Services that get a copy. Defaults to every service that mounts no named volume.
    type: list
    elements: str
  port_offset:
    description:
      - Added to each published port of a copied service to give its alternate port.
    type: int
    default: 10000
  port_map:
    description:
      - "Alternate port for a published port, overriding O(port_offset) (for example V({8080: 18080}))."
    type: dict
  keep_single_images:
    description:
      - Images the single services run now (service name to image reference). A single service whose
        image differs in the target cannot be rolled back by a blue-green switch, and is refused.
    type: dict
  proxy_service:
    description:
      - Service the reverse proxy sends traffic to; with O(proxy_port), returns RV(upstreams).
    type: str
  proxy_port:
    description:
      - Container port of O(proxy_service) the proxy reaches through its published port.
    type: int
  upstream_host:
    description:
      - Host part of the upstream addresses the proxy dials (Caddy on the host network or on the host itself
        reaches published ports on V(127.0.0.1)).
    type: str
    default: 127.0.0.1
  dest:
    description:
      - Where to write the copy's compose file (JSON, which Compose reads as YAML).
    type: path
    required: true
  docker_host:
    description:
      - The Docker engine to talk to. Defaults to E(DOCKER_HOST), then V(unix:///var/run/docker.sock).
    type: str
    aliases: [docker_url]
requirements:
  - Docker Compose v2 (>= 2.18)
seealso:
  - module: stackops.rollback.caddy_upstream
"""

EXAMPLES = r"""
- name: Render the green copy of the shop at its previous release
  stackops.rollback.compose_alternate:
    project_src: /var/lib/stackops-rollback/staging/shop
    files: [compose.yml, /var/lib/stackops-rollback/projects/shop/pin.yml]
    project_name: shop
    proxy_service: app
    proxy_port: 8080
    dest: /var/lib/stackops-rollback/projects/shop/green.json
  register: shop_green

- name: Start it
  community.docker.docker_compose_v2:
    project_src: /var/lib/stackops-rollback/staging/shop
    project_name: "{{ shop_green.alternate_name }}"
    files: ["{{ shop_green.compose_file }}"]
    wait: true
"""

RETURN = r"""
alternate_name:
  description: Project name of the copy.
  returned: success
  type: str
compose_file:
  description: Path of the copy's compose file.
  returned: success
  type: str
services:
  description: Services that get a copy.
  returned: success
  type: list
  elements: str
single:
  description: Services that stay single and keep running in the primary project.
  returned: success
  type: list
  elements: str
ports:
  description: Each moved port - C(service), C(target) (container port), C(published) (primary), C(alternate).
  returned: success
  type: list
  elements: dict
upstreams:
  description: The proxy's upstreams for the primary (C(primary)) and the copy (C(alternate)), as lists of host:port.
  returned: when O(proxy_service) and O(proxy_port) are set
  type: dict
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.stackops.rollback.plugins.module_utils._alternate import (
    AlternateError,
    alternate_model,
    alternate_ports,
    port_is_free,
    published_ports,
    split_services,
    upstreams,
)
from ansible_collections.stackops.rollback.plugins.module_utils._compose import Compose, ComposeError
from ansible_collections.stackops.rollback.plugins.module_utils._docker import get_client
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import atomic_write


class AlternateRenderer:
    def __init__(self, module):
        self.module = module
        self.params = module.params

    def run(self):
        p = self.params
        name = p["alternate_name"] or "%s-green" % p["project_name"]
        model = Compose(
            self.module,
            project_src=p["project_src"],
            project_name=p["project_name"],
            files=p["files"],
            docker_host=p["docker_host"],
        ).config()
        services, single = split_services(model, p["services"])
        self.check_single_images(model, single)
        # A run that resumes a dead one finds its own copy on the alternate ports: they are its own.
        own = published_ports(
            get_client(self.module).containers.list(all=True, filters={"label": "com.docker.compose.project=%s" % name})
        )
        mapping = alternate_ports(
            model,
            services,
            p["port_offset"],
            p["port_map"],
            is_free=lambda port, host_ip="": port in own or port_is_free(port, host_ip),
        )
        content = (
            json.dumps(alternate_model(model, p["project_name"], name, services, mapping), indent=2, sort_keys=True)
            + "\n"
        ).encode()
        old = None
        if os.path.exists(p["dest"]):
            with open(p["dest"], "rb") as fh:
                old = fh.read()
        changed = old != content
        if changed and not self.module.check_mode:
            os.makedirs(os.path.dirname(p["dest"]), mode=0o700, exist_ok=True)
            atomic_write(p["dest"], content, 0o600)
        result = dict(
            changed=changed,
            alternate_name=name,
            compose_file=p["dest"],
            services=services,
            single=single,
            ports=mapping,
        )
        if p["proxy_service"] and p["proxy_port"]:
            primary, alternate = upstreams(mapping, p["proxy_service"], p["proxy_port"], p["upstream_host"])
            result["upstreams"] = {"primary": [primary], "alternate": [alternate]}
        return result

    def check_single_images(self, model, single):
        running = self.params["keep_single_images"] or {}
        for name in single:
            wanted = model["services"][name].get("image")
            now = running.get(name)
            if now and wanted and now != wanted:
                raise AlternateError(
                    "service %s stays single in a blue-green switch (it mounts a named volume), but the target "
                    "release runs it from another image (%s, now %s); a blue-green switch cannot change it. Roll "
                    "back with the stackops.rollback.recreate role instead" % (name, wanted, now)
                )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            project_src=dict(type="path", required=True),
            files=dict(type="list", elements="path"),
            project_name=dict(type="str", required=True),
            alternate_name=dict(type="str"),
            services=dict(type="list", elements="str"),
            port_offset=dict(type="int", default=10000),
            port_map=dict(type="dict"),
            keep_single_images=dict(type="dict"),
            proxy_service=dict(type="str"),
            proxy_port=dict(type="int"),
            upstream_host=dict(type="str", default="127.0.0.1"),
            dest=dict(type="path", required=True),
            docker_host=dict(type="str", aliases=["docker_url"]),
        ),
        required_together=[("proxy_service", "proxy_port")],
        supports_check_mode=True,
    )
    try:
        result = AlternateRenderer(module).run()
    except (AlternateError, ComposeError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
