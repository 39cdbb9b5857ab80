# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Releases of a compose project: capture what is deployed, resolve a rollback target, put a
release's files back pinned by digest, and make its images present. `Releases` is what
stackops.rollback.compose_release does for each state. Storage is _ledger.py's (only it knows
the ledger's layout); the engine and `docker compose` are reached through _docker.py and
_compose.py; git runs here (it is not the engine).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
import time
import urllib.error
import urllib.parse

from ansible.module_utils.urls import open_url
from ansible_collections.stackops.rollback.plugins.module_utils._backup import VolumeBackups
from ansible_collections.stackops.rollback.plugins.module_utils._compose import Compose
from ansible_collections.stackops.rollback.plugins.module_utils._database import Databases, key_of
from ansible_collections.stackops.rollback.plugins.module_utils._docker import SERVICE_LABEL, EngineError, within
from ansible_collections.stackops.rollback.plugins.module_utils._dump import DUMP_ENGINES, DatabaseDumps
from ansible_collections.stackops.rollback.plugins.module_utils._files import atomic_write, read_bytes
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import (
    DEFAULT_COMPOSE_FILES,
    DEFAULT_ENV_FILE,
    DEFAULT_OVERRIDE_FILES,
    PROJECT_RE,
    RELEASE_ID_RE,
    Ledger,
    LedgerError,
    fingerprint,
    pin_document,
    safe_relpath,
    sha256_bytes,
    utcnow,
)
from ansible_collections.stackops.rollback.plugins.module_utils._pin import env_assignments, plan_pins

ENV_REDACTED = "(environment file: content hidden)\n"
# The pin override of a staging copy (state=restored with staging), inside the copy.
STAGED_PIN_FILE = ".stackops-pin.yml"
# File kinds of a release: compose files, the env files Compose interpolates from (passed to each
# compose call), and the services' own `env_file:` files. Both env kinds hold secrets.
ENV_KINDS = ("env", "service_env")
# Env files hold secrets: whatever mode they had, a rollback writes them for their owner alone.
ENV_MODE = 0o600


class ReleaseError(Exception):
    """A release cannot be captured, resolved, put back or pulled; says what to do, and that nothing stopped."""


def project_file_names(project_src, files=None, env_files=None, environ=None):
    """(compose files, env files) of a project as paths relative to project_src.

    Without explicit files this is Compose's own lookup: the files COMPOSE_FILE names (in the
    environment or the env files), else the first default file and its override; without
    explicit env files, `.env` when it exists.
    """
    if env_files:
        envs = [safe_relpath(os.path.relpath(os.path.join(project_src, f), project_src)) for f in env_files]
    else:
        envs = [DEFAULT_ENV_FILE] if os.path.isfile(os.path.join(project_src, DEFAULT_ENV_FILE)) else []
    if files:
        compose_files = [safe_relpath(os.path.relpath(os.path.join(project_src, f), project_src)) for f in files]
        return compose_files, envs
    settings = compose_settings(project_src, envs, environ)
    if settings.get("COMPOSE_FILE"):
        separator = settings.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
        named = [name for name in settings["COMPOSE_FILE"].split(separator) if name.strip()]
        return [inside_project(project_src, name.strip(), "COMPOSE_FILE") for name in named], envs
    compose_files = [name for name in DEFAULT_COMPOSE_FILES if os.path.isfile(os.path.join(project_src, name))][:1]
    if not compose_files:
        raise ReleaseError(
            "no compose file in %s (looked for %s); set files" % (project_src, ", ".join(DEFAULT_COMPOSE_FILES))
        )
    compose_files += [n for n in DEFAULT_OVERRIDE_FILES if os.path.isfile(os.path.join(project_src, n))][:1]
    return compose_files, envs


def relative_inside(project_src, name):
    """A file's path relative to project_src, or None when it lies outside it."""
    full, base = os.path.abspath(os.path.join(project_src, name)), os.path.abspath(project_src)
    return os.path.relpath(full, base) if within(full, base) else None


def inside_project(project_src, name, named_by):
    """A file's path relative to project_src; a file outside it cannot be recorded: refused."""
    relative = relative_inside(project_src, name)
    if relative is None:
        raise ReleaseError(
            "%s names %s, outside the project directory %s: the ledger records only the project's own "
            "files, so a rollback could not put it back; move it into the project directory. Nothing was "
            "recorded or changed" % (named_by, name, project_src)
        )
    return relative


def compose_settings(project_src, env_names, environ=None):
    """Compose's own settings (COMPOSE_FILE, COMPOSE_PROFILES, COMPOSE_PROJECT_NAME, ...) as a plain
    `docker compose` in project_src reads them: the env files in order (a later one wins), then
    the environment over them. Files that cannot be read are passed over."""
    environ = os.environ if environ is None else environ
    settings = {}
    for name in env_names:
        try:
            with open(os.path.join(project_src, name), encoding="utf-8", errors="replace") as fh:
                assigned = env_assignments(fh.read())
        except OSError:
            continue
        settings.update({k: v for k, v in assigned.items() if k.startswith("COMPOSE_")})
    settings.update({k: v for k, v in environ.items() if k.startswith("COMPOSE_") and v})
    return settings


