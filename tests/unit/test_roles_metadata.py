"""Every role documents exactly its variables: meta/argument_specs.yml lists the keys of
defaults/main.yml plus the required ones (which have no default, so that ansible-core's
validation fires), each key carries the role's prefix, and the role has a README."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "roles").iterdir() if p.is_dir())


def documented_options(role):
    """Options of every entry point (the internal role has one per task file)."""
    options = {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    for entry in specs.values():
        options.update(entry.get("options") or {})
    return options


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_list_the_defaults_and_the_required_keys(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    options = documented_options(role)
    required = sorted(name for name, spec in options.items() if spec.get("required"))
    assert sorted(defaults) == sorted(set(options) - set(required))
    assert not set(required) & set(defaults), "a required variable must not have a default"
    assert all("default" not in options[name] for name in required)
    assert all(key.startswith(role.name + "_") for key in options), [k for k in options if not k.startswith(role.name)]
    assert (role / "README.md").is_file()


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_each_entry_point_has_its_task_file(role):
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    assert all((role / "tasks" / ("%s.yml" % entry)).is_file() for entry in specs)


def test_there_are_roles():
    assert {r.name for r in ROLES} >= {"recreate", "blue_green", "common"}
