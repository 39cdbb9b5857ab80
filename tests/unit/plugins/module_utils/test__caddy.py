"""Reading whether a Caddy reload keeps queued connections (net.ipv4.tcp_migrate_req)."""

from __future__ import annotations

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils._caddy import (
    parse_migrate_req,
    queued_connections_warning,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1\n", True), ("0\n", False), ("", None), ("2\n", None), (None, None)],
)
def test_parse_migrate_req(text, expected):
    assert parse_migrate_req(text) is expected


def test_warning_names_the_setting_and_how_to_set_it():
    warning = queued_connections_warning("container caddy")
    assert "container caddy" in warning
    assert "net.ipv4.tcp_migrate_req=0" in warning
    assert "sysctls: {net.ipv4.tcp_migrate_req: 1}" in warning
    assert "sysctl -w net.ipv4.tcp_migrate_req=1" in warning
