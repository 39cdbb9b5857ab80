# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one way our modules reach a Docker engine: a client factory and readable errors.

Private to this collection (the leading underscore): modules import it, users do not.
"""

from __future__ import annotations

import os
import traceback

try:
    import docker
    from docker import errors as docker_errors

    HAS_DOCKER_SDK = True
    DOCKER_SDK_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised on hosts without the SDK
    docker = None
    docker_errors = None
    HAS_DOCKER_SDK = False
    DOCKER_SDK_IMPORT_ERROR = traceback.format_exc()

try:
    from requests import exceptions as requests_exceptions
except ImportError:  # pragma: no cover - requests comes with the docker SDK
    requests_exceptions = None

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

# Options every module that talks to the engine accepts, merged into its argument_spec.
DOCKER_COMMON_ARGS = dict(
    docker_host=dict(
        type="str",
        default=None,
        aliases=["docker_url"],
        fallback=(lambda: os.environ.get("DOCKER_HOST") or None, []),
    ),
    api_timeout=dict(type="int", default=60, aliases=["timeout_api"]),
)


class DockerUnavailable(Exception):
    """The engine cannot be reached, or the SDK is missing; the message says what to do."""


def docker_host_of(params):
    return params.get("docker_host") or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def connect(params):
    """Return a connected docker.DockerClient, or raise DockerUnavailable with advice."""
    if not HAS_DOCKER_SDK:
        raise DockerUnavailable(
            "the Docker SDK for Python is not installed for %s on the managed host; "
            "install it (apt-get install python3-docker, or pip install docker)" % os.environ.get("_", "this Python")
        )
    host = docker_host_of(params)
    try:
        client = docker.DockerClient(base_url=host, version="auto", timeout=params.get("api_timeout") or 60)
        client.ping()
    except Exception as exc:
        raise DockerUnavailable(
            "cannot reach the Docker engine at %s (%s). Is the Docker daemon running? "
            "Start it (for example 'systemctl start docker') or set docker_host, then retry." % (host, first_line(exc))
        ) from exc
    return client


def get_client(module):
    """connect() for a module: fail_json with the reason instead of raising."""
    try:
        return connect(module.params)
    except DockerUnavailable as exc:
        module.fail_json(msg=str(exc))


def is_not_found(exc):
    return HAS_DOCKER_SDK and isinstance(exc, docker_errors.NotFound)


def is_docker_error(exc):
    """True for errors that come from the engine or the connection to it."""
    kinds = []
    if HAS_DOCKER_SDK:
        kinds.append(docker_errors.DockerException)
    if requests_exceptions is not None:
        kinds.append(requests_exceptions.RequestException)
    kinds.append(ConnectionError)
    return isinstance(exc, tuple(kinds))


def first_line(exc):
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0]


def describe(exc):
    """One line for an error message: the engine's explanation when it gave one."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return explanation if isinstance(explanation, str) else explanation.decode("utf-8", "replace")
    return first_line(exc)
