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
  - Published ports of the copies move by O(port_offset) or O(port_map), onto O(alternate_address)
    (V(127.0.0.1) by default - the copy is for the proxy, not the world). A port of O(port_map) must be
    free on the host, or published by the copy itself (a run that resumes a dead one); an offset port
    that is taken or out of range is replaced by a free one, returned with C(chosen=true).
  - The written file holds the resolved configuration, environment included, and is made 0600.
author:
  - stackops.rollback developers (@stackops)
extends_documentation_fragment:
  - stackops.rollback.attributes
  - stackops.rollback.compose_project
  - stackops.rollback.docker
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
      - Services that get a copy. Defaults to every service that mounts no data - no named volume and
        no writable bind mount outside O(shareable_paths) and the system paths. A service named here
        that mounts data is refused, nothing written.
    type: list
    elements: str
  shareable_paths:
    description:
      - Host directories that both copies of a service may write at once (for example an uploads
        directory the application writes safely from two processes). A writable bind mount inside
        one of them does not keep its service single.
    type: list
    elements: path
    default: []
  base_dir:
    description:
      - The project directory, when O(project_src) is a staging folder that holds only the target's
        files. The copy then runs on the project's own files - relative bind mounts, build contexts
        and file-based configs and secrets resolve under O(base_dir), as they do for the primary
        project - while the env files are read from O(project_src) (the target's contents).
    type: path
  port_offset:
    description:
      - Added to each published port of a copied service to give its alternate port.
    type: int
    default: 10000
  port_map:
    description:
      - "Alternate port for a published port, overriding O(port_offset) (for example V({8080: 18080}))."
    type: dict
  alternate_address:
    description:
      - Host address the copies publish their ports on. An empty string keeps each port's own address
        (a port published on every interface stays so).
    type: str
    default: 127.0.0.1
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
  description:
    - Each moved port - C(service), C(target) (container port), C(published) (primary), C(alternate),
      C(alternate_ip) (its host address), C(chosen) (true when a free port replaced a taken or
      out-of-range offset port).
  returned: success
  type: list
  elements: dict
upstreams:
  description: The proxy's upstreams for the primary (C(primary)) and the copy (C(alternate)), as lists of host:port.
  returned: when O(proxy_service) and O(proxy_port) are set
  type: dict
"""

from ansible_collections.stackops.rollback.plugins.module_utils._alternate import AlternateError, AlternateRenderer
from ansible_collections.stackops.rollback.plugins.module_utils._compose import compose_project_args
from ansible_collections.stackops.rollback.plugins.module_utils._docker import EngineError, docker_module


def main():
    argument_spec = dict(
        alternate_name=dict(type="str"),
        services=dict(type="list", elements="str"),
        port_offset=dict(type="int", default=10000),
        port_map=dict(type="dict"),
        alternate_address=dict(type="str", default="127.0.0.1"),
        keep_single_images=dict(type="dict"),
        proxy_service=dict(type="str"),
        proxy_port=dict(type="int"),
        upstream_host=dict(type="str", default="127.0.0.1"),
        dest=dict(type="path", required=True),
        base_dir=dict(type="path"),
        shareable_paths=dict(type="list", elements="path", default=[]),
    )
    argument_spec.update(compose_project_args(project_src=dict(required=True), project_name=dict(required=True)))
    module, engine = docker_module(argument_spec, required_together=[("proxy_service", "proxy_port")])
    try:
        result = AlternateRenderer(module.params, engine, module.check_mode).run()
    except (AlternateError, EngineError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
