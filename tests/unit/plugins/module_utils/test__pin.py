"""Pins in the project's own files (_pin.py): where each image's digest goes, and what is refused."""

from __future__ import annotations

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils._pin import interpolate, plan_pins, trailing_variable

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def release(compose, env=None, services=None, overlay=None):
    """A release of one compose file (and an overlay), one env file, and its services."""
    files = [{"path": "compose.yml", "kind": "compose"}]
    contents = {"compose.yml": compose.encode()}
    if overlay is not None:
        files.append({"path": "compose.prod.yml", "kind": "compose"})
        contents["compose.prod.yml"] = overlay.encode()
    if env is not None:
        files.append({"path": ".env", "kind": "env"})
        contents[".env"] = env.encode()
    files.append({"path": "app.env", "kind": "service_env"})
    contents["app.env"] = b"APP_TAG=not-an-interpolation-source\n"
    return {"files": files, "services": services or {}}, contents


def svc(image, digest=A):
    return {
        "image": image,
        "image_id": "sha256:id",
        "repo_digest": image.split(":")[0] + "@" + digest if digest else None,
    }


APP = "services:\n  app:\n    image: reg/app:${APP_TAG}\n  db:\n    image: postgres:16\n"
APP_VERSION_TOO = APP.replace("  db:", "    environment:\n      VERSION: ${APP_TAG}\n  db:")
WITH_DIGEST = (
    "services:\n  app:\n    image: reg/app:v1@%s\n  built:\n    image: shop:built\n  db:\n    image: postgres:16\n"
)


def test_a_tag_variable_is_pinned_in_the_env_file_that_sets_it():
    rel, contents = release(APP, "X=1\nAPP_TAG=latest\n", {"app": svc("reg/app:latest"), "db": svc("postgres:16", B)})
    plan = plan_pins(rel, contents, keep={"db"})
    assert plan.contents[".env"] == ("X=1\nAPP_TAG=latest@%s\n" % A).encode()
    assert plan.contents["compose.yml"] == contents["compose.yml"], "the compose file holds no pin"
    assert plan.contents["app.env"] == contents["app.env"]
    assert plan.pins == [{"services": ["app"], "file": ".env", "line": 2, "how": "APP_TAG"}]
    assert plan.not_pinned == [] and plan.pinned_paths(contents) == [".env"]


@pytest.mark.parametrize(
    "line, expected",
    [
        ('APP_TAG="latest"', 'APP_TAG="latest@%s"' % A),
        ("export APP_TAG='latest'  # the moving one", "export APP_TAG='latest@%s'  # the moving one" % A),
        ("APP_TAG = latest", "APP_TAG = latest@%s" % A),
    ],
)
def test_an_env_pin_keeps_quotes_export_and_comments(line, expected):
    rel, contents = release(APP, line + "\r\n", {"app": svc("reg/app:latest")})
    assert plan_pins(rel, contents).contents[".env"] == (expected + "\r\n").encode()


def test_a_literal_tag_is_pinned_on_its_own_image_line_for_every_service_that_shares_it():
    compose = 'services:\n  web:\n    image: "reg/app:latest"  # moves\n  worker:\n    image: reg/app:latest\n'
    rel, contents = release(compose, None, {"web": svc("reg/app:latest"), "worker": svc("reg/app:latest")})
    plan = plan_pins(rel, contents)
    assert plan.contents["compose.yml"].decode() == (
        'services:\n  web:\n    image: "reg/app:latest@%s"  # moves\n  worker:\n    image: reg/app:latest@%s\n' % (A, A)
    )
    assert plan.pins == [
        {"services": ["web", "worker"], "file": "compose.yml", "line": 3, "how": "image"},
        {"services": ["web", "worker"], "file": "compose.yml", "line": 5, "how": "image"},
    ]


def test_only_the_line_that_gives_the_reference_is_pinned_an_overlay_s_variable_in_its_env():
    overlay = "services:\n  app:\n    image: reg/app:${APP_TAG}\n"
    compose = "services:\n  app:\n    image: reg/app:base\n"
    rel, contents = release(compose, "APP_TAG=v1\n", {"app": svc("reg/app:v1")}, overlay=overlay)
    plan = plan_pins(rel, contents)
    assert plan.contents["compose.yml"] == contents["compose.yml"]
    assert plan.contents[".env"] == ("APP_TAG=v1@%s\n" % A).encode()


