# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The release ledger: what each compose project ran, by image digest, and its history.

Layout under the ledger directory (default /var/lib/stackops-rollback), private to root:

    projects/<project>/releases/<id>/release.json   the release: services, images, files
    projects/<project>/releases/<id>/files/...      copies of its compose and env files (0600)
    projects/<project>/releases/<id>/deploy.json    what its deploy recorded: notes, database schemas
    projects/<project>/restore-points.jsonl         restore points: database volumes backed up before a deploy
    projects/<project>/history.jsonl                one event a line: deploy, rollback, ...
    projects/<project>/pin.yml                      compose override pinning what the project's files cannot
    projects/<project>/pinned.json                  files a rollback pinned, by project directory: pinned
                                                    sha256 -> the release's own content
    projects/<project>/lock                         held by a rollback in progress
    projects/<project>/green-src/, green.json       a blue-green rollback's staged copy (alternate)
    projects/<project>/removed/<time>/              files a rollback took out of the project
    audit.log                                       one JSON line per rollback on this host

A release id is derived from the release's content (files and image ids), so recording the same
deployed state twice gives the same id and writes nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time

from ansible_collections.stackops.rollback.plugins.module_utils._files import append_json_line, atomic_write, read_bytes

DEFAULT_LEDGER_DIR = "/var/lib/stackops-rollback"
# What `docker compose` looks for when no file is named, in its order; overrides it adds.
DEFAULT_COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
DEFAULT_OVERRIDE_FILES = (
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
)
DEFAULT_ENV_FILE = ".env"
RELEASE_ID_RE = re.compile(r"^[0-9a-f]{12}$")
PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ROLLBACK_EVENTS = ("rollback",)
DEPLOY_EVENTS = ("deploy",)
# Seconds a lock stays its run's without news (each update renews it), when the run names none.
DEFAULT_LEASE = 600
# What a damaged ledger file's error ends with: the repair, README.md's "Repairing the ledger".
SEE_REPAIR = "see 'Repairing the ledger' in the collection's README"
REPAIR_RELEASE = (
    "nothing was changed; put the release's folder back from a backup of the ledger, or move it out of "
    "releases/ (that release can then no longer be a target); " + SEE_REPAIR
)
REPAIR_LINES = (
    "nothing was changed; keep a copy of the file, then mend or delete that line and, if the running "
    "release is no longer the current one, record it again with stackops.rollback.compose_release; " + SEE_REPAIR
)
# Events that change what a project runs for good. A failed rollback (put back or not) and a
# failed deploy (rolled back by its rescue) are recorded but never become `current` or `previous`.
SETTLED_EVENTS = DEPLOY_EVENTS + ROLLBACK_EVENTS
FAILED_EVENTS = ("failed_rollback", "failed_deploy")


# The options of a module that renews this run's lease on the project lock while it works
# (documented by the doc fragment stackops.rollback.ledger.lease).
LEASE_ARGS = dict(
    ledger_dir=dict(type="path", default=DEFAULT_LEDGER_DIR),
    renew_lock=dict(
        type="dict",
        options=dict(
            project=dict(type="str", required=True),
            token=dict(type="str", required=True, no_log=False),
        ),
    ),
)


class LedgerError(Exception):
    """Bad input or a ledger that cannot be used; the message says what to do."""


