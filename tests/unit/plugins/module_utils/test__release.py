"""Unit tests of the pure parts of releases: target resolution, checkout planning, tag splitting,
image choice. The ledger is a real one in a temporary folder; git answers come from a table."""

from __future__ import annotations

import os
import stat

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _release
from ansible_collections.stackops.rollback.plugins.module_utils._ledger import Ledger, LedgerError, sha256_bytes
from ansible_collections.stackops.rollback.plugins.module_utils._release import ReleaseError

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


class GitModule:
    """get_bin_path and run_command of an AnsibleModule, answering git from a table."""

    def __init__(self, answers=None, git="/usr/bin/git"):
        self.answers = answers or {}
        self.git = git

    def get_bin_path(self, name, required=False):
        return self.git if name == "git" else None

    def run_command(self, cmd, **kwargs):
        key = " ".join(cmd[3:])  # after: git -C <dir>
        return self.answers.get(key, (1, "", "fatal: not a git ref"))


def store(ledger, release_id, version, commit=None, files=None):
    files = files or {"compose.yml": b"services: {app: {image: app:%s}}\n" % version.encode()}
    entries = [
        {"path": name, "kind": "env" if name.startswith(".env") else "compose", "sha256": sha256_bytes(data)}
        for name, data in files.items()
    ]
    release = {
        "id": release_id,
        "project": ledger.project,
        "files": entries,
        "services": {"app": {"image": "app:%s" % version, "image_id": "sha256:" + release_id}},
        "git": {"commit": commit, "dirty": False} if commit else None,
        "version": version,
        "created": "2026-12-01T00:00:0%d.000000Z" % len(ledger.releases()),
    }
    ledger.store_release(release, files)
    return release


@pytest.fixture
def ledger(tmp_path):
    book = Ledger(str(tmp_path / "ledger"), "shop")
    store(book, "111111111111", "v1", COMMIT_A)
    store(book, "222222222222", "v2")
    for release_id in ("111111111111", "222222222222"):
        book.append_event({"event": "deploy", "release": release_id})
    return book


TARGETS = [
    # (target, deployed now, git answers, expected release id or version, or the error's words)
    ("previous", None, {}, "111111111111"),
    (None, None, {}, "111111111111"),
    ("  previous ", None, {}, "111111111111"),
    ("current", None, {}, "222222222222"),
    ("222222222222", None, {}, "222222222222"),
    # Something runs that was never recorded: the last recorded deploy is `previous`.
    ("previous", "333333333333", {}, "222222222222"),
    # A git ref recorded in the ledger resolves to that release, with its digests.
    ("v1-tag", None, {"rev-parse --verify --quiet v1-tag^{commit}": (0, COMMIT_A + "\n", "")}, "111111111111"),
    # A commit never recorded is read from git: its files only, images by tag.
    (
        "main",
        None,
        {
            "rev-parse --verify --quiet main^{commit}": (0, COMMIT_B + "\n", ""),
            "cat-file -e %s:compose.yml" % COMMIT_B: (0, "", ""),
        },
        "git:main",
    ),
    # A version label as recorded at deploy names its release, before any git ref of that name.
    ("v2", None, {"rev-parse --verify --quiet v2^{commit}": (0, COMMIT_A + "\n", "")}, "222222222222"),
    (" v1 ", None, {}, "111111111111"),
    ("nope", None, {}, "neither a release id nor a version label of project shop"),
    (
        "main",
        None,
        {"rev-parse --verify --quiet main^{commit}": (0, COMMIT_B + "\n", "")},
        "holds none of the project's compose files",
    ),
]


@pytest.mark.parametrize(("target", "deployed_now", "answers", "expected"), TARGETS)
def test_resolve_target(ledger, tmp_path, target, deployed_now, answers, expected):
    module = GitModule(answers)
    if " " in expected:
        with pytest.raises(ReleaseError, match=expected):
            _release.resolve_target(module, ledger, target, str(tmp_path), deployed_now)
        return
    release = _release.resolve_target(module, ledger, target, str(tmp_path), deployed_now)
    if expected.startswith("git:"):
        assert release["source"] == "git" and release["version"] == expected[4:] and release["id"] is None
        assert [f["path"] for f in release["files"]] == ["compose.yml"]
    else:
        assert release["id"] == expected


def test_a_version_label_recorded_on_two_releases_is_refused_naming_both(ledger, tmp_path):
    store(ledger, "333333333333", "v2", files={"compose.yml": b"services: {app: {image: app:v2-fixed}}\n"})
    with pytest.raises(ReleaseError) as raised:
        _release.resolve_target(GitModule(), ledger, "v2", str(tmp_path))
    message = str(raised.value)
    assert "target 'v2' is the version label of 2 releases of project shop" in message
    assert "222222222222 (recorded" in message and "333333333333 (recorded" in message
    assert message.endswith("name the release id instead")


