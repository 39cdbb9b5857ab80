# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Releases of a compose project: capture what is deployed, resolve a rollback target, and
put a release's files back. Storage is _ledger.py; the engine is reached through _docker.py and
`docker compose` through _compose.py only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from ansible_collections.stackops.rollback.plugins.module_utils._compose import Compose
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import (
    DEFAULT_COMPOSE_FILES,
    DEFAULT_ENV_FILE,
    DEFAULT_OVERRIDE_FILES,
    RELEASE_ID_RE,
    LedgerError,
    atomic_write,
    fingerprint,
    safe_relpath,
    sha256_bytes,
    utcnow,
)

ENV_REDACTED = "(environment file: content hidden)\n"


def project_file_names(project_src, files=None, env_files=None):
    """(compose files, env files) of a project as paths relative to project_src.

    Without explicit files this is Compose's own lookup: the first default file and its
    override; without explicit env files, `.env` when it exists.
    """
    if files:
        compose_files = [safe_relpath(os.path.relpath(os.path.join(project_src, f), project_src)) for f in files]
    else:
        compose_files = [name for name in DEFAULT_COMPOSE_FILES if os.path.isfile(os.path.join(project_src, name))][:1]
        if not compose_files:
            raise LedgerError(
                "no compose file in %s (looked for %s); set files" % (project_src, ", ".join(DEFAULT_COMPOSE_FILES))
            )
        compose_files += [n for n in DEFAULT_OVERRIDE_FILES if os.path.isfile(os.path.join(project_src, n))][:1]
    if env_files:
        envs = [safe_relpath(os.path.relpath(os.path.join(project_src, f), project_src)) for f in env_files]
    else:
        envs = [DEFAULT_ENV_FILE] if os.path.isfile(os.path.join(project_src, DEFAULT_ENV_FILE)) else []
    return compose_files, envs


def project_name(module, params):
    """The compose project name: as given, else what Compose derives for project_src."""
    if params.get("project_name"):
        return params["project_name"]
    compose_files, _envs = project_file_names(params["project_src"], params.get("files"), params.get("env_files"))
    return Compose(
        module, project_src=params["project_src"], files=compose_files, docker_host=params.get("docker_host")
    ).config()["name"]


def read_project_files(project_src, compose_files, env_files):
    """File entries (path, kind, sha256, mode) and their contents."""
    entries, contents = [], {}
    for kind, names in (("compose", compose_files), ("env", env_files)):
        for name in names:
            path = os.path.join(project_src, name)
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
                mode = os.stat(path).st_mode & 0o7777
            except OSError as exc:
                raise LedgerError("cannot read %s file %s: %s" % (kind, path, exc.strerror)) from exc
            entries.append({"path": name, "kind": kind, "sha256": sha256_bytes(data), "mode": "%04o" % mode})
            contents[name] = data
    return entries, contents


def git_info(module, project_src, paths):
    """{commit, dirty} when project_src is in a git work tree, else None."""
    git = module.get_bin_path("git")
    if not git:
        return None
    rc, out, _err = module.run_command([git, "-C", project_src, "rev-parse", "HEAD"])
    if rc != 0:
        return None
    rc, status, _err = module.run_command([git, "-C", project_src, "status", "--porcelain", "--", *paths])
    return {"commit": out.strip(), "dirty": bool(status.strip()) if rc == 0 else None}


def image_details(client, image_id, configured):
    """(repo_digest, repo_tags) of an image; the digest chosen from the configured image's repo."""
    try:
        attrs = client.images.get(image_id).attrs
    except Exception:  # noqa: BLE001 - an image removed since its container started has no digest
        return None, []
    digests = attrs.get("RepoDigests") or []
    repo = configured.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: -(len(last) - last.index(":"))]
    chosen = next((d for d in digests if d.split("@", 1)[0] == repo), digests[0] if digests else None)
    return chosen, attrs.get("RepoTags") or []