class LockHeld(LedgerError):
    """Another run holds the project's lock; `holder` is its record."""

    def __init__(self, ledger, holder, waited=None, now=None):
        self.holder = holder
        plan = holder.get("plan") or {}
        expires = holder.get("lease_expires")
        worker = live_worker(holder, now)
        super().__init__(
            "another rollback holds the lock of project %s%s: %s, on controller %s (pid %s), host %s, since %s%s%s%s. "
            "Lock file %s. If that run died, a later run takes the lock over once its lease has ended; to clear it "
            "now: ansible <this host> -b -m stackops.rollback.rollback_lock -a 'project=%s ledger_dir=%s token=clear "
            "state=absent force=true'"
            % (
                ledger.project,
                " (waited %ss)" % waited if waited is not None else "",
                holder.get("holder", "?"),
                holder.get("controller", "?"),
                holder.get("controller_pid", "?"),
                holder.get("host", "?"),
                holder.get("since", "?"),
                "; plan: %s from release %s to %s, phase %s"
                % (holder.get("strategy", "?"), plan.get("from", "?"), plan.get("to", "?"), lock_stage(holder))
                if plan
                else "",
                "; lease ends %s" % utc_stamp_of(expires) if isinstance(expires, (int, float)) else "",
                "; its step %s is still working on host %s (pid %s, since %s): the lock is taken over only once that "
                "process has ended - if it hangs, stop it there (kill %s)"
                % (
                    worker.get("step", "?"),
                    worker.get("host", "?"),
                    worker["pid"],
                    worker.get("since", "?"),
                    worker["pid"],
                )
                if worker
                else "",
                ledger.lock_path,
                ledger.project,
                ledger.root,
            )
        )


def process_start(pid):
    """The start time of process `pid` on this host (clock ticks since boot, from /proc), None when
    it does not run (gone, or a zombie); "unknown" when it exists and /proc cannot tell (not Linux)."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            stat = fh.read()
    except OSError:
        if os.path.exists("/proc/self/stat"):
            return None  # /proc answers for this process: that one is gone
        try:
            os.kill(pid, 0)  # no /proc here: existence is all there is to know
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "unknown"
    # The command name, in parentheses, may hold spaces: the fields after it are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None  # ended, not yet reaped (a container's PID 1 may never reap it)
    return int(fields[19])


def boot_id():
    """This host's boot id (a reboot ends every process), None where the kernel has none."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def worker_record(label):
    """What a lock records of the process doing one long step of its run on this host."""
    pid = os.getpid()
    return {
        "pid": pid,
        "started": process_start(pid),
        "boot": boot_id(),
        "host": socket.gethostname(),
        "step": label,
        "since": utcnow(),
    }


def live_worker(record, now=None):
    """The lock record's worker when that process still runs: a module whose controller went away
    (SSH dropped) goes on with its step, and nobody may take the lock over from it meanwhile.

    A worker recorded under another host name (a renamed host, a shared ledger) cannot be asked
    here: it counts as alive while the lease it renews lasts, so a record left by a worker that was
    killed never holds the lock for good.
    """
    worker = record.get("worker")
    if not isinstance(worker, dict) or not isinstance(worker.get("pid"), int):
        return None
    if worker.get("host") != socket.gethostname():
        expires = record.get("lease_expires")
        alive = isinstance(expires, (int, float)) and (time.time() if now is None else now) <= expires
        return worker if alive else None
    booted = boot_id()
    if worker.get("boot") and booted and worker["boot"] != booted:
        return None  # the host rebooted since
    started = process_start(worker["pid"])
    if started is None or (started != "unknown" and started != worker.get("started")):
        return None  # gone, or its pid now names another process
    return worker


def waited_for_worker(worker):
    """What the takeover's message says of a step of the dead run that it waited for."""
    if not worker:
        return ""
    return ", once its step %s (pid %s on %s), still working after its controller went away, had ended %ss later" % (
        worker.get("step", "?"),
        worker.get("pid", "?"),
        worker.get("host", "?"),
        worker.get("seconds", "?"),
    )


