"""Unit tests of the Caddy side: whether a reload keeps queued connections, the admin API's
addresses, the container's view of the Caddyfile, the fetchers, and the switch transaction on a
fake Caddy (write, reload, confirm, put back)."""

from __future__ import annotations

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _caddy, _caddyfile
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


@pytest.mark.parametrize(
    ("admin_url", "address", "config"),
    [
        (None, "localhost:2019", "http://localhost:2019/config/"),
        ("http://127.0.0.1:2999/", "127.0.0.1:2999", "http://127.0.0.1:2999/config/"),
        ("unix//run/caddy-admin.sock", "unix//run/caddy-admin.sock", "unix//run/caddy-admin.sock/config/"),
    ],
)
def test_admin_address_and_config_url(admin_url, address, config):
    assert _caddy.admin_address(admin_url) == address
    assert _caddy.config_url(admin_url) == config


@pytest.mark.parametrize(
    ("mounts", "inner"),
    [
        ([{"Source": "/srv/proxy/Caddyfile", "Destination": "/etc/caddy/Caddyfile"}], "/etc/caddy/Caddyfile"),
        ([{"Source": "/srv/proxy", "Destination": "/etc/caddy/"}], "/etc/caddy/Caddyfile"),
        ([{"Source": "/data", "Destination": "/data"}], None),
    ],
)
def test_where_the_container_sees_the_caddyfile(mounts, inner):
    caddy = _caddy.ContainerCaddy(None, "proxy", "/srv/proxy/Caddyfile")
    if inner:
        assert caddy.mounted_path(mounts) == inner
    else:
        with pytest.raises(_caddy.CaddyError, match="does not mount /srv/proxy/Caddyfile"):
            caddy.mounted_path(mounts)


class ExecEngine:
    """Answers `exec` by the command's first word, as a container with some tools would."""

    def __init__(self, answers):
        self.answers = answers
        self.commands = []

    def exec(self, container, command, user=None, timeout=None):
        self.commands.append(command[0])
        return self.answers.get(command[0], (127, "", 'exec: "%s": executable file not found' % command[0]))


def container_caddy(answers):
    caddy = _caddy.ContainerCaddy(ExecEngine(answers), "proxy", "/srv/proxy/Caddyfile")
    caddy.container = object()
    return caddy


def test_the_admin_api_is_read_with_the_first_fetcher_the_image_has():
    caddy = container_caddy({"curl": (0, '{"apps": {}}', "")})
    assert caddy.running_config() == {"apps": {}}
    assert caddy.engine.commands == ["wget", "wget", "curl"]


def test_a_fetcher_that_answers_an_error_means_the_admin_api_is_unreachable():
    caddy = container_caddy({"wget": (1, "", "wget: can't connect to remote host: Connection refused")})
    with pytest.raises(_caddy.CaddyError, match="unreachable from container proxy"):
        caddy.running_config()


def test_no_fetcher_at_all_says_what_to_install():
    with pytest.raises(_caddy.CaddyError, match="has neither wget nor curl"):
        container_caddy({}).running_config()


class SequenceEngine(ExecEngine):
    """Answers each command's first word from a list, one answer per call (the last repeats)."""

    def exec(self, container, command, user=None, timeout=None):
        self.commands.append(command[0])
        answers = self.answers.get(command[0]) or [(0, "", "")]
        return answers.pop(0) if len(answers) > 1 else answers[0]


def sequenced_caddy(answers):
    caddy = _caddy.ContainerCaddy(SequenceEngine(answers), "proxy", "/srv/proxy/Caddyfile")
    caddy.container = object()
    caddy.inner_path = "/etc/caddy/Caddyfile"
    caddy._put_file = lambda directory, name, data: True
    return caddy


def test_an_exec_that_answers_nothing_is_asked_again_not_taken_for_an_empty_config():
    config = '{"apps": {}}'
    caddy = sequenced_caddy({"caddy": [(0, "", ""), (0, config, "")], "wget": [(0, "", ""), (0, config, "")]})
    assert caddy.adapt("site {\n}\n", 10) == {"apps": {}}
    assert caddy.running_config() == {"apps": {}}
    assert caddy.engine.commands.count("caddy") == 2 and caddy.engine.commands.count("wget") == 2


def test_an_adapt_that_keeps_answering_nothing_is_an_error_not_an_empty_config():
    caddy = sequenced_caddy({"caddy": [(0, "", "")]})
    with pytest.raises(_caddy.CaddyError, match="answered nothing 3 times; nothing was changed"):
        caddy.adapt("site {\n}\n", 10)


