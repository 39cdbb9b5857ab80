"""Unit tests of the volume backups' choices that need no engine (the module is faked at its edge)."""

from __future__ import annotations

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils._archive import ArchiveError, prepare_dir
from ansible_collections.stackops.rollback.plugins.module_utils._backup import VolumeBackups
from ansible_collections.stackops.rollback.plugins.module_utils._volumes import VolumeError


class FakeModule:
    def __init__(self, params, zstd):
        self.params = params
        self.check_mode = False
        self.warnings = []
        self._zstd = zstd

    def get_bin_path(self, name):
        return self._zstd if name == "zstd" else None

    def warn(self, text):
        self.warnings.append(text)


@pytest.mark.parametrize(
    ("asked", "zstd", "expected", "warned"),
    [
        (None, "/usr/bin/zstd", "zstd", False),
        (None, None, "gzip", True),
        ("gzip", "/usr/bin/zstd", "gzip", False),
        ("none", None, "none", False),
    ],
)
def test_compression_choice(asked, zstd, expected, warned):
    module = FakeModule({"compression": asked}, zstd)
    assert VolumeBackups(module, None).compression() == expected
    assert bool(module.warnings) == warned


def test_zstd_asked_for_but_missing_is_a_clear_error():
    manager = VolumeBackups(FakeModule({"compression": "zstd"}, None), None)
    with pytest.raises(ArchiveError, match="zstd binary is not on the managed host"):
        manager.compression()


class FakeEngine:
    def __init__(self, local=True, users=()):
        self.local = local
        self.users = users

    def is_local(self):
        return self.local

    def containers_using(self, volume):
        return list(self.users)


class FakeContainer:
    def __init__(self, name, status):
        self.name, self.status = name, status


def volume_attrs(tmp_path, **extra):
    return dict({"Name": "v", "Driver": "local", "Options": None, "Mountpoint": str(tmp_path)}, **extra)


@pytest.mark.parametrize(
    ("engine", "attrs", "stop", "reason"),
    [
        (FakeEngine(), {"Driver": "nfs-plugin"}, True, "uses the nfs-plugin driver, not local"),
        (FakeEngine(), {"Options": {"type": "nfs", "device": ":/export"}}, True, "has driver options (device, type)"),
        (FakeEngine(local=False), {}, True, "not reached through this host's Unix socket"),
        (FakeEngine(), {"Mountpoint": "/no/such/dir"}, True, "is not a directory on this host"),
        (FakeEngine(users=[FakeContainer("db", "running")]), {}, False, "db use volume v and stop_containers is false"),
    ],
)
def test_mountpoint_that_does_not_qualify(tmp_path, engine, attrs, stop, reason):
    params = {"method": "mountpoint", "stop_containers": stop}
    manager = VolumeBackups(FakeModule(params, "/usr/bin/zstd"), engine)
    with pytest.raises(ArchiveError, match=r"method=mountpoint cannot be used: .*nothing was changed") as err:
        manager.method(volume_attrs(tmp_path, **attrs))
    assert reason in str(err.value)
    params["method"] = "auto"
    assert manager.method(volume_attrs(tmp_path, **attrs)) == "api"


@pytest.mark.parametrize(
    ("wanted", "users", "stop", "expected"),
    [
        ("auto", [], True, "mountpoint"),
        ("auto", [FakeContainer("db", "running")], True, "mountpoint"),  # stopped for the copy
        ("auto", [FakeContainer("db", "exited")], False, "mountpoint"),
        ("mountpoint", [], True, "mountpoint"),
        ("api", [], True, "api"),
    ],
)
def test_method_choice(tmp_path, wanted, users, stop, expected):
    module = FakeModule({"method": wanted, "stop_containers": stop}, "/usr/bin/zstd")
    assert VolumeBackups(module, FakeEngine(users=users)).method(volume_attrs(tmp_path)) == expected


def test_a_directory_that_cannot_be_made_names_its_option(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    module = FakeModule({}, None)
    with pytest.raises(ArchiveError, match="safety_dir %s/sub does not exist and cannot be created" % blocker):
        prepare_dir(module, str(blocker / "sub"), "safety_dir", "the safety copies")
    with pytest.raises(ArchiveError, match="dest is needed: the directory for the archives"):
        prepare_dir(module, "", "dest", "the archives")
    module.check_mode = True
    prepare_dir(module, str(tmp_path / "later"), "dest", "the archives")
    assert not (tmp_path / "later").exists(), "check mode created the directory"


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ("relative/dir", "is not an absolute path"),
        ("/etc/app", "is a system path"),
        ("/", "is a system path"),
        ("PROJECT_PARENT", "holds the project directory"),
        ("MISSING", "does not exist on this host"),
    ],
)
def test_a_declared_data_directory_that_is_not_data_is_refused(tmp_path, declared, message):
    project = tmp_path / "shop"
    project.mkdir()
    declared = {"PROJECT_PARENT": str(tmp_path), "MISSING": str(tmp_path / "gone")}.get(declared, declared)
    params = {"project_src": str(project), "data_paths": [declared]}
    manager = VolumeBackups(FakeModule(params, None), FakeEngine())
    with pytest.raises((ArchiveError, VolumeError), match=message):
        manager.declared_paths()


def test_a_declared_data_directory_is_kept_normalised(tmp_path):
    (tmp_path / "media").mkdir()
    params = {"project_src": str(tmp_path / "shop"), "data_paths": [str(tmp_path / "media") + "/"]}
    assert VolumeBackups(FakeModule(params, None), FakeEngine()).declared_paths() == [str(tmp_path / "media")]