def deployed_services(client, project, service_names):
    """What each service of a project runs now, from its containers' labels and images."""
    found = {}
    containers = client.containers.list(all=True, filters={"label": "com.docker.compose.project=%s" % project})
    for container in containers:
        labels = container.labels or {}
        if labels.get("com.docker.compose.oneoff") == "True":
            continue
        name = labels.get("com.docker.compose.service")
        if not name or name in found:
            continue
        attrs = container.attrs
        configured = attrs.get("Config", {}).get("Image", "")
        digest, _tags = image_details(client, attrs.get("Image"), configured)
        found[name] = {
            "image": configured,
            "image_id": attrs.get("Image"),
            "repo_digest": digest,
            "container": container.name,
            "state": attrs.get("State", {}).get("Status"),
        }
    missing = sorted(set(service_names) - set(found))
    if missing:
        raise LedgerError(
            "service(s) %s of project %s have no container: a release can only be recorded from a deployed "
            "project; deploy it first (docker compose up -d)" % (", ".join(missing), project)
        )
    return {name: found[name] for name in service_names}


def capture(module, client, params):
    """The release now deployed for a project: (release, file contents). Writes nothing."""
    project_src = params["project_src"]
    if not project_src or not os.path.isdir(project_src):
        raise LedgerError("project_src %r is not a directory" % project_src)
    compose_files, env_files = project_file_names(project_src, params.get("files"), params.get("env_files"))
    compose = Compose(
        module,
        project_src=project_src,
        project_name=params.get("project_name"),
        files=compose_files,
        env_files=env_files if params.get("env_files") else None,
        docker_host=params.get("docker_host"),
    )
    model = compose.config()
    project = params.get("project_name") or model.get("name")
    entries, contents = read_project_files(project_src, compose_files, env_files)
    services = deployed_services(client, project, sorted(model.get("services", {})))
    release = {
        "id": fingerprint(entries, services)[:12],
        "project": project,
        "project_src": project_src,
        "files": entries,
        "services": services,
        "git": git_info(module, project_src, compose_files + env_files),
        "version": params.get("version"),
        "created": utcnow(),
    }
    return release, contents


def summary(release):
    """A release as info modules and reports show it: no file contents."""
    if release is None:
        return None
    return {
        "id": release.get("id"),
        "version": release.get("version"),
        "created": release.get("created"),
        "source": release.get("source", "ledger"),
        "git": release.get("git"),
        "files": [f["path"] for f in release.get("files", [])],
        "images": {
            name: svc.get("repo_digest") or svc.get("image") for name, svc in release.get("services", {}).items()
        },
        "services": {
            name: {
                "image": svc.get("image"),
                "image_id": svc.get("image_id"),
                "repo_digest": svc.get("repo_digest"),
            }
            for name, svc in release.get("services", {}).items()
        },
    }


def resolve_target(module, ledger, target, project_src=None, deployed_now=None):
    """A release for `previous`, `current`, a release id, or a git ref (the field guide's way).

    A git ref whose commit was recorded in the ledger resolves to that release (with its image
    digests); otherwise to a release read from git, whose images follow their tags.
    """
    target = (target or "previous").strip()
    if target == "previous":
        release_id = ledger.previous_id(deployed_now)
        if release_id is None:
            raise LedgerError(
                "project %s has no previous release in the ledger %s: record each deploy with "
                "stackops.rollback.compose_release, or name a release id or a git ref as the target"
                % (ledger.project, ledger.dir)
            )
        return ledger.get(release_id)
    if target == "current":
        release_id = ledger.current_id()
        if release_id is None:
            raise LedgerError("project %s has no release in the ledger %s yet" % (ledger.project, ledger.dir))
        return ledger.get(release_id)
    if RELEASE_ID_RE.match(target) and ledger.has_release(target):
        return ledger.get(target)
    return resolve_git_target(module, ledger, target, project_src)


