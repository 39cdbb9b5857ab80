"""Unit tests of the green copy's rendering (pure: a resolved compose model in, a model out)."""

from __future__ import annotations

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _alternate
from ansible_collections.stackops.rollback.plugins.module_utils._alternate import AlternateError


def model():
    return {
        "name": "shop",
        "services": {
            "db": {
                "image": "pg@sha256:1",
                "volumes": [{"type": "volume", "source": "dbdata", "target": "/var/lib/postgresql/data"}],
                "networks": {"default": None},
            },
            "app": {
                "image": "app@sha256:2",
                "depends_on": {"db": {"condition": "service_healthy"}},
                "ports": [
                    {"mode": "ingress", "host_ip": "127.0.0.1", "target": 8080, "published": "8080", "protocol": "tcp"}
                ],
                "volumes": [{"type": "bind", "source": "/srv/static", "target": "/static", "read_only": True}],
                "networks": {"default": None},
            },
            "worker": {"image": "app@sha256:2", "networks": {"default": None}},
        },
        "networks": {"default": {"name": "shop_default"}},
        "volumes": {"dbdata": {"name": "shop_dbdata"}},
    }


def always_free(port, host_ip=""):
    return True


def test_services_with_named_volumes_stay_single():
    assert _alternate.split_services(model()) == (["app", "worker"], ["db"])


def test_a_service_writing_a_bind_mounted_directory_stays_single_unless_the_directory_is_shareable():
    m = model()
    m["services"]["worker"]["volumes"] = [
        {"type": "bind", "source": "/srv/shop/uploads/", "target": "/uploads"},
        {"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/docker.sock"},
    ]
    assert _alternate.split_services(m) == (["app"], ["db", "worker"])
    assert _alternate.split_services(m, shareable=["/srv/shop/uploads"]) == (["app", "worker"], ["db"])
    with pytest.raises(AlternateError, match="service worker: it mounts directory /srv/shop/uploads, which"):
        _alternate.split_services(m, ["app", "worker"])


def test_green_runs_on_the_project_s_own_files_not_the_staging_folder():
    m = model()
    stage, project = "/var/lib/stackops-rollback/projects/shop/green-src", "/srv/shop"
    m["services"]["app"]["volumes"] = [
        {"type": "bind", "source": stage + "/conf", "target": "/etc/shop", "read_only": True},
        {"type": "bind", "source": "/srv/static", "target": "/static", "read_only": True},
    ]
    m["services"]["app"]["build"] = {"context": stage, "dockerfile": "Dockerfile"}
    m["secrets"] = {"key": {"file": stage + "/secrets/key.txt"}}
    moved = _alternate.rebased(m, stage + "/", project)
    assert [v["source"] for v in moved["services"]["app"]["volumes"]] == ["/srv/shop/conf", "/srv/static"]
    assert moved["services"]["app"]["build"]["context"] == "/srv/shop"
    assert moved["secrets"]["key"]["file"] == "/srv/shop/secrets/key.txt"
    assert m["services"]["app"]["volumes"][0]["source"] == stage + "/conf", "the model given was changed"


def test_duplicating_a_service_with_a_named_volume_is_refused():
    with pytest.raises(AlternateError, match=r"refusing to start a second copy of service db.*dbdata"):
        _alternate.split_services(model(), ["app", "db"])


def test_unknown_duplicable_service_is_named():
    with pytest.raises(AlternateError, match=r"service\(s\) web named as duplicable"):
        _alternate.split_services(model(), ["web"])


def test_container_name_is_refused():
    m = model()
    m["services"]["app"]["container_name"] = "shop-app"
    with pytest.raises(AlternateError, match="container_name shop-app"):
        _alternate.split_services(m, ["app"])


@pytest.mark.parametrize(
    ("offset", "port_map", "expected"),
    [(10000, None, 18080), (None, {8080: 9090}, 9090), (5, {"8080": "8181"}, 8181)],
)
def test_alternate_ports(offset, port_map, expected):
    mapping = _alternate.alternate_ports(model(), ["app", "worker"], offset, port_map, is_free=always_free)
    assert [(m["service"], m["published"], m["alternate"]) for m in mapping] == [("app", 8080, expected)]


