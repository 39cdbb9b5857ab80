# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The alternate ("green") copy of a compose project for a blue-green switch.

From the resolved model of a project (`docker compose config --format json`) keep only the
services that may run twice, move their published ports, and join the primary project's
networks so that they reach the services that stay single (a database). The functions are
pure; `AlternateRenderer`, at the end, feeds them the model and the engine's facts and writes
the result.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import socket

from ansible_collections.stackops.rollback.plugins.module_utils._compose import Compose
from ansible_collections.stackops.rollback.plugins.module_utils._docker import within
from ansible_collections.stackops.rollback.plugins.module_utils._files import atomic_write, read_bytes
from ansible_collections.stackops.rollback.plugins.module_utils._volumes import SYSTEM_PATHS


class AlternateError(Exception):
    """The project cannot be duplicated as asked; the message says why and what to do."""


def data_mounts(service, shareable=()):
    """What a service mounts that a second copy must not write at the same time: its named volumes,
    and its writable bind mounts (system paths and those inside a `shareable` directory aside)."""
    found = []
    for mount in service.get("volumes") or []:
        if not isinstance(mount, dict) or not mount.get("source"):
            continue
        source = mount["source"]
        if mount.get("type") == "volume":
            found.append("volume %s" % source)
        elif mount.get("type") == "bind" and not mount.get("read_only"):
            source = os.path.normpath(source)
            if not any(within(source, path) for path in SYSTEM_PATHS + tuple(shareable)):
                found.append("directory %s" % source)
    return found


def rebased(model, staged_dir, base_dir):
    """The model with every path Compose resolved under the staging folder (relative bind mounts,
    build contexts, file-based configs and secrets) moved to the same place under the project
    directory: green runs on the project's own files, as blue does. The env files were read from
    the staging folder already (the target's contents)."""
    staged_dir, base_dir = os.path.normpath(staged_dir), os.path.normpath(base_dir)

    def moved(path):
        path = os.path.normpath(path)
        return base_dir + path[len(staged_dir) :] if within(path, staged_dir) else path

    model = copy.deepcopy(model)
    for service in (model.get("services") or {}).values():
        for mount in service.get("volumes") or []:
            if isinstance(mount, dict) and mount.get("type") == "bind" and mount.get("source"):
                mount["source"] = moved(mount["source"])
        build = service.get("build")
        if isinstance(build, dict) and build.get("context"):
            build["context"] = moved(build["context"])
    for section in ("configs", "secrets"):
        for item in (model.get(section) or {}).values():
            if isinstance(item, dict) and item.get("file"):
                item["file"] = moved(item["file"])
    return model


def split_services(model, duplicable=None, shareable=()):
    """(services that get a green copy, services that stay single): a service that mounts data
    (data_mounts) stays single."""
    services = model.get("services", {})
    if duplicable:
        unknown = sorted(set(duplicable) - set(services))
        if unknown:
            raise AlternateError(
                "service(s) %s named as duplicable are not in the project (it has %s)"
                % (", ".join(unknown), ", ".join(sorted(services)))
            )
        chosen = list(duplicable)
    else:
        chosen = [name for name, svc in services.items() if not data_mounts(svc, shareable)]
    for name in chosen:
        data = data_mounts(services[name], shareable)
        if data:
            raise AlternateError(
                "refusing to start a second copy of service %s: it mounts %s, which the running copy writes "
                "(two database servers on one data directory corrupt it). Leave it out of the duplicable "
                "services: it keeps running once and the green copies reach it; a directory both copies may "
                "write goes in the shareable paths" % (name, ", ".join(data))
            )
        if services[name].get("container_name"):
            raise AlternateError(
                "service %s sets container_name %s: a second copy cannot have the same name; remove "
                "container_name or leave the service out of the duplicable services"
                % (name, services[name]["container_name"])
            )
    if not chosen:
        raise AlternateError(
            "no service of the project can be duplicated (every one mounts a volume or a writable directory)"
        )
    single = sorted(set(services) - set(chosen))
    return sorted(chosen), single