def lock_stage(record):
    """How far a lock's run got: its phase (blue_green) or the step it started (recreate)."""
    return record.get("phase") or record.get("step") or "the start"


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_stamp_of(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def checksum_of(record):
    """sha256 of a record's canonical JSON: what release.json keeps of its own content."""
    return sha256_bytes(json.dumps(record, sort_keys=True).encode())


def fingerprint(files, services):
    """Content hash of a release: its files (path and sha256) and each service's image id."""
    h = hashlib.sha256()
    for entry in sorted(files, key=lambda f: f["path"]):
        h.update(("file\0%s\0%s\n" % (entry["path"], entry["sha256"])).encode())
    for name in sorted(services):
        h.update(("service\0%s\0%s\n" % (name, services[name].get("image_id") or "")).encode())
    return h.hexdigest()


def pin_reference(service):
    """The image reference that pins a service exactly: repo@digest, else the image id."""
    return service.get("repo_digest") or service.get("image_id")


def pin_document(release, running_refs=None, only=None):
    """A compose override (JSON is valid YAML) that pins every service of a release (or `only` those).

    `running_refs` maps a service to the image reference its running container was started
    with, when that reference resolves to exactly the recorded image: keeping the same string
    keeps Compose from recreating a container that would not change (a database, usually).
    """
    running_refs = running_refs or {}
    services = {}
    for name, svc in sorted(release.get("services", {}).items()):
        if only is not None and name not in only:
            continue
        ref = running_refs.get(name) or pin_reference(svc)
        if ref:
            services[name] = {"image": ref}
    return json.dumps({"services": services}, indent=2, sort_keys=True) + "\n"


def safe_relpath(path):
    """Refuse absolute paths and '..' in file names stored in or restored from a release."""
    norm = os.path.normpath(path)
    if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
        raise LedgerError("file %r is outside the project directory; only files inside it are recorded" % path)
    return norm


class Ledger:
    def __init__(self, root, project):
        if not project or not PROJECT_RE.match(project):
            raise LedgerError(
                "project name %r is not a valid compose project name (lowercase letters, digits, '-' and '_')" % project
            )
        self.root = root or DEFAULT_LEDGER_DIR
        self.project = project
        self.dir = os.path.join(self.root, "projects", project)
        self.releases_dir = os.path.join(self.dir, "releases")
        self.history_path = os.path.join(self.dir, "history.jsonl")
        self.pin_path = os.path.join(self.dir, "pin.yml")
        self.pinned_path = os.path.join(self.dir, "pinned.json")
        self.lock_path = os.path.join(self.dir, "lock")
        self.audit_path = os.path.join(self.root, "audit.log")
        self.stage_dir = os.path.join(self.dir, "green-src")
        self.alternate_file = os.path.join(self.dir, "green.json")
        self.restore_points_path = os.path.join(self.dir, "restore-points.jsonl")

    def paths(self):
        """Where this project's files are in the ledger, for roles and reports."""
        return {
            "project_dir": self.dir,
            "pin": self.pin_path,
            "lock": self.lock_path,
            "stage_dir": self.stage_dir,
            "alternate_file": self.alternate_file,
        }

    # -- storage ---------------------------------------------------------------------------
    def ensure_dirs(self):
        for path in (self.root, os.path.join(self.root, "projects"), self.dir, self.releases_dir):
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)

    def release_dir(self, release_id):
        if not RELEASE_ID_RE.match(release_id or ""):
            raise LedgerError("%r is not a release id (12 hex digits, as compose_release_info lists)" % release_id)
        return os.path.join(self.releases_dir, release_id)

    def has_release(self, release_id):
        return os.path.isfile(os.path.join(self.release_dir(release_id), "release.json"))

    def get(self, release_id):
        path = os.path.join(self.release_dir(release_id), "release.json")
        try:
            with open(path) as fh:
                release = json.load(fh)
        except OSError as exc:
            raise LedgerError(
                "release %s of project %s is not in the ledger at %s (%s); list the releases with "
                "stackops.rollback.compose_release_info" % (release_id, self.project, self.dir, exc.strerror)
            ) from exc
        except ValueError as exc:
            raise LedgerError("release file %s is damaged (%s); %s" % (path, exc, REPAIR_RELEASE)) from exc
        # Written with a checksum of its own content (releases recorded before it have none): an
        # edit by hand, a digest or an image id changed, shows.
        checksum = release.pop("checksum", None) if isinstance(release, dict) else None
        if (
            not isinstance(release, dict)
            or release.get("id") != release_id
            or checksum not in (None, checksum_of(release))
        ):
            raise LedgerError(
                "release file %s does not match its checksum: it was changed since it was recorded; %s"
                % (path, REPAIR_RELEASE)
            )
        return release

    def releases(self):
        """Every recorded release, oldest first."""
        if not os.path.isdir(self.releases_dir):
            return []
        result = []
        for name in os.listdir(self.releases_dir):
            if RELEASE_ID_RE.match(name) and self.has_release(name):
                result.append(self.get(name))
        return sorted(result, key=lambda r: r.get("created", ""))

    def file_content(self, release_id, relpath, sha256=None):
        """The ledger's copy of a release's file, checked against its recorded sha256."""
        path = os.path.join(self.release_dir(release_id), "files", safe_relpath(relpath))
        with open(path, "rb") as fh:
            data = fh.read()
        if sha256 is not None and sha256_bytes(data) != sha256:
            raise LedgerError(
                "the ledger's copy of %s in release %s (%s) does not match its checksum; the ledger at %s is "
                "damaged; %s" % (relpath, release_id, path, self.dir, REPAIR_RELEASE)
            )
        return data

    def store_release(self, release, contents):
        """Write a release and its file copies atomically (temporary dir, then rename)."""
        self.ensure_dirs()
        final = self.release_dir(release["id"])
        if os.path.isdir(final):
            return False
        tmp = tempfile.mkdtemp(prefix=".new-", dir=self.releases_dir)
        try:
            for entry in release["files"]:
                dest = os.path.join(tmp, "files", safe_relpath(entry["path"]))
                os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
                atomic_write(dest, contents[entry["path"]], 0o600)
            stored = dict(release, checksum=checksum_of(release))
            atomic_write(
                os.path.join(tmp, "release.json"), (json.dumps(stored, indent=2, sort_keys=True) + "\n").encode()
            )
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return True

    def deploy_record(self, release_id):
        """What the deploy of a release recorded besides the release: {notes, databases}; {} when nothing."""
        path = os.path.join(self.release_dir(release_id), "deploy.json")
        data = read_bytes(path)
        if data is None:
            return {}
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError as exc:
            raise LedgerError("deploy record %s is damaged (%s); %s" % (path, exc, REPAIR_RELEASE)) from exc

    def write_deploy_record(self, release_id, record):
        """Replace a release's deploy record (atomically); False when it already says the same."""
        if self.deploy_record(release_id) == record:
            return False
        path = os.path.join(self.release_dir(release_id), "deploy.json")
        atomic_write(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), 0o600)
        return True

    def restore_points(self):
        """Every restore point recorded, oldest first."""
        return self._json_lines(self.restore_points_path)

    def add_restore_point(self, entry):
        self.ensure_dirs()
        append_json_line(self.restore_points_path, entry)

    def removed_dir(self):
        """A new folder for files a rollback takes out of the project directory."""
        return os.path.join(self.dir, "removed", utcnow().replace(":", ""))

    def write_pin(self, pin):
        self.ensure_dirs()
        atomic_write(self.pin_path, pin.encode(), 0o600)

    def _pinned_record(self):
        """pinned.json: {project directory: {path: {pinned sha256: {original, release, kind}}}}."""
        data = read_bytes(self.pinned_path)
        try:
            return json.loads(data.decode("utf-8")) if data else {}
        except ValueError as exc:
            raise LedgerError(
                "the ledger's pinned-files record %s is damaged (%s); nothing was changed; %s"
                % (self.pinned_path, exc, SEE_REPAIR)
            ) from exc

    def pinned_files(self, project_src):
        """{path: {pinned sha256: {original, release, kind}}}: each content a rollback wrote with its
        images pinned into project_src, and the release file it was pinned from."""
        return self._pinned_record().get(os.path.abspath(project_src), {})

    def add_pinned_files(self, project_src, release_id, pinned):
        """Remember pinned contents ({path: (pinned sha256, original sha256, kind)}) before they are
        written: whatever a rollback ever pinned maps back to its release's own file."""
        known = self._pinned_record()
        here = known.setdefault(os.path.abspath(project_src), {})
        before = json.dumps(known, sort_keys=True)
        for path, (pinned_sha, original_sha, kind) in pinned.items():
            here.setdefault(path, {})[pinned_sha] = {"original": original_sha, "release": release_id, "kind": kind}
        if json.dumps(known, sort_keys=True) != before:
            self.ensure_dirs()
            atomic_write(self.pinned_path, (json.dumps(known, indent=2, sort_keys=True) + "\n").encode(), 0o600)

    def unpinned_contents(self, project_src, contents):
        """{path: (sha256, content, kind)} of the release's own file for each of `contents` (project
        files' bytes by path) that is a content a rollback pinned; one read of the record. A file
        whose release the ledger no longer holds is left out."""
        pinned = self.pinned_files(project_src)
        found = {}
        for path, data in contents.items():
            known = pinned.get(path, {}).get(sha256_bytes(data))
            if not known:
                continue
            try:
                content = self.file_content(known["release"], path, known["original"])
            except (OSError, LedgerError):
                continue
            found[path] = (known["original"], content, known.get("kind"))
        return found

    # -- history ---------------------------------------------------------------------------
    def history(self):
        return self._json_lines(self.history_path)

    @staticmethod
    def _json_lines(path):
        if not os.path.exists(path):
            return []
        entries = []
        with open(path) as fh:
            for number, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    entries.append(json.loads(line))
                except ValueError as exc:
                    raise LedgerError("%s line %d is damaged (%s); %s" % (path, number, exc, REPAIR_LINES)) from exc
        return entries

    def append_event(self, event):
        self.ensure_dirs()
        append_json_line(self.history_path, event)

    def audit(self, entry):
        self.ensure_dirs()
        append_json_line(self.audit_path, dict(entry, project=self.project))

    def settled_history(self):
        """The deploys and rollbacks, oldest first: the events that decide `current` and `previous`."""
        return [e for e in self.history() if e.get("event") in SETTLED_EVENTS]

    def failed_history(self, kind=None):
        """The failed rollbacks and deploys (or those of one `kind`), oldest first; a failed rollback
        records what ran once it had failed, a failed deploy the release that failed."""
        return [e for e in self.history() if e.get("event") in ((kind,) if kind else FAILED_EVENTS)]

    def left_by_failure(self, release_id, kinds=FAILED_EVENTS):
        """Whether release_id is what a failed deploy or rollback (of `kinds`) left since the last
        deploy or rollback."""
        left = set()
        for event in self.history():
            if event.get("event") in SETTLED_EVENTS:
                left = set()
            elif event.get("event") in kinds:
                left.add(event.get("release"))
        return release_id in left

    def current_id(self):
        """The release of the latest deploy or rollback (a failed rollback never counts)."""
        events = self.settled_history()
        return events[-1]["release"] if events else None

    def previous_id(self, deployed_now=None):
        """The release deployed before the most recent deploy.

        Rollbacks do not move this point, so rolling back to `previous` twice lands on the same
        release (idempotent) instead of walking further back; name a release id for that.
        `deployed_now` is what runs now: when it is not the current release it was deployed
        without being recorded, and counts as the most recent deploy.
        """
        deployed = []
        events = self.settled_history()
        unrecorded = deployed_now and (not events or events[-1]["release"] != deployed_now)
        # What a failed deploy or rollback left running (since the last deploy or rollback) was no deploy.
        if unrecorded and not self.left_by_failure(deployed_now):
            events.append({"event": "deploy", "release": deployed_now})
        for event in events:
            if event.get("event") in DEPLOY_EVENTS and (not deployed or deployed[-1] != event["release"]):
                deployed.append(event["release"])
        if not deployed:
            return None
        last = deployed[-1]
        for release_id in reversed(deployed[:-1]):
            if release_id != last:
                return release_id
        return None

    def find_by_commit(self, commit):
        """The newest release recorded from this git commit, or None.

        Only a release whose files were clean at that commit is that commit's release.
        """
        found = None
        for release in self.releases():
            git = release.get("git") or {}
            if git.get("commit") == commit and git.get("dirty") is False:
                found = release
        return found

    # -- lock ------------------------------------------------------------------------------
    # The holder renews a lease each time it writes the lock (taking it, noting a phase). A lock
    # whose lease ended more than its grace ago belongs to a run that died, on whatever
    # controller (an AWX job's container is gone with its process table): any run takes it over.
    def lock_holder(self):
        try:
            with open(self.lock_path) as fh:
                return json.load(fh)
        except OSError:
            return None
        except ValueError:
            # Created but never written (a crash or a full disk right after O_EXCL), or damaged.
            try:
                mtime = os.stat(self.lock_path).st_mtime
            except OSError:
                return None
            return {
                "holder": "unknown (empty or damaged lock file %s)" % self.lock_path,
                "damaged": True,
                "mtime": mtime,
            }

    @staticmethod
    def lease_expired(record, now, grace):
        """Whether a lock record's lease ended more than `grace` seconds before `now`.

        A lock left `unfinished` by a run that ended (its plan for the next run to finish) has;
        a damaged or empty lock file counts from its last write; a record without a lease
        (written by an older release) never expires by time.
        """
        if record.get("unfinished"):
            return True  # its run ended and left its plan for the next run to finish
        if record.get("damaged"):
            return now > float(record.get("mtime") or 0) + grace
        expires = record.get("lease_expires")
        if not isinstance(expires, (int, float)):
            return False
        return now > expires + grace

    @classmethod
    def may_take(cls, current, takeover_token, now, grace):
        """Whether a run other than its holder may take this lock record over: its holder is
        known dead (`takeover_token`), or its lease ended more than `grace` seconds ago - and no
        step of it still works on this host (its controller may be gone while its module runs)."""
        return not live_worker(current, now) and cls.run_gone(current, takeover_token, now, grace)

    @classmethod
    def run_gone(cls, current, takeover_token, now, grace):
        """Whether the run holding this lock record is over: known dead (`takeover_token`), or its
        lease ended more than `grace` seconds ago (a step of it may still work on the host)."""
        dead = bool(takeover_token) and current.get("token") == takeover_token
        return dead or cls.lease_expired(current, now, grace)

    @staticmethod
    def _lease(seconds, now):
        """The lock fields of a lease of `seconds` from `now`; none for no lease."""
        if not isinstance(seconds, (int, float)) or seconds <= 0:
            return {}
        return {"lease_seconds": seconds, "lease_expires": round(now + seconds, 3)}

    @contextlib.contextmanager
    def _guard(self):
        """Serialise every change of the lock between runs on this host: a read, a judgement
        (ours, dead, expired) and the write that follows it happen as one step."""
        self.ensure_dirs()
        fd = os.open(self.lock_path + ".guard", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def acquire(self, holder, takeover_token=None, lease=None, grace=0, now=None):
        """Take the project's lock; raise LockHeld naming the holder when it is taken.

        Returns (changed, record taken over or None). The same token taking the lock again renews
        its lease (with `lease` when given, else the lease it took) and changes nothing else; a
        lock held by `takeover_token` (a run known to be dead) or whose lease ended more than
        `grace` seconds ago is taken over, and the dead run's record (its plan and phase) is
        returned so the new run can finish or undo its work. `lease` None takes DEFAULT_LEASE
        for a new lock; 0 takes none.
        """
        now = time.time() if now is None else now
        with self._guard():
            current = self.lock_holder()
            if current is not None and current.get("token") and current.get("token") == holder.get("token"):
                # Ours already: a re-run of the same play, or a renewal.
                renewal = self._lease(current.get("lease_seconds") if lease is None else lease, now)
                if renewal:
                    self._write_lock(dict(current, **renewal))
                return False, None
            data = dict(holder, host=socket.gethostname(), since=utcnow())
            data.update(self._lease(DEFAULT_LEASE if lease is None else lease, now))
            if current is None:
                self._write_lock(data)
                return True, None
            if not self.may_take(current, takeover_token, now, grace):
                raise LockHeld(self, current, now=now)
            resumed = current
            # A run that took a dead run's lock over and died before it wrote a plan of its own
            # leaves the dead run's plan unfinished: the run after it finishes that one.
            inner = current.get("resumes")
            if "plan" not in current and isinstance(inner, dict) and "plan" in inner:
                resumed = inner
            data["resumes"] = {k: v for k, v in resumed.items() if k not in ("resumes", "worker")}
            self._write_lock(data)
            return True, resumed

    def update_lock(self, token, data, now=None, drop=(), renew=True):
        """Merge data (the plan, the phase reached) into the lock this token holds, without the
        keys in `drop`, and renew its lease (unless renew is False); True when the data changed."""
        with self._guard():
            current = self.lock_holder()
            if current is None or current.get("token") != token:
                raise LedgerError(
                    "project %s's lock is not held by this run (holder: %s); not updating it"
                    % (self.project, (current or {}).get("holder", "nobody"))
                )
            merged = {k: v for k, v in current.items() if k not in drop}
            merged.update(data)
            changed = merged != current
            if renew:
                merged.update(self._lease(current.get("lease_seconds"), time.time() if now is None else now))
            if merged != current:
                self._write_lock(merged)
            return changed

    def _write_lock(self, data):
        atomic_write(self.lock_path, (json.dumps(data, sort_keys=True)).encode(), 0o600)

    def release_lock(self, token=None, force=False):
        if not os.path.exists(self.lock_path):
            return False
        with self._guard():
            current = self.lock_holder()
            if current is None:
                return False
            if not force and token and current.get("token") not in (None, token):
                raise LedgerError(
                    "the lock of project %s is held by %s, not by this run; not removing it (force=true removes it)"
                    % (self.project, current.get("holder", "?"))
                )
            os.unlink(self.lock_path)
            return True


class LeaseKeeper:
    """Keeps a run's lease on its project lock while one long step runs (a health wait, a
    backup, a drain), renewing it from a thread every third of the lease: a step longer than
    the lease is never taken for a dead run. It stops with the step, so a run that really died
    is still taken over once its lease ends."""

    def __init__(self, ledger, token, interval=None, step="a long step"):
        self.ledger = ledger
        self.token = token
        self.interval = interval
        self.step = step
        self.lost = None  # why a renewal failed during the step (the lock was taken over)
        self._stopped = threading.Event()
        self._thread = None

    def start(self):
        """Renew now and record this process as the run's worker; raise LedgerError when this run
        does not hold the lock (nothing started)."""
        self.ledger.update_lock(self.token, {"worker": worker_record(self.step)})
        seconds = (self.ledger.lock_holder() or {}).get("lease_seconds")
        if not isinstance(seconds, (int, float)) or seconds <= 0:
            return  # a lock without a lease never expires by time: nothing to renew
        interval = self.interval or max(1.0, seconds / 3.0)
        self._thread = threading.Thread(target=self._renew_every, args=(interval,), daemon=True)
        self._thread.start()

    def _renew_every(self, interval):
        while not self._stopped.wait(interval):
            try:
                self.ledger.update_lock(self.token, {})
            except (LedgerError, OSError) as exc:
                self.lost = str(exc)
                return

    def stop(self):
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is None:
            try:
                self.ledger.update_lock(self.token, {}, drop=("worker",), renew=False)
            except (LedgerError, OSError) as exc:
                self.lost = str(exc)


def run_keeping_lease(module, work):
    """Run work() while keeping the lease of the lock named by the module's renew_lock option.

    Without that option, or in check mode (which takes no lock), it only runs work(). A run that
    does not hold the lock any more (taken over) fails before the step changes anything.
    """
    lock = module.params.get("renew_lock")
    if not lock or module.check_mode:
        return work()
    keeper = LeaseKeeper(
        Ledger(module.params["ledger_dir"], lock["project"]),
        lock["token"],
        step=getattr(module, "_name", None) or "a long step",
    )
    try:
        keeper.start()
    except LedgerError as exc:
        module.fail_json(msg="%s; this step did not start and changed nothing" % exc)
    try:
        return work()
    finally:
        keeper.stop()
        if keeper.lost:
            module.warn(
                "the lease on project %s's lock could not be renewed during this step: %s"
                % (lock["project"], keeper.lost)
            )
