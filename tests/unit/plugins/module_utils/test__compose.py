"""Unit tests of the compose project's command lines and of Compose version parsing."""

from __future__ import annotations

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _compose, _docker


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Docker Compose version v2.26.1-4", (2, 26, 1)),
        ("2.18.0", (2, 18, 0)),
        ("docker-compose version 1.29.2, build unknown", (1, 29, 2)),
        ("garbage", None),
    ],
)
def test_parse_version(text, expected):
    assert _docker.parse_version(text) == expected


class RecordingEngine:
    def __init__(self, outputs=None):
        self.calls = []
        self.outputs = list(outputs or [])
        self.started = []

    def compose(self, project_args, args, cwd=None, check=True):
        self.calls.append((project_args, args, cwd))
        return 0, self.outputs.pop(0) if self.outputs else "", ""

    def start_containers(self, ids, what):
        self.started.append((ids, what))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"project_name": "shop"}, ["--project-name", "shop"]),
        (
            {"project_src": "/srv/shop", "files": ["compose.yml", "/var/lib/pin.yml"], "env_files": [".env"]},
            [
                *("--project-directory", "/srv/shop"),
                *("--file", "/srv/shop/compose.yml", "--file", "/var/lib/pin.yml"),
                *("--env-file", ".env"),
            ],
        ),
        ({"project_name": "shop", "profiles": ["debug"]}, ["--profile", "debug", "--project-name", "shop"]),
    ],
)
def test_project_args(options, expected):
    assert _compose.Compose(RecordingEngine(), **options).project_args() == expected


def test_a_project_needs_a_directory_or_a_name():
    with pytest.raises(_docker.ComposeError, match="one of project_src or project_name is required"):
        _compose.Compose(RecordingEngine())


def test_replace_creates_then_starts_the_new_containers_in_one_command():
    engine = RecordingEngine(outputs=["", "c1\nc2\n"])
    ids = _compose.Compose(engine, project_src="/srv/shop").replace(["app", "web"])
    assert [call[1] for call in engine.calls] == [
        ["create", "--", "app", "web"],
        ["ps", "--all", "--quiet", "--", "app", "web"],
    ]
    assert ids == ["c1", "c2"] and engine.started == [(["c1", "c2"], "app, web")]


def test_compose_project_args_can_require_an_option():
    spec = _compose.compose_project_args(project_src=dict(required=True))
    assert spec["project_src"] == {"type": "path", "required": True}
    assert "required" not in _compose.COMPOSE_PROJECT_ARGS["project_src"]
