"""Unit tests of the Docker client factory's error handling."""

from __future__ import annotations

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _docker


def test_unreachable_engine_names_the_host_and_what_to_do(tmp_path):
    host = "unix://%s/nothing-listens.sock" % tmp_path
    with pytest.raises(_docker.DockerUnavailable) as info:
        _docker.connect({"docker_host": host, "api_timeout": 5})
    message = str(info.value)
    assert host in message
    assert "Is the Docker daemon running?" in message


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