def derived_project_name(project_src):
    """The name Compose derives from a project directory: its base name, lowercased, with only
    letters, digits, '-' and '_' kept."""
    base = os.path.basename(os.path.normpath(project_src)).lower()
    return re.sub(r"[^a-z0-9_-]", "", base).lstrip("_-")


# A literal top-level `name:` (an interpolated one is left to Compose).
_COMPOSE_NAME = re.compile(r"""^name:[ \t]*(["']?)([a-z0-9][a-z0-9_-]*)\1[ \t]*(?:#.*)?$""", re.M)


# state=audited: the audit line's event for each O(event); any other is refused_rollback.
AUDITED_EVENTS = {"failed_rollback": "failed_rollback", "rollback": "unrecorded_rollback"}


def offline_project_name(project_src, files=None, env_files=None, environ=None):
    """The project's name as Compose decides it, from the files alone (no engine, no compose
    binary): COMPOSE_PROJECT_NAME from the environment, else from the env files (the last one
    that sets it), else the last compose file's literal top-level `name:`, else the name Compose
    derives from the directory. Files that cannot be read are passed over: this names the
    project of a run that failed, maybe because of them."""
    environ = os.environ if environ is None else environ
    if environ.get("COMPOSE_PROJECT_NAME"):
        return environ["COMPOSE_PROJECT_NAME"]
    try:
        compose_files, envs = project_file_names(project_src, files, env_files, environ)
    except (ReleaseError, LedgerError):
        compose_files, envs = [], []
    from_env = compose_settings(project_src, envs, {}).get("COMPOSE_PROJECT_NAME", "")
    if PROJECT_RE.match(from_env):
        return from_env
    found = None
    for name in compose_files:
        try:
            with open(os.path.join(project_src, name), encoding="utf-8", errors="replace") as fh:
                matches = _COMPOSE_NAME.findall(fh.read())
        except OSError:
            continue
        found = matches[-1][1] if matches else found
    return found or derived_project_name(project_src)


def project_name(engine, params):
    """The compose project name: as given, else what Compose derives for project_src."""
    if params.get("project_name"):
        return params["project_name"]
    compose_files, _envs = project_file_names(params["project_src"], params.get("files"), params.get("env_files"))
    return Compose(engine, project_src=params["project_src"], files=compose_files).config()["name"]


def read_project_files(project_src, compose_files, env_files, service_env_files=()):
    """File entries (path, kind, sha256, mode) and their contents."""
    entries, contents = [], {}
    for kind, names in (("compose", compose_files), ("env", env_files), ("service_env", service_env_files)):
        for name in names:
            path = os.path.join(project_src, name)
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
                mode = os.stat(path).st_mode & 0o7777
            except OSError as exc:
                raise ReleaseError("cannot read %s file %s: %s" % (kind, path, exc.strerror)) from exc
            entries.append({"path": name, "kind": kind, "sha256": sha256_bytes(data), "mode": "%04o" % mode})
            contents[name] = data
    return entries, contents


def build_contexts(model, project_src):
    """The services built from a context: what a release cannot record (the image is recorded, the
    sources it was built from are not), as unrecorded entries [{service, path, why, kind}]."""
    found = []
    for service_name, service in sorted((model.get("services") or {}).items()):
        build = service.get("build")
        context = build.get("context") if isinstance(build, dict) else build
        if context:
            full = os.path.normpath(os.path.join(project_src, context))
            found.append(
                {
                    "service": service_name,
                    "path": relative_inside(project_src, full) or full,
                    "why": "a build context: the image comes back by its digest, or by its id while on the host",
                    "kind": "build",
                }
            )
    return found


def service_env_files(source_model, project_src, recorded=()):
    """The services' `env_file:` files under project_src (paths relative to it), and those that
    cannot be recorded: [{service, path, why}]. An optional file that does not exist is not one.

    `source_model` is `docker compose config --no-interpolate --no-normalize`, which keeps each
    service's env_file entries (a resolved model has merged them into its environment)."""
    names, unrecorded = [], []
    for service_name, service in sorted((source_model.get("services") or {}).items()):
        for item in service.get("env_file") or []:
            path = item.get("path") if isinstance(item, dict) else item
            required = item.get("required", True) if isinstance(item, dict) else True
            full = os.path.normpath(os.path.join(project_src, path))
            relative = relative_inside(project_src, full)
            if relative is None:
                unrecorded.append({"service": service_name, "path": full, "why": "outside the project directory"})
            elif os.path.isfile(full) and relative not in names and relative not in recorded:
                names.append(relative)
            elif required and not os.path.isfile(full):
                raise ReleaseError(
                    "service %s's env_file %s does not exist: a plain docker compose up would fail too; "
                    "nothing was recorded" % (service_name, full)
                )
    return names, unrecorded


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