def test_busy_alternate_port_is_refused_with_its_number():
    with pytest.raises(AlternateError, match=r"already in use on the host: 127\.0\.0\.1:9090 \(for app:8080\)"):
        _alternate.alternate_ports(model(), ["app"], None, {8080: 9090}, is_free=lambda port, host_ip="": False)


def test_green_listens_on_127_0_0_1_unless_asked_otherwise():
    m = model()
    m["services"]["app"]["ports"][0]["host_ip"] = ""  # published on every interface by the primary
    mapping = _alternate.alternate_ports(m, ["app"], 10000, None, is_free=always_free)
    green = _alternate.alternate_model(m, "shop", "shop-green", ["app"], mapping)
    assert green["services"]["app"]["ports"][0]["host_ip"] == "127.0.0.1"
    kept = _alternate.alternate_ports(m, ["app"], 10000, None, is_free=always_free, address=None)
    green = _alternate.alternate_model(m, "shop", "shop-green", ["app"], kept)
    assert "host_ip" not in green["services"]["app"]["ports"][0], "the operator kept every interface"


@pytest.mark.parametrize(
    ("published", "busy", "expected"),
    [
        ("58965", set(), 58966),  # 68965 is past 65535: the next free port after it, wrapped
        ("8080", {18080}, 18081),  # the offset port is taken
        ("8080", {18080, 18081, 18082}, 18083),
    ],
)
def test_a_taken_or_out_of_range_offset_port_is_replaced_by_a_free_one(published, busy, expected):
    m = model()
    m["services"]["app"]["ports"][0]["published"] = published
    mapping = _alternate.alternate_ports(m, ["app"], 10000, None, is_free=lambda port, host_ip="": port not in busy)
    assert (mapping[0]["alternate"], mapping[0]["chosen"]) == (expected, True)


def test_a_port_map_entry_is_the_operator_s_and_never_replaced():
    with pytest.raises(AlternateError, match="already in use"):
        _alternate.alternate_ports(model(), ["app"], 10000, {8080: 9090}, is_free=lambda port, host_ip="": port != 9090)
    with pytest.raises(AlternateError, match="out of range"):
        _alternate.alternate_ports(model(), ["app"], 10000, {8080: 70000}, is_free=always_free)


def test_no_free_port_at_all_is_refused_with_what_to_do():
    with pytest.raises(AlternateError, match="no free alternate port for app near 18080"):
        _alternate.alternate_ports(model(), ["app"], 10000, None, is_free=lambda port, host_ip="": False)


def test_green_model_joins_the_primary_network_and_drops_single_dependencies():
    m = model()
    mapping = _alternate.alternate_ports(m, ["app", "worker"], 10000, None, is_free=always_free)
    green = _alternate.alternate_model(m, "shop", "shop-green", ["app", "worker"], mapping)
    assert green["name"] == "shop-green"
    assert sorted(green["services"]) == ["app", "worker"]
    assert "depends_on" not in green["services"]["app"]
    assert green["services"]["app"]["ports"][0]["published"] == "18080"
    assert green["networks"] == {"default": {"name": "shop_default", "external": True}}
    assert m["services"]["app"]["ports"][0]["published"] == "8080", "the primary model was changed"


def test_upstreams_of_the_proxied_service():
    mapping = _alternate.alternate_ports(model(), ["app"], 10000, None, is_free=always_free)
    assert _alternate.upstreams(mapping, "app", 8080, "127.0.0.1") == ("127.0.0.1:8080", "127.0.0.1:18080")
    with pytest.raises(AlternateError, match="publishes no port for container port 9000"):
        _alternate.upstreams(mapping, "app", 9000, "127.0.0.1")


def test_port_in_use_is_detected():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert not _alternate.port_is_free(s.getsockname()[1], "127.0.0.1")


class FakeContainer:
    def __init__(self, ports):
        self.attrs = {"NetworkSettings": {"Ports": ports}}


def test_published_ports_reads_every_binding():
    containers = [
        FakeContainer({"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}], "9000/tcp": None}),
        FakeContainer({"53/udp": [{"HostIp": "0.0.0.0", "HostPort": "1053"}, {"HostIp": "::", "HostPort": "1053"}]}),
        FakeContainer({}),
    ]
    assert _alternate.published_ports(containers) == {18080, 1053}
