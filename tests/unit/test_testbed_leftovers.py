"""The test bed's clean-up of earlier runs: which images it names for removal."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testbed"))

import leftovers


def test_an_image_whose_tag_moved_is_removed_by_its_id(monkeypatch):
    # `docker image rm repo:<none>` fails with "invalid reference format": such images piled up.
    listed = [
        "127.0.0.1:5000/stackops/app-mutable-t-1:latest\tsha256:aaa",
        "127.0.0.1:5000/stackops/app-mutable-t-2:<none>\tsha256:bbb",
        "127.0.0.1:5000/stackops/app:v1\tsha256:ccc",
        "127.0.0.1:5000/stackops/app:<none>\tsha256:ddd",
    ]
    monkeypatch.setattr(leftovers, "docker_lines", lambda *args: listed)
    assert leftovers.leftover_images(leftovers.PUSHED_REPOSITORIES) == [
        "127.0.0.1:5000/stackops/app-mutable-t-1:latest",
        "sha256:bbb",
    ]