def image_details(engine, image_id, configured):
    """(repo_digest, repo_tags) of an image; the digest chosen from the configured image's repo."""
    try:
        attrs = engine.image(image_id)
    except EngineError:
        attrs = None
    if attrs is None:  # an image removed since its container started has no digest
        return None, []
    digests = attrs.get("RepoDigests") or []
    repo = configured.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: -(len(last) - last.index(":"))]
    chosen = next((d for d in digests if d.split("@", 1)[0] == repo), digests[0] if digests else None)
    return chosen, attrs.get("RepoTags") or []


def deployed_services(engine, project, service_names):
    """What each service of a project runs now, from its containers' labels and images."""
    found = {}
    for container in engine.project_containers(project):
        name = (container.labels or {}).get(SERVICE_LABEL)
        if not name or name in found:
            continue
        attrs = container.attrs
        configured = attrs.get("Config", {}).get("Image", "")
        digest, _tags = image_details(engine, attrs.get("Image"), configured)
        found[name] = {
            "image": configured,
            "image_id": attrs.get("Image"),
            "repo_digest": digest,
            "container": container.name,
            "state": attrs.get("State", {}).get("Status"),
        }
    missing = sorted(set(service_names) - set(found))
    if missing:
        raise ReleaseError(
            "service(s) %s of project %s have no container: a release can only be recorded from a deployed "
            "project; deploy it first (docker compose up -d)" % (", ".join(missing), project)
        )
    return {name: found[name] for name in service_names}


def capture(engine, params):
    """The release now deployed for a project: (release, file contents). Writes nothing."""
    project_src = params["project_src"]
    if not project_src or not os.path.isdir(project_src):
        raise ReleaseError("project_src %r is not a directory" % project_src)
    compose_files, env_files = project_file_names(project_src, params.get("files"), params.get("env_files"))
    compose = Compose(
        engine,
        project_src=project_src,
        project_name=params.get("project_name"),
        files=compose_files,
        env_files=env_files if params.get("env_files") else None,
    )
    model = compose.config()
    project = params.get("project_name") or model.get("name")
    service_envs, unrecorded = service_env_files(compose.source_config(), project_src, compose_files + env_files)
    unrecorded += build_contexts(model, project_src)
    entries, contents = read_project_files(project_src, compose_files, env_files, service_envs)
    # A file a rollback pinned is its release's own file: the project still runs that release.
    unpinned = Ledger(params.get("ledger_dir"), project).unpinned_contents(project_src, contents)
    for entry in entries:
        if entry["path"] in unpinned:
            entry["sha256"], contents[entry["path"]] = unpinned[entry["path"]][:2]
    services = deployed_services(engine, project, sorted(model.get("services", {})))
    release = {
        "id": fingerprint(entries, services)[:12],
        "project": project,
        "project_src": project_src,
        "files": entries,
        "services": services,
        # Dirty when any recorded file differs from its commit, a service env file included.
        "git": git_info(engine.module, project_src, [entry["path"] for entry in entries]),
        "version": params.get("version"),
        "created": utcnow(),
        # Compose's own settings from the recorded env files (COMPOSE_FILE, COMPOSE_PROFILES, ...).
        "settings": compose_settings(project_src, env_files, {}),
    }
    if unrecorded:
        release["unrecorded"] = unrecorded
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
        "settings": release.get("settings") or {},
        "unrecorded": release.get("unrecorded") or [],
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


def by_hand_command(params, project, compose_files=None, env_files=()):
    """The command that runs a restored project by hand in its directory: a plain `docker compose
    up -d` when the project's files say it all, else with the files, env files and name it needs."""
    project_src = params["project_src"]
    argv = ["docker", "compose"]
    if project != offline_project_name(project_src, params.get("files"), params.get("env_files")):
        argv += ["--project-name", project]
    if compose_files or params.get("files"):
        files = compose_files or [os.path.join(project_src, name) for name in params["files"]]
        for name in files:
            argv += ["--file", name]
    for name in env_files if params.get("env_files") else ():
        argv += ["--env-file", name]
    return "cd %s && %s up -d" % (shlex.quote(project_src), " ".join(shlex.quote(arg) for arg in argv))


