"""Unit tests of the engine gateway: its errors, the docker host it picks, the Compose gate."""

from __future__ import annotations

import re
import types

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _docker
from docker import errors as docker_errors


class FakeModule:
    """The AnsibleModule surface the Engine uses: params, get_bin_path, run_command."""

    def __init__(self, params=None, answers=None):
        self.params = dict({"docker_host": None, "api_timeout": 5}, **(params or {}))
        self.answers = list(answers or [])
        self.commands = []

    def get_bin_path(self, name, required=False):
        return "/usr/bin/" + name

    def run_command(self, cmd, **kwargs):
        self.commands.append(cmd)
        return self.answers.pop(0)


def test_unreachable_engine_names_the_host_and_what_to_do(tmp_path):
    host = "unix://%s/nothing-listens.sock" % tmp_path
    with pytest.raises(_docker.EngineError) as info:
        _docker.Engine(FakeModule({"docker_host": host})).ping()
    message = str(info.value)
    assert host in message
    assert "Is the Docker daemon running?" in message


def test_permission_denied_on_the_socket_says_become():
    refused = ConnectionError("Connection aborted")
    refused.__cause__ = PermissionError(13, "Permission denied")
    message = _docker.advice(refused, "unix:///var/run/docker.sock")
    assert "permission denied" in message and "become" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("client version 1.24 is too old. Minimum supported API version is 1.25", "upgrade the docker SDK"),
        ("client version 1.45 is too new. Maximum supported API version is 1.41", "upgrade the engine"),
        ("Connection refused", "Is the Docker daemon running?"),
    ],
    ids=["sdk-too-old", "engine-too-old", "not-running"],
)
def test_api_version_mismatches_say_which_side_to_upgrade(text, words):
    assert words in _docker.advice(Exception(text), "unix:///var/run/docker.sock")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ((0, "2.26.1\n", ""), None),
        ((0, "v2.18.0", ""), None),
        ((0, "2.17.3\n", ""), "Compose 2.17.3 is too old; stackops.rollback needs Compose v2 >= 2.18.0"),
        ((1, "", "docker: 'compose' is not a docker command."), "'docker compose' is not available"),
        ((0, "garbage", ""), "too old"),
    ],
)
def test_the_compose_version_gate_runs_once_per_engine(answer, error):
    module = FakeModule(answers=[answer, (0, "{}", "")])
    engine = _docker.Engine(module)
    if error:
        with pytest.raises(_docker.ComposeError, match=re.escape(error)):
            engine.compose(["--project-name", "p"], ["config"])
        return
    engine.compose(["--project-name", "p"], ["config"])
    assert engine.compose_version() >= _docker.COMPOSE_MIN_VERSION
    assert module.commands == [
        ["/usr/bin/docker", "compose", "version", "--short"],
        ["/usr/bin/docker", "compose", "--project-name", "p", "config"],
    ]


def test_a_failing_compose_command_names_the_subcommand_and_its_last_line():
    module = FakeModule(answers=[(0, "2.26.1", ""), (1, "", "pulling\nno such image: app:v9")])
    with pytest.raises(_docker.ComposeError) as info:
        _docker.Engine(module).compose(["--project-directory", "/srv/shop"], ["pull", "--quiet"])
    assert str(info.value) == "docker compose pull --quiet failed (rc=1): ['no such image: app:v9']"
    assert info.value.rc == 1


def test_the_cli_is_given_the_engine_of_docker_host():
    module = FakeModule({"docker_host": "tcp://127.0.0.1:2376"}, answers=[(0, "", "")])
    _docker.Engine(module).start_containers(["a1", "b2"], "app, web")
    assert module.commands == [["/usr/bin/docker", "--host", "tcp://127.0.0.1:2376", "start", "a1", "b2"]]


@pytest.mark.parametrize(
    ("params", "env", "expected"),
    [
        ({"docker_host": "tcp://10.0.0.1:2376"}, {}, "tcp://10.0.0.1:2376"),
        ({}, {"DOCKER_HOST": "unix:///run/other.sock"}, "unix:///run/other.sock"),
        ({}, {}, "unix:///var/run/docker.sock"),
    ],
)
def test_docker_host_precedence(monkeypatch, params, env, expected):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _docker.docker_host_of(params) == expected


class _FakeApiError(Exception):
    explanation = "No such volume: data"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_FakeApiError("500 Server Error"), "No such volume: data"),
        (ValueError("first line\nsecond line"), "first line"),
        (RuntimeError(""), "RuntimeError"),
    ],
)
def test_describe_prefers_the_engine_explanation(exc, expected):
    assert _docker.describe(exc) == expected


def test_containers_binding_a_directory_are_those_whose_bind_mounts_overlap_it():
    summaries = [
        {"Id": "db", "Mounts": [{"Type": "bind", "Source": "/srv/shop/pgdata"}]},
        {"Id": "all", "Mounts": [{"Type": "bind", "Source": "/srv"}]},  # holds it: writes there too
        {"Id": "thumbs", "Mounts": [{"Type": "bind", "Source": "/srv/shop/pgdata/sub"}]},
        {"Id": "gone", "Mounts": [{"Type": "bind", "Source": "/srv/shop/pgdata"}]},  # removed since the list
        {"Id": "other", "Mounts": [{"Type": "bind", "Source": "/srv/shop/pgdata2"}]},
        {"Id": "vol", "Mounts": [{"Type": "volume", "Name": "x", "Source": "/srv/shop/pgdata"}]},
    ]

    def get(container_id):
        if container_id == "gone":
            raise docker_errors.NotFound("gone")
        return container_id

    gateway = _docker.Engine(types.SimpleNamespace(params={}))
    gateway._client = types.SimpleNamespace(
        api=types.SimpleNamespace(containers=lambda all=False: summaries), containers=types.SimpleNamespace(get=get)
    )
    assert gateway.containers_binding("/srv/shop/pgdata") == ["db", "all", "thumbs"]


class BusyResponse:
    status_code = 500
    reason = "Internal Server Error"
    url = "http+docker://localhost/v1.43/system/df"

    def json(self):
        return {"message": "a disk usage operation is already running"}


def engine_whose_df_answers(answers):
    """An Engine whose client's df() raises or returns each of `answers` in turn."""
    calls = []

    def df():
        calls.append(1)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    gateway = _docker.Engine(types.SimpleNamespace(params={}))
    gateway._client = types.SimpleNamespace(df=df)
    return gateway, calls


def busy():
    return docker_errors.APIError(
        "500 Server Error", response=BusyResponse(), explanation=BusyResponse().json()["message"]
    )


def test_a_disk_usage_read_waits_for_the_one_another_rollback_runs():
    usage = {"Volumes": [{"Name": "shop_db", "UsageData": {"Size": 42}}]}
    gateway, calls = engine_whose_df_answers([busy(), busy(), usage])
    slept = []
    assert gateway.volume_sizes(sleep=slept.append) == {"shop_db": 42}
    assert len(calls) == 3 and slept == [0.5, 0.5]


def test_a_disk_usage_read_still_busy_at_the_deadline_fails_saying_so():
    now = [0.0]

    def sleep(seconds):
        now[0] += 60.0

    gateway, _calls = engine_whose_df_answers([busy()] * 5)
    with pytest.raises(_docker.EngineError, match="a disk usage operation is already running"):
        gateway.volume_sizes(clock=lambda: now[0], sleep=sleep)