def test_previous_without_history_says_how_to_record(tmp_path):
    with pytest.raises(ReleaseError, match=r"record each deploy with stackops\.rollback\.compose_release"):
        _release.resolve_target(GitModule(), Ledger(str(tmp_path), "shop"), "previous")


@pytest.mark.parametrize(
    ("project_src", "git", "words"),
    [(None, "/usr/bin/git", "project_src is not set"), ("/srv/shop", None, "git is not installed")],
)
def test_a_git_ref_needs_the_project_and_git(ledger, project_src, git, words):
    with pytest.raises(ReleaseError, match=words):
        _release.resolve_target(GitModule(git=git), ledger, "main", project_src)


def test_a_damaged_ledger_copy_is_refused(ledger):
    release = ledger.get("111111111111")
    path = ledger.release_dir("111111111111") + "/files/compose.yml"
    with open(path, "ab") as fh:
        fh.write(b"# edited by hand\n")
    with pytest.raises(LedgerError, match=r"does not match its checksum; the ledger at .* is damaged"):
        _release.target_contents(GitModule(), ledger, release, "/srv/shop")


CHECKOUTS = [
    # (files in the project now, the release's files, explicit files?, writes, removals)
    ({"compose.yml": b"v2"}, {"compose.yml": b"v1"}, False, ["compose.yml"], []),
    ({"compose.yml": b"v1"}, {"compose.yml": b"v1"}, False, [], []),
    ({}, {"compose.yml": b"v1", ".env": b"TAG=v1\n"}, False, ["compose.yml", ".env"], []),
    # Compose loads an override by itself: one the target did not have must go...
    (
        {"compose.yml": b"v1", "compose.override.yaml": b"x"},
        {"compose.yml": b"v1"},
        False,
        [],
        ["compose.override.yaml"],
    ),
    # ...unless the files are named explicitly, when Compose does not look for it.
    ({"compose.yml": b"v1", "compose.override.yaml": b"x"}, {"compose.yml": b"v1"}, True, [], []),
    (
        {"compose.yml": b"v1", "compose.override.yaml": b"x"},
        {"compose.yml": b"v1", "compose.override.yaml": b"x"},
        False,
        [],
        [],
    ),
]


@pytest.mark.parametrize(("present", "wanted", "explicit", "writes", "removals"), CHECKOUTS)
def test_plan_checkout(tmp_path, present, wanted, explicit, writes, removals):
    for name, data in present.items():
        (tmp_path / name).write_bytes(data)
    release = {"files": [{"path": n, "kind": "env" if n == ".env" else "compose"} for n in wanted]}
    planned, removed, _diff = _release.plan_checkout(str(tmp_path), release, wanted, explicit)
    assert [e["path"] for e in planned] == writes
    assert removed == removals
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == present, "planning wrote something"


def test_plan_checkout_never_shows_env_contents(tmp_path):
    (tmp_path / ".env").write_text("DB_PASSWORD=old-secret\n")
    release = {"files": [{"path": ".env", "kind": "env"}]}
    _writes, _removals, diff = _release.plan_checkout(str(tmp_path), release, {".env": b"DB_PASSWORD=new-secret\n"})
    assert "secret" not in diff["before"] + diff["after"]
    assert _release.ENV_REDACTED in diff["after"]


def test_apply_checkout_writes_env_files_for_their_owner_alone(tmp_path):
    release = {"files": [{"path": ".env", "kind": "env", "mode": "0644"}, {"path": "compose.yml", "kind": "compose"}]}
    contents = {".env": b"A=1\n", "compose.yml": b"services: {}\n"}
    writes, removals, _diff = _release.plan_checkout(str(tmp_path), release, contents)
    _release.apply_checkout(str(tmp_path), release, contents, writes, removals, str(tmp_path / "removed"))
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "compose.yml").stat().st_mode & 0o777 == 0o644
    # One already there, readable by its group: rewritten 0600 (it used to keep 0640).
    (tmp_path / ".env").chmod(0o640)
    contents[".env"] = b"A=2\n"
    writes, removals, _diff = _release.plan_checkout(str(tmp_path), release, contents)
    _release.apply_checkout(str(tmp_path), release, contents, writes, removals, str(tmp_path / "removed"))
    assert (tmp_path / ".env").read_bytes() == b"A=2\n" and (tmp_path / ".env").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("app", ("app", "latest")),
        ("app:v1", ("app", "v1")),
        ("127.0.0.1:5000/stackops/app:v2", ("127.0.0.1:5000/stackops/app", "v2")),
        ("127.0.0.1:5000/stackops/app", ("127.0.0.1:5000/stackops/app", "latest")),
        ("registry.example:443/team/db", ("registry.example:443/team/db", "latest")),
    ],
)
def test_split_tag(ref, expected):
    assert _release.split_tag(ref) == expected