def resolve_target(module, ledger, target, project_src=None, deployed_now=None):
    """A release for `previous`, `current`, a release id, a version label as recorded at deploy
    (`v1.4.2`), or a git ref (the field guide's way).

    A git ref whose commit was recorded in the ledger resolves to that release (with its image
    digests); otherwise to a release read from git, whose images follow their tags. A label
    recorded on one release only names it; a label on several is refused, since which one the
    operator means cannot be told (their ids are named).
    """
    target = (target or "previous").strip()
    if target == "previous":
        release_id = ledger.previous_id(deployed_now)
        if release_id is None:
            raise ReleaseError(
                "project %s has no previous release in the ledger %s: record each deploy with "
                "stackops.rollback.compose_release, or name a release id or a git ref as the target"
                % (ledger.project, ledger.dir)
            )
        return ledger.get(release_id)
    if target == "current":
        release_id = ledger.current_id()
        if release_id is None:
            raise ReleaseError("project %s has no release in the ledger %s yet" % (ledger.project, ledger.dir))
        return ledger.get(release_id)
    if RELEASE_ID_RE.match(target) and ledger.has_release(target):
        return ledger.get(target)
    labelled = [release for release in ledger.releases() if release.get("version") == target]
    if len(labelled) > 1:
        raise ReleaseError(
            "target %r is the version label of %d releases of project %s: %s; name the release id instead"
            % (
                target,
                len(labelled),
                ledger.project,
                ", ".join("%s (recorded %s)" % (r["id"], r.get("created") or "-") for r in labelled),
            )
        )
    if labelled:
        return ledger.get(labelled[0]["id"])
    return resolve_git_target(module, ledger, target, project_src)


def resolve_git_target(module, ledger, ref, project_src):
    git = module.get_bin_path("git")
    if not project_src or not git:
        raise ReleaseError(
            "target %r is not a release of project %s; it could be a git ref, but %s"
            % (
                ref,
                ledger.project,
                "git is not installed" if project_src else "project_src is not set",
            )
        )
    rc, out, err = module.run_command([git, "-C", project_src, "rev-parse", "--verify", "--quiet", ref + "^{commit}"])
    if rc != 0:
        raise ReleaseError(
            "target %r is neither a release id nor a version label of project %s (see compose_release_info) "
            "nor a git ref in %s%s" % (ref, ledger.project, project_src, (": " + err.strip()) if err.strip() else "")
        )
    commit = out.strip()
    recorded = ledger.find_by_commit(commit)
    if recorded:
        return recorded
    # The files of the current release (or the project's own now), as they were at that commit.
    current = ledger.current_id()
    if current:
        kinds = [(f["path"], f["kind"]) for f in ledger.get(current)["files"]]
    else:
        compose_files, env_files = project_file_names(project_src)
        kinds = [(name, "compose") for name in compose_files] + [(name, "env") for name in env_files]
    entries = []
    for name, kind in kinds:
        rc, out, _err = module.run_command([git, "-C", project_src, "cat-file", "-e", "%s:%s" % (commit, name)])
        if rc == 0:
            entries.append({"path": name, "kind": kind, "sha256": None, "mode": None})
    if not any(e["kind"] == "compose" for e in entries):
        raise ReleaseError(
            "commit %s of %s holds none of the project's compose files (%s)"
            % (commit, project_src, [name for name, _kind in kinds])
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
                raise ReleaseError("git show of %s at %s failed: %s" % (entry["path"], release["git"]["commit"], err))
            contents[entry["path"]] = out
        return contents
    for entry in release["files"]:
        contents[entry["path"]] = ledger.file_content(release["id"], entry["path"], entry["sha256"])
    return contents


def plan_checkout(project_src, release, contents, explicit_files=False):
    """What putting a release's files into project_src changes: (writes, removals, diffs)."""
    writes, removals, before, after = [], [], [], []
    wanted = {e["path"] for e in release["files"]}
    for entry in release["files"]:
        path = os.path.join(project_src, entry["path"])
        old = read_bytes(path)
        new = contents[entry["path"]]
        if old != new:
            writes.append(entry)
            if entry["kind"] in ENV_KINDS:
                before.append("# %s\n%s" % (entry["path"], ENV_REDACTED if old is not None else ""))
                after.append("# %s\n%s" % (entry["path"], ENV_REDACTED))
            else:
                before.append("# %s\n%s" % (entry["path"], (old or b"").decode("utf-8", "replace")))
                after.append("# %s\n%s" % (entry["path"], new.decode("utf-8", "replace")))
    if not explicit_files and not (release.get("settings") or {}).get("COMPOSE_FILE"):
        # Compose loads an override file by itself (unless COMPOSE_FILE names the files): one the
        # target did not have must go.
        for name in DEFAULT_OVERRIDE_FILES:
            if name not in wanted and os.path.exists(os.path.join(project_src, name)):
                removals.append(name)
                before.append("# %s\n(present)\n" % name)
                after.append("# %s\n(removed)\n" % name)
    return writes, removals, {"before": "".join(before), "after": "".join(after)}


def apply_checkout(project_src, release, contents, writes, removals, keep_dir, private=False):
    """Write the planned files (each atomically); removed files are moved to keep_dir. `private`
    (a staged copy inside the ledger): every file for its owner alone, as the ledger's own are."""
    for entry in writes:
        path = os.path.join(project_src, entry["path"])
        if entry["kind"] in ENV_KINDS or private:
            mode = ENV_MODE
        elif os.path.exists(path):
            mode = os.stat(path).st_mode & 0o7777
        else:
            mode = int(entry["mode"], 8) if entry.get("mode") else 0o644
        os.makedirs(os.path.dirname(path) or project_src, exist_ok=True)
        atomic_write(path, contents[entry["path"]], mode)
    for name in removals:
        os.makedirs(keep_dir, mode=0o700, exist_ok=True)
        shutil.move(os.path.join(project_src, name), os.path.join(keep_dir, name))


def images_of_git_release(engine, release, contents):
    """Image references of a release read from git, by rendering it with `docker compose config`."""
    tmp = tempfile.mkdtemp(prefix="stackops-git-target-")
    try:
        for name, data in contents.items():
            dest = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            atomic_write(dest, data, 0o600)
        compose_files = [e["path"] for e in release["files"] if e["kind"] == "compose"]
        model = Compose(engine, project_src=tmp, project_name=release["project"], files=compose_files).config()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: svc.get("image") for name, svc in model.get("services", {}).items() if svc.get("image")}