@pytest.mark.parametrize(
    "compose, env, environ, why",
    [
        (
            APP.replace("  db:", "    environment:\n      VERSION: ${APP_TAG}\n  db:"),
            "APP_TAG=v1\n",
            {},
            "used for more",
        ),
        (APP.replace("postgres:16", "reg/side:${APP_TAG}"), "APP_TAG=v1\n", {}, "used for more"),
        (APP, "APP_TAG=v1\n", {"APP_TAG": "v1"}, "set in the environment"),
        (APP.replace("${APP_TAG}", "${APP_TAG:-v1}"), "OTHER=1\n", {}, "not set in an env file"),
        (APP.replace("image: reg/app:${APP_TAG}", "image: *app"), "APP_TAG=v1\n", {}, "no image: line"),
    ],
)
def test_what_the_files_cannot_pin_exactly_is_named_and_left_as_it_is(compose, env, environ, why):
    services = {"app": svc("reg/app:v1"), "db": svc("postgres:16", B)}
    if "reg/side" in compose:
        services["db"] = svc("reg/side:v1", B)
    rel, contents = release(compose, env, services)
    plan = plan_pins(rel, contents, environ=environ, keep={"db"})
    assert plan.contents == contents and plan.pins == []
    assert [n["service"] for n in plan.not_pinned] == ["app"] and why in plan.not_pinned[0]["why"], plan.not_pinned


def test_kept_digested_and_built_services_need_no_line():
    compose = (
        "services:\n  app:\n    image: reg/app:v1@%s\n  built:\n    image: shop:built\n  db:\n    image: postgres:16\n"
        % A
    )
    services = {"app": svc("reg/app:v1@" + A), "built": svc("shop:built", None), "db": svc("postgres:16", B)}
    rel, contents = release(compose, None, services)
    plan = plan_pins(rel, contents, keep={"db"})
    assert plan.contents == contents, "a line pinned already is left as it is"
    assert plan.pins == [{"services": ["app"], "file": "compose.yml", "line": 3, "how": "image"}]
    assert plan.not_pinned == [{"service": "built", "why": "its image has no registry digest (built on the host)"}]


def test_a_release_recorded_while_pinned_gets_its_pin_back_into_files_that_lost_it():
    rel, contents = release(APP, "APP_TAG=v1\n", {"app": svc("reg/app:v1@" + A)})
    assert plan_pins(rel, contents).contents[".env"] == ("APP_TAG=v1@%s\n" % A).encode()


def test_services_sharing_a_reference_but_not_an_image_are_not_pinned():
    compose = "services:\n  a:\n    image: reg/app:latest\n  b:\n    image: reg/app:latest\n"
    rel, contents = release(compose, None, {"a": svc("reg/app:latest"), "b": svc("reg/app:latest", B)})
    plan = plan_pins(rel, contents)
    assert plan.contents == contents and [n["service"] for n in plan.not_pinned] == ["a", "b"]


def test_pinning_twice_changes_nothing_more():
    rel, contents = release(APP, "APP_TAG=latest\n", {"app": svc("reg/app:latest")})
    once = plan_pins(rel, contents).contents
    pinned_release = dict(rel, services={"app": svc("reg/app:latest@" + A)})
    assert plan_pins(pinned_release, once).contents == once


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("reg/app:${TAG}", "reg/app:v1"),
        ("reg/app:$TAG", "reg/app:v1"),
        ("${REG}/app:${TAG:-x}", "/app:v1"),
        ("reg/app:${NONE:-dflt}", "reg/app:dflt"),
        ("reg/app:${EMPTY-dflt}", "reg/app:"),
        ("reg/app:${EMPTY:-dflt}", "reg/app:dflt"),
        ("reg/app:${TAG:?needed}", "reg/app:v1"),
        ("a$$b", "a$b"),
        ("reg/app:${TAG:+other}", None),
        ("reg/app:${NONE:-${TAG}}", None),
    ],
)
def test_interpolate_reads_compose_s_forms_and_refuses_the_rest(raw, expected):
    assert interpolate(raw, {"TAG": "v1", "EMPTY": ""}) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("reg/app:${TAG}", "TAG"),
        ("reg/app:$TAG", "TAG"),
        ("${IMAGE:-x}", "IMAGE"),
        ("reg/app:v1", None),
        ("a$$TAG", None),
    ],
)
def test_trailing_variable(raw, expected):
    assert trailing_variable(raw) == expected