def resolve_git_target(module, ledger, ref, project_src):
    git = module.get_bin_path("git")
    if not project_src or not git:
        raise LedgerError(
            "target %r is not a release of project %s; it could be a git ref, but %s"
            % (
                ref,
                ledger.project,
                "git is not installed" if project_src else "project_src is not set",
            )
        )
    rc, out, err = module.run_command([git, "-C", project_src, "rev-parse", "--verify", "--quiet", ref + "^{commit}"])
    if rc != 0:
        raise LedgerError(
            "target %r is neither a release id of project %s (see compose_release_info) nor a git ref in %s%s"
            % (ref, ledger.project, project_src, (": " + err.strip()) if err.strip() else "")
        )
    commit = out.strip()
    recorded = ledger.find_by_commit(commit)
    if recorded:
        return recorded
    names = []
    current = ledger.current_id()
    if current:
        names = [f["path"] for f in ledger.get(current)["files"]]
    else:
        compose_files, env_files = project_file_names(project_src)
        names = compose_files + env_files
    entries = []
    for name in names:
        rc, out, _err = module.run_command([git, "-C", project_src, "cat-file", "-e", "%s:%s" % (commit, name)])
        if rc == 0:
            kind = "env" if os.path.basename(name).startswith(".env") or name.endswith(".env") else "compose"
            entries.append({"path": name, "kind": kind, "sha256": None, "mode": None})
    if not any(e["kind"] == "compose" for e in entries):
        raise LedgerError(
            "commit %s of %s holds none of the project's compose files (%s)" % (commit, project_src, names)
        )
    return {
        "id": None,
        "source": "git",
        "project": ledger.project,
        "git": {"commit": commit, "ref": ref, "dirty": False},
        "files": entries,
        "services": {},
        "version": ref,
    }


def target_contents(module, ledger, release, project_src):
    """The bytes of every file of a target release, from the ledger or from git."""
    contents = {}
    if release.get("source") == "git":
        git = module.get_bin_path("git", required=True)
        for entry in release["files"]:
            rc, out, err = module.run_command(
                [git, "-C", project_src, "show", "%s:%s" % (release["git"]["commit"], entry["path"])],
                binary_data=True,
                encoding=None,
            )
            if rc != 0:
                raise LedgerError("git show of %s at %s failed: %s" % (entry["path"], release["git"]["commit"], err))
            contents[entry["path"]] = out
        return contents
    for entry in release["files"]:
        data = ledger.file_content(release["id"], entry["path"])
        if sha256_bytes(data) != entry["sha256"]:
            raise LedgerError(
                "the ledger's copy of %s in release %s does not match its checksum; the ledger at %s is damaged"
                % (entry["path"], release["id"], ledger.dir)
            )
        contents[entry["path"]] = data
    return contents


def plan_checkout(project_src, release, contents, explicit_files=False):
    """What putting a release's files into project_src changes: (writes, removals, diffs)."""
    writes, removals, before, after = [], [], [], []
    wanted = {e["path"] for e in release["files"]}
    for entry in release["files"]:
        path = os.path.join(project_src, entry["path"])
        old = None
        if os.path.exists(path):
            with open(path, "rb") as fh:
                old = fh.read()
        new = contents[entry["path"]]
        if old != new:
            writes.append(entry)
            if entry["kind"] == "env":
                before.append("# %s\n%s" % (entry["path"], ENV_REDACTED if old is not None else ""))
                after.append("# %s\n%s" % (entry["path"], ENV_REDACTED))
            else:
                before.append("# %s\n%s" % (entry["path"], (old or b"").decode("utf-8", "replace")))
                after.append("# %s\n%s" % (entry["path"], new.decode("utf-8", "replace")))
    if not explicit_files:
        # Compose loads an override file by itself: one the target did not have must go.
        for name in DEFAULT_OVERRIDE_FILES:
            if name not in wanted and os.path.exists(os.path.join(project_src, name)):
                removals.append(name)
                before.append("# %s\n(present)\n" % name)
                after.append("# %s\n(removed)\n" % name)
    return writes, removals, {"before": "".join(before), "after": "".join(after)}


def apply_checkout(project_src, release, contents, writes, removals, keep_dir):
    """Write the planned files (each atomically); removed files are moved to keep_dir."""
    for entry in writes:
        path = os.path.join(project_src, entry["path"])
        if os.path.exists(path):
            mode = os.stat(path).st_mode & 0o7777
        elif entry.get("mode"):
            mode = int(entry["mode"], 8)
        else:
            mode = 0o600 if entry["kind"] == "env" else 0o644
        if entry["kind"] == "env":
            mode &= 0o770  # env files hold secrets: never readable by others
        os.makedirs(os.path.dirname(path) or project_src, exist_ok=True)
        atomic_write(path, contents[entry["path"]], mode)
    for name in removals:
        os.makedirs(keep_dir, mode=0o700, exist_ok=True)
        shutil.move(os.path.join(project_src, name), os.path.join(keep_dir, name))