def load_target(engine, ledger, target, params, deployed_now=None):
    """Resolve a target and read its files: (release, contents).

    A release read from git gets its services' images from its own compose files (by tag).
    """
    project_src = params.get("project_src")
    release = resolve_target(engine.module, ledger, target, project_src, deployed_now)
    contents = target_contents(engine.module, ledger, release, project_src)
    if release.get("source") == "git":
        images = images_of_git_release(engine, release, contents)
        release["services"] = {
            name: {"image": image, "image_id": None, "repo_digest": None} for name, image in images.items()
        }
    return release, contents


def ensure_images(engine, release, check_mode=False):
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
        if local and image_exists(engine, local):
            present.append(name)
            continue
        if not ref:
            missing.append(name)
            continue
        if not check_mode:
            repo, _sep, digest_or_tag = ref.partition("@")
            if not digest_or_tag:
                repo, digest_or_tag = split_tag(ref)
            try:
                engine.pull(repo, digest_or_tag)
            except EngineError as exc:
                raise ReleaseError(
                    "cannot pull image %s of service %s: %s. Nothing was stopped; make the image reachable "
                    "(registry up, credentials) and run again" % (ref, name, exc)
                ) from exc
        pulled.append(name)
    if missing:
        # Building them again would build the project's sources as they are now, not the release's.
        contexts = [
            "%s from %s" % (entry["service"], entry["path"])
            for entry in release.get("unrecorded") or []
            if entry.get("kind") == "build" and entry.get("service") in missing
        ]
        raise ReleaseError(
            "images of release %s were built on the host, have no registry digest and are no longer there: %s.%s "
            "Load them (docker load), or push built images to a registry before recording a release so that "
            "their digests are recorded, then run again; nothing was stopped"
            % (
                release.get("id"),
                ", ".join("%s (%s)" % (name, release["services"][name].get("image_id")) for name in missing),
                " A rollback does not build them again (built %s: the sources there are the project's current "
                "ones, not the release's)." % ", ".join(contexts)
                if contexts
                else "",
            )
        )
    return pulled, present


def equivalent_running_refs(engine, project, release):
    """Services whose running container's image reference resolves to the release's image."""
    refs = {}
    try:
        containers = engine.project_containers(project)
    except EngineError:  # without the engine, pin by digest only
        return refs
    for container in containers:
        name = (container.labels or {}).get(SERVICE_LABEL)
        svc = release.get("services", {}).get(name)
        if not svc or not svc.get("image_id") or name in refs:
            continue
        ref = container.attrs.get("Config", {}).get("Image")
        # The reference must still resolve to the same image: a tag moved since is no pin.
        if ref and container.attrs.get("Image") == svc["image_id"] and resolved_id(engine, ref) == svc["image_id"]:
            refs[name] = ref
    return refs


def resolved_id(engine, ref):
    """The id of the local image a reference names, or None."""
    try:
        attrs = engine.image(ref)
    except EngineError:  # a reference the engine cannot resolve
        return None
    return attrs.get("Id") if attrs else None


def image_exists(engine, ref):
    return resolved_id(engine, ref) is not None


def split_tag(ref):
    """'reg:5000/app:v1' -> ('reg:5000/app', 'v1'); no tag -> latest."""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        return ref[: len(ref) - len(last) + last.index(":")], last[last.index(":") + 1 :]
    return ref, "latest"


class BackupOptions:
    """What VolumeBackups reads of a module, for a backup another module takes (a restore point)."""

    def __init__(self, module, **params):
        self.params = dict(
            dict(
                compression=None,
                keep=0,
                stop_containers=True,
                stop_timeout=30,
                archive=None,
                dest=None,
                safety_dir=None,
                create_volume=False,
                method="auto",
            ),
            **params,
        )
        self.check_mode = module.check_mode
        self.warn = module.warn
        self.get_bin_path = module.get_bin_path