class ImageEngine:
    def __init__(self, images):
        self.images = images

    def image(self, ref):
        return self.images.get(ref)


@pytest.mark.parametrize(
    ("configured", "digests", "expected"),
    [
        ("reg:5000/app:v1", ["reg:5000/app@sha256:1", "mirror/app@sha256:2"], "reg:5000/app@sha256:1"),
        ("mirror/app:v1", ["reg:5000/app@sha256:1", "mirror/app@sha256:2"], "mirror/app@sha256:2"),
        ("other/app:v1", ["reg:5000/app@sha256:1"], "reg:5000/app@sha256:1"),
        ("app:v1", [], None),
    ],
)
def test_image_details_chooses_the_digest_of_the_configured_repository(configured, digests, expected):
    engine = ImageEngine({"sha256:x": {"Id": "sha256:x", "RepoDigests": digests, "RepoTags": [configured]}})
    assert _release.image_details(engine, "sha256:x", configured)[0] == expected


def test_an_image_gone_since_its_container_started_has_no_digest():
    assert _release.image_details(ImageEngine({}), "sha256:gone", "app:v1") == (None, [])


class FakeContainer:
    def __init__(self, service, ports, status="running"):
        self.status = status
        self.labels = {"com.docker.compose.service": service}
        self.attrs = {"NetworkSettings": {"Ports": ports}}


def test_published_ports_name_their_service():
    containers = [
        FakeContainer("app", {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}], "9/udp": None}),
        FakeContainer("db", {"5432/tcp": None}),
        FakeContainer("old", {"80/tcp": [{"HostPort": "18081"}]}, status="exited"),
    ]
    assert _release.published_ports(containers) == {18080: "app"}


def test_first_answers_are_asked_until_they_answer_bounded_in_time():
    now = [100.0]

    def clock():
        return now[0]

    def ask(url):
        now[0] += 0.25  # each question takes a quarter of a second
        return url.endswith("/up") and now[0] >= 101.0

    answered = _release.first_answers(
        ["http://127.0.0.1:18080/up", "http://127.0.0.1:18082/down", "http://127.0.0.1:9999/x"],
        {18080: "app", 18082: "worker"},
        timeout=2.0,
        interval=0.0,
        clock=clock,
        ask=ask,
    )
    # app answered at 101.0; worker never did within 2 s; port 9999 is no service's.
    assert answered == {"app": 101.0}
    assert now[0] <= 101.0 + 2.0 + 0.25


class AuditModule:
    def __init__(self, params, check_mode=False):
        self.params = dict(dict(project_name=None, details=None, event="deploy"), **params)
        self.check_mode = check_mode


class NoEngine:
    def __getattr__(self, name):
        raise AssertionError("state=audited must not use the engine (it may be what failed)")


@pytest.mark.parametrize(
    ("project_src", "project_name", "event", "expected"),
    [
        ("/srv/My.Shop_1", None, "deploy", ("myshop_1", "refused_rollback")),
        ("/srv/shop/", "shop-prod", "failed_rollback", ("shop-prod", "failed_rollback")),
    ],
)
def test_audited_writes_one_line_without_the_engine(tmp_path, project_src, project_name, event, expected):
    params = dict(ledger_dir=str(tmp_path), project_src=project_src, project_name=project_name, event=event)
    params["details"] = {"step": "preflight", "reason": "lock held"}
    result = _release.Releases(AuditModule(params), NoEngine()).audited()
    assert (result["project"], result["entry"]["event"]) == expected
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == 1 and '"reason": "lock held"' in lines[0] and '"project": "%s"' % expected[0] in lines[0]
    assert Ledger(str(tmp_path), expected[0]).history() == [], "an audit line is no event of the history"


def test_audited_in_check_mode_writes_nothing(tmp_path):
    params = dict(ledger_dir=str(tmp_path), project_src="/srv/shop")
    assert _release.Releases(AuditModule(params, check_mode=True), NoEngine()).audited()["changed"]
    assert not (tmp_path / "audit.log").exists()


