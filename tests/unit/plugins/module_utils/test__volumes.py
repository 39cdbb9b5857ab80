"""Unit tests of when volume code may use the mount point on this host (no engine)."""

from __future__ import annotations

import types

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _docker, _volumes


def engine(base_url):
    """An Engine whose SDK client is a stand-in that only has the API's base_url."""
    gateway = _docker.Engine(types.SimpleNamespace(params={}))
    gateway._client = types.SimpleNamespace(api=types.SimpleNamespace(base_url=base_url))
    return gateway


@pytest.mark.parametrize(
    ("base_url", "driver", "exists", "expected"),
    [
        ("http+docker://localhost", "local", True, True),  # the engine's own socket on this host
        ("http+docker://localhost", "local", False, False),  # its files are not visible here
        ("http+docker://localhost", "nfs-plugin", True, False),  # a plugin's path means nothing here
        ("http://10.0.0.5:2375", "local", True, False),  # another machine: same path, other directory
        ("https://docker.example:2376", "local", True, False),
        ("http+docker://ssh", "local", True, False),
    ],
)
def test_local_mountpoint_only_for_the_engine_on_this_host(tmp_path, base_url, driver, exists, expected):
    mountpoint = tmp_path / "_data"
    if exists:
        mountpoint.mkdir()
    attrs = {"Name": "v", "Driver": driver, "Mountpoint": str(mountpoint)}
    assert _volumes.local_mountpoint(engine(base_url), attrs) == (str(mountpoint) if expected else None)