class Releases:
    """What stackops.rollback.compose_release does, one method per state; each returns its results.

    `module` gives params, check_mode, _diff and warn (an AnsibleModule in real use).
    """

    def __init__(self, module, engine):
        self.module = module
        self.engine = engine
        self.params = module.params

    def ledger(self, project=None):
        return Ledger(self.params["ledger_dir"], project or project_name(self.engine, self.params))

    def present(self):
        """Record what runs now as a release (new content only) and append the event."""
        release, contents = capture(self.engine, self.params)
        if self.params.get("git_commit"):
            release["git"] = {"commit": self.params["git_commit"], "dirty": False}
        ledger = self.ledger(release["project"])
        is_new = not ledger.has_release(release["id"])
        event = self.params["event"]
        if event == "deploy" and ledger.left_by_failure(release["id"], ("failed_deploy",)):
            # A rollback's backup step records what runs as a deploy; a deploy recorded as failed
            # (its rescue rolls it back) stays failed and never becomes current or previous.
            stored = ledger.get(release["id"]) if not is_new else release
            return dict(
                changed=False, release_id=release["id"], release=summary(stored), new_release=False, failed_deploy=True
            )
        unchanged = ledger.current_id() == release["id"] and event == "deploy"
        changed = is_new or not unchanged
        if changed and not self.module.check_mode:
            if is_new:
                ledger.store_release(release, contents)
            entry = {
                "event": event,
                "release": release["id"],
                "time": utcnow(),
                "version": self.params.get("version"),
                "details": self.params.get("details") or {},
            }
            ledger.append_event(entry)
            if event != "deploy":
                ledger.audit(entry)
        stored = ledger.get(release["id"]) if ledger.has_release(release["id"]) else release
        results = dict(changed=changed, release_id=release["id"], release=summary(stored), new_release=is_new)
        if self.params.get("restore_point"):
            results["restore_point"] = self.take_restore_point(ledger, release)
            results["changed"] = True
        if event == "deploy" and (self.params.get("databases") or self.params.get("notes") is not None):
            record_changed, record = self.record_deploy(ledger, release)
            results["changed"] = results["changed"] or record_changed
            results["notes"] = record.get("notes")
            results["databases"] = {
                key: {k: db[k] for k in ("sha256", "tables", "migrations")}
                for key, db in record.get("databases", {}).items()
            }
        return results

    def databases(self, project):
        return Databases(self.engine, project, self.params.get("databases"))

    def audited(self):
        """One line in the audit log for a run that nothing else recorded: refused_rollback (it
        failed before its first change), failed_rollback with O(event=failed_rollback), or
        unrecorded_rollback with O(event=rollback) (done and verified, its record failed).

        The engine may be what failed: the project's name comes from the parameters alone.
        """
        p = self.params
        name = p.get("project_name") or offline_project_name(p["project_src"], p.get("files"), p.get("env_files"))
        event = AUDITED_EVENTS.get(p["event"], "refused_rollback")
        entry = {"event": event, "time": utcnow(), "details": self.params.get("details") or {}}
        if not self.module.check_mode:
            Ledger(self.params["ledger_dir"], name).audit(entry)
        return dict(changed=True, project=name, entry=entry)

    def record_deploy(self, ledger, release):
        """Store the deploy notes and each declared database's schema with the release: (changed, record)."""
        existing = ledger.deploy_record(release["id"]) if ledger.has_release(release["id"]) else {}
        record = dict(existing)
        if self.params.get("notes") is not None:
            record["notes"] = self.params["notes"]
        if self.params.get("databases"):
            record["databases"] = self.databases(release["project"]).records()
        changed = record != existing
        if changed and not self.module.check_mode:
            ledger.write_deploy_record(release["id"], record)
        return changed, record

    def take_restore_point(self, ledger, release):
        """Save each declared database, verified, before a deploy: an online dump where the engine
        has one (the database keeps serving), else a consistent copy of its volumes."""
        databases = self.databases(release["project"])
        if not databases.declarations:
            raise ReleaseError("restore_point needs databases: the databases the restore point holds")
        dest = self.params.get("restore_point_dir")
        options = BackupOptions(self.module, dest=dest)
        dumped = [d for d in databases.declarations if d["engine"] in DUMP_ENGINES]
        archives = []
        if dumped:
            dumps = DatabaseDumps(options, self.engine, databases=databases)
            dumps.check_dest(dest, "restore_point_dir")
            for decl in dumped:
                if self.module.check_mode:
                    databases.container(decl["service"], "the online dump")
                    continue
                backup = dumps.dump(decl, dest, dumps.compression(), kind="restore-point")
                archives.append(
                    {"database": key_of(decl), "kind": "dump", "archive": backup["archive"], "sha256": backup["sha256"]}
                )
        volumes = []
        for decl in databases.declarations:
            if decl in dumped:
                continue
            names = databases.volumes(decl)
            if not names:
                raise ReleaseError(
                    "service %s of database %s mounts no volume and its engine has no online dump: nothing to save; "
                    "nothing was changed" % (decl["service"], key_of(decl))
                )
            volumes.extend((key_of(decl), name) for name in names if name not in [v for _k, v in volumes])
        backups = VolumeBackups(options, self.engine)
        for key, volume in volumes:
            backup = backups.backup(volume)
            if not self.module.check_mode:
                backups.params["archive"] = backup["archive"]
                backups.verify()  # a restore point that does not verify is not one
            archives.append(
                {"database": key, "volume": volume, "archive": backup["archive"], "sha256": backup.get("sha256")}
            )
        stored = ledger.get(release["id"]) if ledger.has_release(release["id"]) else release
        label = stored.get("version")
        entry = {"release": release["id"], "version": label, "time": utcnow(), "archives": archives}
        if not self.module.check_mode:
            ledger.add_restore_point(entry)
        return dict(entry, describe="data as of release %s, before the next deploy" % release["id"])

    def restored(self):
        """Put a release's files into the project, its images pinned by digest where the files define
        them (see _pin.py); what they cannot pin, the ledger's pin file does."""
        project_src = self.params["project_src"]
        ledger = self.ledger()
        release, contents = load_target(self.engine, ledger, self.params.get("release"), self.params)
        pinned = release.get("source") != "git"
        self.engine.ping()  # an engine that does not answer fails here, before any file is written
        running = equivalent_running_refs(self.engine, ledger.project, release) if pinned else {}
        # A container that runs the release's image by the release's own reference stays as it is.
        keep = {name for name, ref in running.items() if ref == release["services"][name].get("image")}
        plan = plan_pins(release, contents, dict(os.environ), keep) if pinned else None
        wanted = plan.contents if plan else contents
        writes, removals, diff = plan_checkout(project_src, release, wanted, bool(self.params.get("files")))
        leftover = {entry["service"] for entry in plan.not_pinned} if plan else set()
        pin = pin_document(release, running, only=leftover) if leftover else None
        # A staging copy (blue_green's green) keeps its pin override to itself and is never
        # recorded: nothing of it goes into the ledger.
        staging = self.params.get("staging")
        pin_path = os.path.join(project_src, STAGED_PIN_FILE) if staging else ledger.pin_path
        changed = bool(writes or removals or (pin and read_bytes(pin_path) != pin.encode()))
        if changed and not self.module.check_mode:
            if plan and not staging:  # recorded first: a pinned file found on disk always maps back to the release
                changed_by_pins = plan.pinned_paths(contents)
                ledger.add_pinned_files(
                    project_src,
                    release["id"],
                    {
                        e["path"]: (sha256_bytes(wanted[e["path"]]), e["sha256"], e["kind"])
                        for e in release["files"]
                        if e["path"] in changed_by_pins
                    },
                )
            apply_checkout(project_src, release, wanted, writes, removals, ledger.removed_dir(), private=bool(staging))
            if pin and staging:
                atomic_write(pin_path, pin.encode(), 0o600)
            elif pin:
                ledger.write_pin(pin)
        if not pinned:
            self.module.warn(
                "git ref %s was never recorded in the ledger: its images follow their tags, which may have "
                "moved since; record each deploy with stackops.rollback.compose_release to pin digests"
                % release["git"]["ref"]
            )
        compose_files = [os.path.join(project_src, e["path"]) for e in release["files"] if e["kind"] == "compose"]
        env_files = [os.path.join(project_src, e["path"]) for e in release["files"] if e["kind"] == "env"]
        if pin:
            compose_files.append(pin_path)
        results = dict(
            changed=changed,
            release_id=release.get("id"),
            release=summary(release),
            compose_files=compose_files,
            env_files=env_files,
            pinned=pinned,
            pins=plan.pins if plan else [],
            not_pinned=plan.not_pinned if plan else [],
            by_hand=by_hand_command(self.params, ledger.project, compose_files if pin else None, env_files),
            written=[e["path"] for e in writes] + ["%s (removed)" % name for name in removals],
        )
        if self.module._diff and changed:
            results["diff"] = diff
        return results

    def unpinned(self):
        """Put the release's own content back into each project file a rollback pinned (for a deploy
        that follows moved tags: its `docker compose pull` then gets what the tags name now)."""
        project_src = self.params["project_src"]
        ledger = self.ledger()
        on_disk = {name: read_bytes(os.path.join(project_src, name)) for name in ledger.pinned_files(project_src)}
        unpinned = ledger.unpinned_contents(project_src, {k: v for k, v in on_disk.items() if v is not None})
        written, before, after = [], [], []
        for name, known in sorted(unpinned.items()):
            path, data = os.path.join(project_src, name), on_disk[name]
            written.append(name)
            hidden = known[2] in ENV_KINDS
            before.append("# %s\n%s" % (name, ENV_REDACTED if hidden else data.decode("utf-8", "replace")))
            after.append("# %s\n%s" % (name, ENV_REDACTED if hidden else known[1].decode("utf-8", "replace")))
            if not self.module.check_mode:
                atomic_write(path, known[1], ENV_MODE if hidden else os.stat(path).st_mode & 0o7777)
        results = dict(changed=bool(written), written=written)
        if self.module._diff and written:
            results["diff"] = {"before": "".join(before), "after": "".join(after)}
        return results

    def pulled(self):
        """Make every image of a release present on the host, by digest when recorded."""
        release, _contents = load_target(self.engine, self.ledger(), self.params.get("release"), self.params)
        pulled, present = ensure_images(self.engine, release, self.module.check_mode)
        return dict(
            changed=bool(pulled), release_id=release.get("id"), release=summary(release), pulled=pulled, present=present
        )

    def replaced(self):
        """Swap the named services to the project's current files at once (see Compose.replace),
        then ask first_answer's URLs until each answers: when each service served again."""
        services = self.params.get("services") or []
        started = time.monotonic()
        answered = {}
        if services and not self.module.check_mode:
            ids = Compose.from_params(self.engine, self.params).replace(services)
            if self.params.get("first_answer"):
                publishers = published_ports(self.engine.container(i) for i in ids)
                answered = first_answers(self.params["first_answer"], publishers, self.params["first_answer_timeout"])
        return dict(
            changed=bool(services), replaced=services, answered=answered, seconds=round(time.monotonic() - started, 3)
        )

    def run(self):
        state = self.params["state"]
        if state in ("restored", "pulled") and not self.params.get("release"):
            raise ReleaseError(
                "state=%s needs release: previous, current, a release id, a version label or a git ref" % state
            )
        return getattr(self, state)()


