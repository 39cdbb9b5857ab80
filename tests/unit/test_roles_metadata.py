"""Every role documents exactly its variables: defaults/main.yml and meta/argument_specs.yml
list the same keys, each carries the role's prefix, and the role has a README."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "roles").iterdir() if p.is_dir())


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_and_argument_specs_list_the_same_prefixed_keys(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(specs)
    assert all(key.startswith(role.name + "_") for key in defaults), [
        k for k in defaults if not k.startswith(role.name)
    ]
    assert (role / "README.md").is_file()


def test_there_are_roles():
    assert {r.name for r in ROLES} >= {"recreate", "blue_green"}
