"""Unit tests of the volume backups' choices that need no engine (the module is faked at its edge)."""

from __future__ import annotations

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils._archive import ArchiveError
from ansible_collections.stackops.rollback.plugins.module_utils._backup import VolumeBackups


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