def dials_of(text):
    """A stand-in for Caddy's adapter: one reverse_proxy handler per `reverse_proxy` line."""
    handlers = [
        {"handler": "reverse_proxy", "upstreams": [{"dial": d} for d in line.split()[1:]]}
        for line in text.splitlines()
        if line.strip().startswith("reverse_proxy")
    ]
    return {"apps": {"http": {"servers": {"srv0": {"routes": [{"handle": handlers}]}}}}}


class FakeCaddy:
    """A Caddy that runs the file on disk at each reload, unless told to fail or to ignore it."""

    def __init__(self, path, fail_reload=False, ignores_file=False):
        self.path = path
        self.fail_reload = fail_reload
        self.ignores_file = ignores_file
        self.running = dials_of(path.read_text())
        self.reloads = 0

    def describe(self):
        return "fake caddy"

    def preflight(self):
        return self.running

    def adapt(self, text, timeout):
        return dials_of(text)

    def migrates_queued_connections(self):
        return True

    def reload(self, timeout):
        self.reloads += 1
        if self.fail_reload and self.reloads == 1:
            raise _caddy.CaddyError("caddy reload failed: listen tcp :80: bind: address already in use")
        if not self.ignores_file:
            self.running = dials_of(self.path.read_text())

    def running_config(self, timeout=10):
        return self.running


class SwitchModule:
    def __init__(self, path, check_mode=False, reload=True):
        self.params = {
            "caddyfile": str(path),
            "site": ":8000",
            "match": None,
            "upstreams": ["127.0.0.1:18080"],
            "container": None,
            "caddy_binary": "caddy",
            "admin_url": None,
            "reload": reload,
            "reload_timeout": 5,
            "backup": False,
        }
        self.check_mode = check_mode
        self._diff = True
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)


BLUE = ":8000 {\n\treverse_proxy 127.0.0.1:8080\n}\n"
GREEN = ":8000 {\n\treverse_proxy 127.0.0.1:18080\n}\n"


def switch(tmp_path, check_mode=False, reload=True, **caddy):
    path = tmp_path / "Caddyfile"
    path.write_text(BLUE)
    upstream_switch = _caddy.UpstreamSwitch(SwitchModule(path, check_mode, reload), None)
    upstream_switch.caddy = FakeCaddy(path, **caddy)
    return path, upstream_switch


def test_a_switch_writes_reloads_and_confirms(tmp_path):
    path, upstream_switch = switch(tmp_path)
    result = upstream_switch.run()
    assert result["changed"] and result["written"] and result["reloaded"]
    assert result["previous_upstreams"] == ["127.0.0.1:8080"]
    assert path.read_text() == GREEN and upstream_switch.caddy.running == dials_of(GREEN)


def test_a_second_switch_to_the_same_upstreams_changes_nothing(tmp_path):
    path, upstream_switch = switch(tmp_path)
    upstream_switch.run()
    again = _caddy.UpstreamSwitch(SwitchModule(path), None)
    again.caddy = upstream_switch.caddy
    result = again.run()
    assert not result["changed"] and not result["written"] and not result["reloaded"]


def test_check_mode_writes_nothing_and_reloads_nothing(tmp_path):
    path, upstream_switch = switch(tmp_path, check_mode=True)
    result = upstream_switch.run()
    assert result["changed"] and result["written"] and not result["reloaded"]
    assert "127.0.0.1:18080" in result["diff"]["after"]
    assert path.read_text() == BLUE and upstream_switch.caddy.reloads == 0


def test_reload_false_only_writes_the_validated_file(tmp_path):
    path, upstream_switch = switch(tmp_path, reload=False)
    result = upstream_switch.run()
    assert result["written"] and not result["reloaded"] and upstream_switch.caddy.reloads == 0
    assert path.read_text() == GREEN


@pytest.mark.parametrize(
    ("caddy", "reason"),
    [
        ({"fail_reload": True}, "address already in use"),
        ({"ignores_file": True}, "the running Caddy may not read this file"),
    ],
    ids=["reload-fails", "reload-not-confirmed"],
)
def test_a_failed_switch_puts_the_file_and_the_config_back(tmp_path, caddy, reason):
    path, upstream_switch = switch(tmp_path, **caddy)
    with pytest.raises(_caddy.SwitchFailed, match=reason) as info:
        upstream_switch.run()
    assert path.read_text() == BLUE
    assert upstream_switch.caddy.running == dials_of(BLUE)
    assert "the previous Caddyfile is back and Caddy runs it again" in str(info.value)
    assert info.value.result["written"] and not info.value.result["reloaded"]


def test_a_missing_caddyfile_is_named(tmp_path):
    module = SwitchModule(tmp_path / "nowhere" / "Caddyfile")
    with pytest.raises(_caddyfile.CaddyfileError, match="does not exist; set caddyfile"):
        _caddy.UpstreamSwitch(module, None).run()
