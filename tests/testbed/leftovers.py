"""Remove what earlier test bed runs left behind on this engine, and say what was removed.

A run that was killed half-way (CI stopped, Ctrl-C, a crashed worker) leaves its compose
projects, containers, volumes, networks, Molecule hosts and ledger entries. They would hold
ports, fill the engine's event log with their health checks and make the next run fail, so
`make testbed` removes them first. Only the test bed's own names are touched: every name the
tests and benchmarks make starts with one of testbed.PREFIXES (engine_name enforces it), the
Molecule hosts with MOLECULE_HOST_PREFIX; nothing else on the engine is touched.

It cannot tell a killed run from a live one: `make testbed` runs it under scripts/testbed-lock,
so no other run is going on then.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import testbed

COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
MOLECULE_HOST_PREFIX = "stackops-molecule-"
LEDGER_PROJECTS = Path("/var/lib/stackops-rollback/projects")
# Repositories the tests push to the local registry under a unique name (mutable-tag tests).
PUSHED_REPOSITORIES = ("stackops/app-mutable-", "stackops/app-pull-")


OURS = (*testbed.PREFIXES, MOLECULE_HOST_PREFIX)


def ours(name, prefixes=OURS):
    return name.startswith(prefixes)


def docker_lines(*args):
    out = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit("leftovers: docker %s failed: %s" % (" ".join(args), out.stderr.strip()))
    return [line for line in out.stdout.splitlines() if line.strip()]


def remove(kind, names, *command):
    """Remove names with `docker <command> NAME...`; return the ones removed."""
    if not names:
        return []
    out = subprocess.run(["docker", *command, *names], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print("leftovers: could not remove every %s: %s" % (kind, out.stderr.strip()), file=sys.stderr)
    return [name for name in names if name in out.stdout.split()]


def leftover_containers(prefixes):
    """Names of our containers in any state: by compose project label, or by their own name."""
    found = set()
    for line in docker_lines("ps", "--all", "--format", '{{.Names}}\t{{.Label "%s"}}' % COMPOSE_PROJECT_LABEL):
        name, _tab, project = line.partition("\t")
        if ours(name, prefixes) or (project and ours(project, prefixes)):
            found.add(name)
    return sorted(found)


def leftover_images(repositories):
    """Our images, by name:tag, or by ID once the tag went to a newer image (name:<none> is no reference)."""
    found = set()
    for line in docker_lines("images", "--format", "{{.Repository}}:{{.Tag}}\t{{.ID}}"):
        ref, _tab, image_id = line.partition("\t")
        if any(repo in ref for repo in repositories):
            found.add(image_id if ref.endswith(":<none>") else ref)
    return sorted(found)


def remove_leftovers(prefixes=OURS, ledger_projects=LEDGER_PROJECTS, repositories=PUSHED_REPOSITORIES):
    """Remove everything named with one of prefixes; {kind: [names removed]}."""
    removed = {
        # Containers first: they hold the volumes and networks.
        "containers": remove("container", leftover_containers(prefixes), "rm", "--force", "--volumes"),
        "volumes": remove(
            "volume", [v for v in docker_lines("volume", "ls", "-q") if ours(v, prefixes)], "volume", "rm", "-f"
        ),
        "networks": remove(
            "network",
            [n for n in docker_lines("network", "ls", "--format", "{{.Name}}") if ours(n, prefixes)],
            "network",
            "rm",
        ),
        "images": remove("image", leftover_images(repositories), "image", "rm", "--force"),
    }
    entries = sorted(p for p in ledger_projects.iterdir() if ours(p.name, prefixes)) if ledger_projects.is_dir() else []
    for path in entries:
        shutil.rmtree(path, ignore_errors=True)
    removed["ledger entries"] = [path.name for path in entries]
    return removed


def main():
    removed = remove_leftovers()
    said = [
        "%d %s (%s)" % (len(names), kind, ", ".join(names[:8]) + (", ..." if len(names) > 8 else ""))
        for kind, names in removed.items()
        if names
    ]
    print("[testbed] left behind by earlier runs, removed: %s" % ("; ".join(said) if said else "nothing"))


if __name__ == "__main__":
    main()