@pytest.mark.parametrize(
    ("files", "environ", "expected"),
    [
        # Compose's order: the environment, an env file, the compose files' name:, the directory.
        ({}, {}, "myshop_1"),
        ({"compose.yaml": "name: shop-prod\nservices: {}\n"}, {}, "shop-prod"),
        ({"compose.yaml": "name: 'shop-prod' # ours\nservices: {}\n"}, {}, "shop-prod"),
        ({"compose.yaml": "name: shop-prod\n", ".env": "COMPOSE_PROJECT_NAME=shop-env\n"}, {}, "shop-env"),
        ({"compose.yaml": "name: shop-prod\n"}, {"COMPOSE_PROJECT_NAME": "from-env"}, "from-env"),
        # A later file's name wins; an interpolated name is left to the directory's.
        ({"compose.yaml": "name: a\n", "compose.override.yaml": "name: b\n"}, {}, "b"),
        ({"compose.yaml": "name: ${STACK}\nservices:\n  name: x\n"}, {}, "myshop_1"),
    ],
)
def test_offline_project_name_follows_compose(tmp_path, files, environ, expected):
    src = tmp_path / "My Shop_1"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    (src / "compose.yaml").touch()
    assert _release.offline_project_name(str(src), environ=environ) == expected


def test_offline_project_name_passes_over_what_cannot_be_read(tmp_path):
    src = tmp_path / "shop"
    src.mkdir()
    assert _release.offline_project_name(str(src), files=["gone.yml", "../outside.yml"], environ={}) == "shop"


@pytest.mark.parametrize(
    ("files", "environ", "compose_files"),
    [
        # Compose's own lookup: the first default file and its override.
        ({"compose.yaml": "", "compose.override.yml": ""}, {}, ["compose.yaml", "compose.override.yml"]),
        # COMPOSE_FILE in .env names the files (and no override is looked for).
        (
            {
                "compose.yaml": "",
                "compose.override.yml": "",
                ".env": "COMPOSE_FILE=compose.yaml:prod/compose.prod.yaml\n",
            },
            {},
            ["compose.yaml", "prod/compose.prod.yaml"],
        ),
        (
            {".env": "export COMPOSE_PATH_SEPARATOR=','\nCOMPOSE_FILE='a.yml,b.yml' \n"},
            {},
            ["a.yml", "b.yml"],
        ),
        # The environment wins over the env file, as for Compose.
        ({".env": "COMPOSE_FILE=a.yml\n"}, {"COMPOSE_FILE": "b.yml"}, ["b.yml"]),
        # A commented-out setting sets nothing.
        ({"compose.yml": "", ".env": "# COMPOSE_FILE=a.yml\n"}, {}, ["compose.yml"]),
    ],
)
def test_project_files_are_the_ones_compose_loads(tmp_path, files, environ, compose_files):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    names, envs = _release.project_file_names(str(tmp_path), environ=environ)
    assert names == compose_files
    assert envs == ([".env"] if ".env" in files else [])


def test_a_compose_file_outside_the_project_is_refused_by_name(tmp_path):
    (tmp_path / ".env").write_text("COMPOSE_FILE=compose.yml:../shared/base.yml\n")
    with pytest.raises(ReleaseError, match=r"COMPOSE_FILE names \.\./shared/base\.yml, outside the project directory"):
        _release.project_file_names(str(tmp_path), environ={})


def test_env_assignments_read_as_compose_does():
    text = "A=1\n  export B = two words # note\nC='quoted # kept'\nD=\"x\"\n# E=no\nnot a line\nA=3\n"
    assert _release.env_assignments(text) == {"A": "3", "B": "two words", "C": "quoted # kept", "D": "x"}


def test_compose_settings_keep_only_composes_own(tmp_path):
    (tmp_path / ".env").write_text("COMPOSE_PROFILES=web\nDB_PASSWORD=secret\n")
    (tmp_path / "prod.env").write_text("COMPOSE_PROFILES=web,worker\n")
    assert _release.compose_settings(str(tmp_path), [".env", "prod.env", "gone.env"], {"HOME": "/root"}) == {
        "COMPOSE_PROFILES": "web,worker"
    }