def port_bindings(service):
    """Published ports of a resolved service: list of dicts with target, published, host_ip, protocol."""
    result = []
    for port in service.get("ports") or []:
        published = port.get("published")
        if published in (None, ""):
            continue
        result.append(
            {
                "target": int(port["target"]),
                "published": int(str(published).split("-", maxsplit=1)[0]),
                "host_ip": port.get("host_ip") or "",
                "protocol": port.get("protocol") or "tcp",
            }
        )
    return result


def port_is_free(port, host_ip=""):
    """True when nothing listens on host_ip:port (tcp)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            # A port published on all interfaces is probed there; the socket closes at once.
            sock.bind((host_ip or "0.0.0.0", port))  # noqa: S104
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def published_ports(containers):
    """Host ports (ints) published by these Docker SDK containers."""
    ports = set()
    for container in containers:
        for bindings in (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).values():
            for binding in bindings or []:
                if str(binding.get("HostPort") or "").isdigit():
                    ports.add(int(binding["HostPort"]))
    return ports


# Where a taken or out-of-range offset port looks for a free one instead: above the well-known ports.
FREE_PORT_RANGE = (1024, 65535)
FREE_PORT_ATTEMPTS = 2000


def alternate_ports(model, services, offset=None, port_map=None, is_free=port_is_free, address="127.0.0.1"):
    """Map each published port of the duplicable services to its alternate, on `address` (None keeps
    each port's own host address). A port_map entry is the operator's: it must be free. An offset
    port that is taken or out of range is replaced by a free one (`chosen`), which the plan names."""
    port_map = {int(k): int(v) for k, v in (port_map or {}).items()}
    mapping = []
    for name in services:
        for binding in port_bindings(model["services"][name]):
            host_ip = binding["host_ip"] if address is None else address
            alt = port_map.get(binding["published"])
            chosen = False
            if alt is None:
                if offset is None:
                    raise AlternateError(
                        "no alternate port for %s's published port %d: set a port offset or a port map"
                        % (name, binding["published"])
                    )
                alt = binding["published"] + offset
                taken = [m["alternate"] for m in mapping] + list(port_map.values())
                if not _usable(alt, binding["protocol"], host_ip, taken, is_free):
                    # The next free port after it; past the range, after the primary's own port.
                    start = alt if alt <= FREE_PORT_RANGE[1] else binding["published"]
                    alt, chosen = _free_port(start, binding["protocol"], host_ip, taken, is_free, name), True
            elif not 0 < alt < 65536:
                raise AlternateError("alternate port %d for %s is out of range" % (alt, name))
            mapping.append(dict(binding, service=name, alternate=alt, alternate_ip=host_ip, chosen=chosen))
    used = [m["alternate"] for m in mapping]
    duplicates = sorted({p for p in used if used.count(p) > 1})
    if duplicates:
        raise AlternateError("alternate port(s) %s given twice" % ", ".join(map(str, duplicates)))
    busy = [
        m
        for m in mapping
        if not m["chosen"] and m["protocol"] == "tcp" and not is_free(m["alternate"], m["alternate_ip"])
    ]
    if busy:
        raise AlternateError(
            "alternate port(s) already in use on the host: %s; free them or choose other ones"
            % ", ".join(
                "%s%d (for %s:%d)"
                % (m["alternate_ip"] + ":" if m["alternate_ip"] else "", m["alternate"], m["service"], m["target"])
                for m in busy
            )
        )
    return mapping


def _usable(port, protocol, host_ip, taken, is_free):
    low, high = FREE_PORT_RANGE
    return low <= port <= high and port not in taken and (protocol != "tcp" or is_free(port, host_ip))


def _free_port(wanted, protocol, host_ip, taken, is_free, service):
    """The first usable port after `wanted` (wrapping inside FREE_PORT_RANGE), bounded in attempts."""
    low, high = FREE_PORT_RANGE
    start = min(max(wanted, low), high)
    for step in range(1, FREE_PORT_ATTEMPTS + 1):
        port = low + (start - low + step) % (high - low + 1)
        if _usable(port, protocol, host_ip, taken, is_free):
            return port
    raise AlternateError(
        "no free alternate port for %s near %d (%d tried on %s); free some or set a port map"
        % (service, wanted, FREE_PORT_ATTEMPTS, host_ip or "every interface")
    )


def alternate_model(model, primary_project, alternate_project, services, mapping):
    """The green project's model: the duplicable services only, ports moved, networks shared."""
    green = {"name": alternate_project, "services": {}}
    networks = {}
    for name in services:
        svc = copy.deepcopy(model["services"][name])
        svc.pop("container_name", None)
        # Only the duplicable services are in this project: drop dependencies on the others
        # (they run in the primary project and stay up).
        depends = svc.get("depends_on") or {}
        svc["depends_on"] = {dep: cond for dep, cond in depends.items() if dep in services}
        if not svc["depends_on"]:
            svc.pop("depends_on")
        ports = []
        for port in svc.get("ports") or []:
            moved = next(
                (
                    m
                    for m in mapping
                    if m["service"] == name
                    and m["target"] == int(port["target"])
                    and m["published"] == int(str(port.get("published") or 0).split("-", maxsplit=1)[0] or 0)
                ),
                None,
            )
            if moved:
                port = dict(port, published=str(moved["alternate"]))
                if moved["alternate_ip"]:
                    port["host_ip"] = moved["alternate_ip"]
                else:
                    port.pop("host_ip", None)
            ports.append(port)
        if ports:
            svc["ports"] = ports
        for net in svc.get("networks") or {}:
            networks[net] = True
        green["services"][name] = svc
    # The networks are the primary project's own, joined as external ones, so that the green
    # copies resolve the single services (db) by their names.
    for net in networks:
        declared = (model.get("networks") or {}).get(net) or {}
        green.setdefault("networks", {})[net] = {
            "name": declared.get("name") or "%s_%s" % (primary_project, net),
            "external": True,
        }
    return green


def upstreams(mapping, service, target_port, host):
    """(primary upstream, alternate upstream) of a service's container port, as host:port."""
    for m in mapping:
        if m["service"] == service and m["target"] == int(target_port):
            return "%s:%d" % (host, m["published"]), "%s:%d" % (host, m["alternate"])
    raise AlternateError(
        "service %s publishes no port for container port %s, so the proxy cannot reach it; publish it or set "
        "the proxied service and port" % (service, target_port)
    )


class AlternateRenderer:
    """compose_alternate: resolve the project, choose the copy's ports, write its compose file."""

    def __init__(self, params, engine, check_mode=False):
        self.params = params
        self.engine = engine
        self.check_mode = check_mode

    def run(self):
        p = self.params
        name = p["alternate_name"] or "%s-green" % p["project_name"]
        model = Compose.from_params(self.engine, p).config()
        if p["base_dir"]:
            model = rebased(model, os.path.abspath(p["project_src"]), p["base_dir"])
        services, single = split_services(model, p["services"], p["shareable_paths"] or [])
        self.check_single_images(model, single)
        # A run that resumes a dead one finds its own copy on the alternate ports: they are its own.
        own = published_ports(self.engine.project_containers(name))
        mapping = alternate_ports(
            model,
            services,
            p["port_offset"],
            p["port_map"],
            is_free=lambda port, host_ip="": port in own or port_is_free(port, host_ip),
            address=p["alternate_address"] or None,
        )
        content = (
            json.dumps(alternate_model(model, p["project_name"], name, services, mapping), indent=2, sort_keys=True)
            + "\n"
        ).encode()
        changed = read_bytes(p["dest"]) != content
        if changed and not self.check_mode:
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
                    "service %s stays single in a blue-green switch (it mounts data), but the target "
                    "release runs it from another image (%s, now %s); a blue-green switch cannot change it. Roll "
                    "back with the stackops.rollback.recreate role instead" % (name, wanted, now)
                )