def images_of_git_release(module, release, contents, params):
    """Image references of a release read from git, by rendering it with `docker compose config`."""
    tmp = tempfile.mkdtemp(prefix="stackops-git-target-")
    try:
        for name, data in contents.items():
            dest = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            atomic_write(dest, data, 0o600)
        compose_files = [e["path"] for e in release["files"] if e["kind"] == "compose"]
        model = Compose(
            module,
            project_src=tmp,
            project_name=release["project"],
            files=compose_files,
            docker_host=params.get("docker_host"),
        ).config()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: svc.get("image") for name, svc in model.get("services", {}).items() if svc.get("image")}


def load_target(module, ledger, target, params, deployed_now=None):
    """Resolve a target and read its files: (release, contents).

    A release read from git gets its services' images from its own compose files (by tag).
    """
    project_src = params.get("project_src")
    release = resolve_target(module, ledger, target, project_src, deployed_now)
    contents = target_contents(module, ledger, release, project_src)
    if release.get("source") == "git":
        images = images_of_git_release(module, release, contents, params)
        release["services"] = {
            name: {"image": image, "image_id": None, "repo_digest": None} for name, image in images.items()
        }
    return release, contents


def ensure_images(client, release, check_mode=False):
    """Make sure every image of a release is on the host; returns (pulled, present).

    Recorded images are pulled by digest when missing; a release read from git follows its
    tags and is pulled always (the field guide's `docker compose pull`); an image built on the
    host (no registry digest) cannot be pulled and must still be there.
    """
    pulled, present, missing = [], [], []
    for name, svc in sorted(release.get("services", {}).items()):
        ref = svc.get("repo_digest") or (None if svc.get("image_id") else svc.get("image"))
        # What the pin will ask the engine for: the digest reference, else the image id.
        local = svc.get("repo_digest") or svc.get("image_id")
        if local and image_exists(client, local):
            present.append(name)
            continue
        if not ref:
            missing.append("%s (%s)" % (name, svc.get("image_id")))
            continue
        if not check_mode:
            repo, _sep, digest_or_tag = ref.partition("@")
            if not digest_or_tag:
                repo, digest_or_tag = split_tag(ref)
            try:
                client.images.pull(repo, tag=digest_or_tag)
            except Exception as exc:
                raise LedgerError(
                    "cannot pull image %s of service %s: %s. Nothing was stopped; make the image reachable "
                    "(registry up, credentials) and run again" % (ref, name, exc)
                ) from exc
        pulled.append(name)
    if missing:
        raise LedgerError(
            "images of release %s were built on the host, have no registry digest and are no longer there: %s. "
            "Rebuild or load them, then run again; nothing was stopped" % (release.get("id"), ", ".join(missing))
        )
    return pulled, present


def equivalent_running_refs(client, project, release):
    """Services whose running container's image reference resolves to the release's image."""
    refs = {}
    try:
        containers = client.containers.list(all=True, filters={"label": "com.docker.compose.project=%s" % project})
    except Exception:  # noqa: BLE001 - without the engine, pin by digest only
        return refs
    for container in containers:
        name = (container.labels or {}).get("com.docker.compose.service")
        svc = release.get("services", {}).get(name)
        if not svc or not svc.get("image_id") or name in refs:
            continue
        ref = container.attrs.get("Config", {}).get("Image")
        # The reference must still resolve to the same image: a tag moved since is no pin.
        if ref and container.attrs.get("Image") == svc["image_id"] and resolved_id(client, ref) == svc["image_id"]:
            refs[name] = ref
    return refs


def resolved_id(client, ref):
    """The id of the local image a reference names, or None."""
    try:
        return client.images.get(ref).id
    except Exception:  # noqa: BLE001 - not found, or a reference the engine cannot resolve
        return None


def image_exists(client, ref):
    return resolved_id(client, ref) is not None


def split_tag(ref):
    """'reg:5000/app:v1' -> ('reg:5000/app', 'v1'); no tag -> latest."""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        return ref[: len(ref) - len(last) + last.index(":")], last[last.index(":") + 1 :]
    return ref, "latest"


def dumps(data):
    return json.dumps(data, sort_keys=True)