def test_service_env_files_under_the_project_are_recorded_the_rest_named(tmp_path):
    (tmp_path / "app.env").write_text("SECRET=1\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "worker.env").write_text("X=1\n")
    model = {
        "services": {
            "web": {"env_file": [{"path": str(tmp_path / "app.env"), "required": True}, ".env"]},
            "worker": {
                "env_file": [
                    {"path": str(tmp_path / "conf" / "worker.env")},
                    {"path": str(tmp_path / "optional.env"), "required": False},
                    {"path": "/etc/shared.env", "required": False},
                ]
            },
            "db": {},
        }
    }
    (tmp_path / ".env").write_text("TAG=v1\n")
    names, unrecorded = _release.service_env_files(model, str(tmp_path), recorded=[".env"])
    assert names == ["app.env", "conf/worker.env"]
    assert unrecorded == [{"service": "worker", "path": "/etc/shared.env", "why": "outside the project directory"}]
    missing = {"services": {"web": {"env_file": [{"path": str(tmp_path / "gone.env"), "required": True}]}}}
    with pytest.raises(ReleaseError, match=r"service web's env_file .*gone\.env does not exist"):
        _release.service_env_files(missing, str(tmp_path))


def test_a_service_env_file_is_restored_private_and_never_shown(tmp_path):
    (tmp_path / "app.env").write_text("API_KEY=new-secret\n")
    release = {"files": [{"path": "app.env", "kind": "service_env", "mode": "0644"}]}
    contents = {"app.env": b"API_KEY=old-secret\n"}
    writes, removals, diff = _release.plan_checkout(str(tmp_path), release, contents)
    assert "secret" not in diff["before"] + diff["after"]
    (tmp_path / "app.env").unlink()
    _release.apply_checkout(str(tmp_path), release, contents, writes, removals, str(tmp_path / "removed"))
    assert (tmp_path / "app.env").read_bytes() == b"API_KEY=old-secret\n"
    assert (tmp_path / "app.env").stat().st_mode & 0o777 == 0o600


def test_an_override_is_left_alone_when_the_target_names_its_files(tmp_path):
    (tmp_path / "compose.override.yaml").write_text("services: {}\n")
    release = {"files": [{"path": "compose.yml", "kind": "compose"}], "settings": {"COMPOSE_FILE": "compose.yml"}}
    _writes, removals, _diff = _release.plan_checkout(str(tmp_path), release, {"compose.yml": b""})
    assert removals == []


def test_build_contexts_are_named_as_not_recorded():
    model = {
        "services": {
            "app": {"build": {"context": "/srv/shop/app", "dockerfile": "Dockerfile"}, "image": "shop-app"},
            "worker": {"build": "/srv/tools"},
            "db": {"image": "postgres:17"},
        }
    }
    found = _release.build_contexts(model, "/srv/shop")
    assert [(f["service"], f["path"], f["kind"]) for f in found] == [
        ("app", "app", "build"),
        ("worker", "/srv/tools", "build"),
    ]
    assert "by its digest" in found[0]["why"]


def test_a_pinned_file_maps_back_to_its_release_s_own_content(ledger, tmp_path):
    project = tmp_path / "project"
    original = ledger.file_content("111111111111", "compose.yml")
    pinned = original.replace(b"app:v1", b"app:v1@sha256:" + b"a" * 64)
    shas = (sha256_bytes(pinned), sha256_bytes(original), "compose")
    ledger.add_pinned_files(str(project), "111111111111", {"compose.yml": shas})
    found = ledger.unpinned_contents(str(project), {"compose.yml": pinned})
    assert found == {"compose.yml": (sha256_bytes(original), original, "compose")}
    assert ledger.unpinned_contents(str(project), {"compose.yml": original}) == {}, "an unpinned file is itself"
    elsewhere = ledger.unpinned_contents(str(tmp_path / "elsewhere"), {"compose.yml": pinned})
    assert elsewhere == {}, "per project directory"
    assert stat.S_IMODE(os.stat(ledger.pinned_path).st_mode) == 0o600


@pytest.mark.parametrize(
    "params, project, compose_files, expected",
    [
        ({}, "shop", None, "cd {src} && docker compose up -d"),
        ({}, "other", None, "cd {src} && docker compose --project-name other up -d"),
        ({"files": ["a.yml"]}, "shop", None, "cd {src} && docker compose --file {src}/a.yml up -d"),
        (
            {},
            "shop",
            ["{src}/compose.yml", "/l/pin.yml"],
            "cd {src} && docker compose --file {src}/compose.yml --file /l/pin.yml up -d",
        ),
        ({"env_files": ["prod.env"]}, "shop", None, "cd {src} && docker compose --env-file {src}/prod.env up -d"),
    ],
)
def test_by_hand_is_plain_unless_the_project_needs_more(tmp_path, params, project, compose_files, expected):
    src = tmp_path / "shop"
    src.mkdir()
    (src / "compose.yml").write_text("services: {}\n")
    files = [name.format(src=src) for name in compose_files] if compose_files else None
    env_files = [str(src / name) for name in params.get("env_files", [])]
    command = _release.by_hand_command(dict(params, project_src=str(src)), project, files, env_files)
    assert command == expected.format(src=src)