def published_ports(containers):
    """{host port: service} of the ports a project's running containers publish."""
    ports = {}
    for container in containers:
        if container.status != "running":
            continue
        service = (container.labels or {}).get(SERVICE_LABEL)
        for bindings in ((container.attrs.get("NetworkSettings") or {}).get("Ports") or {}).values():
            for binding in bindings or []:
                if binding.get("HostPort"):
                    ports[int(binding["HostPort"])] = service
    return ports


def first_answers(urls, publishers, timeout, interval=0.02, clock=time.time, ask=None):
    """{service: epoch} when each URL first answered (status below 500), asked every `interval`
    until `timeout`: bounded in time and in count. URLs on a port no service publishes are left out."""
    ask = ask or _answers
    answered = {}
    for url in urls:
        port = urllib.parse.urlsplit(url).port
        service = publishers.get(port)
        if service is None or service in answered:
            continue
        deadline = clock() + timeout
        for _attempt in range(int(timeout / max(interval, 0.001)) + 1):
            if ask(url):
                answered[service] = round(clock(), 3)
                break
            if clock() >= deadline:
                break
            time.sleep(interval)
    return answered


def _answers(url):
    try:
        with open_url(url, timeout=1, follow_redirects="none") as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def crossed_releases(ledger, target_id, deployed_id=None):
    """The releases a rollback to target_id crosses, newest first, each with its deploy notes.

    They are the releases deployed after the target's last deploy, up to what runs now: the field
    guide's "document migration reversibility in deploy notes" is read back from them.
    """
    events = [e for e in ledger.history() if e.get("event") in ("deploy",)]
    if deployed_id and (not events or events[-1]["release"] != deployed_id):
        events.append({"event": "deploy", "release": deployed_id})
    last = max((i for i, e in enumerate(events) if e["release"] == target_id), default=None)
    if target_id is None or last is None:
        return []
    crossed, seen = [], set()
    for event in reversed(events[last + 1 :]):
        release_id = event["release"]
        if release_id == target_id or release_id in seen:
            continue
        seen.add(release_id)
        known = ledger.has_release(release_id)
        crossed.append(
            {
                "id": release_id,
                "version": ledger.get(release_id).get("version") if known else None,
                "notes": ledger.deploy_record(release_id).get("notes") if known else None,
            }
        )
    return crossed


def restore_point_of(ledger, release_id):
    """The newest restore point holding the data as of release_id, with the release deployed after it."""
    points = [p for p in ledger.restore_points() if p.get("release") == release_id]
    if not points:
        return None
    point = dict(points[-1])
    after = [e for e in ledger.history() if e.get("event") == "deploy" and e.get("time", "") > point.get("time", "")]
    point["before"] = next((e["release"] for e in after if e["release"] != release_id), None)
    point["describe"] = "data as of release %s%s, taken %s" % (
        release_id,
        ", before release %s" % point["before"] if point["before"] else "",
        point.get("time"),
    )
    return point
