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


def bind(source, rw=True):
    return {"Type": "bind", "Source": source, "Destination": "/data", "RW": rw}


def volume(name):
    return {"Type": "volume", "Name": name, "Source": "/var/lib/docker/volumes/%s/_data" % name, "RW": True}


def is_dir_except(*files):
    return lambda path: path not in files


def test_writable_bind_mounts_under_the_project_are_data_and_the_rest_is_listed_with_its_reason():
    containers = [
        {"service": "db", "mounts": [bind("/srv/shop/pgdata"), volume("shop_cache")]},
        {
            "service": "web",
            "mounts": [
                bind("/srv/shop/conf", rw=False),
                bind("/srv/shop/uploads"),
                bind("/srv/shop/uploads/thumbs"),  # inside uploads: in its copy
                bind("/srv/shop"),  # the project directory itself
                bind("/var/run/docker.sock"),
                bind("/srv/shop/app.sock"),
                bind("/mnt/media"),
            ],
        },
    ]
    data = _volumes.data_sources(
        containers, "/srv/shop/", ["shop_cache", "shop_unused"], is_dir=is_dir_except("/srv/shop/app.sock")
    )
    assert data["volumes"] == ["shop_cache", "shop_unused"]
    assert data["paths"] == ["/srv/shop/pgdata", "/srv/shop/uploads"]
    reasons = {entry["source"]: entry["reason"] for entry in data["not_backed_up"]}
    assert reasons == {
        "/srv/shop/conf": "read-only",
        "/srv/shop": "the project directory itself (its files are the release's)",
        "/var/run/docker.sock": "a system path",
        "/srv/shop/app.sock": "a file or socket, not a directory",
        "/mnt/media": "outside the project directory; declare it as data (data_paths) to back it up",
    }
    assert {e["source"]: e["services"] for e in data["not_backed_up"]}["/srv/shop/conf"] == ["web"]


def test_a_dumped_database_is_not_copied_and_a_declared_directory_is_whatever_mounts_it():
    containers = [
        {"service": "db", "mounts": [bind("/srv/shop/pgdata"), volume("shop_dbdata")]},
        {"service": "web", "mounts": [bind("/mnt/media/photos"), bind("/mnt/media/docs", rw=False)]},
    ]
    data = _volumes.data_sources(
        containers,
        "/srv/shop",
        ["shop_dbdata"],
        declared=["/mnt/media/"],
        dumped_services=["db"],
        is_dir=is_dir_except(),
    )
    assert data["volumes"] == []
    assert data["dumped"] == ["/srv/shop/pgdata", "shop_dbdata"]
    assert data["paths"] == ["/mnt/media"]  # declared: read-only parts included, one copy
    assert data["not_backed_up"] == [
        {"source": "/srv/shop/pgdata", "services": ["db"], "reason": "dumped online with database service db"}
    ]


def test_no_project_directory_means_only_declared_directories():
    data = _volumes.data_sources(
        [{"service": "web", "mounts": [bind("/srv/shop/uploads")]}], None, [], is_dir=is_dir_except()
    )
    assert data["paths"] == []
    assert data["not_backed_up"][0]["reason"].startswith("outside the project directory")


@pytest.mark.parametrize(
    ("path", "parent", "expected"),
    [("/srv/a", "/srv/a", True), ("/srv/a/b", "/srv/a/", True), ("/srv/ab", "/srv/a", False), ("/x", "/", True)],
)
def test_within(path, parent, expected):
    assert _docker.within(path, parent) is expected


def test_archives_of_a_directory_are_filed_under_its_name_and_a_hash_of_its_path():
    assert _volumes.archive_key("shop_dbdata") == "shop_dbdata"
    one, other = _volumes.archive_key("/srv/a/pg data"), _volumes.archive_key("/srv/b/pg data")
    assert one.startswith("dir-pg_data-") and other.startswith("dir-pg_data-") and one != other
    assert _volumes.describe_source("/srv/a") == "directory /srv/a"
    assert _volumes.describe_source("v") == "volume v"


def test_a_directory_is_backed_up_only_on_the_engine_s_host(tmp_path):
    with pytest.raises(_volumes.VolumeError, match=r"run this on the engine.s host\. Nothing was changed"):
        _volumes.existing_volume(engine("http://10.0.0.5:2375"), str(tmp_path))
    with pytest.raises(_volumes.VolumeError, match="does not exist on this host"):
        _volumes.existing_volume(engine("http+docker://localhost"), str(tmp_path / "gone"))
    attrs = _volumes.existing_volume(engine("http+docker://localhost"), str(tmp_path))
    assert attrs["Mountpoint"] == str(tmp_path) and attrs["Driver"] == "local" and attrs["Path"]
