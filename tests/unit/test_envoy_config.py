from typing import Any

from edge import envoy_config as envoy
from mesh import topology


def _config() -> dict[str, Any]:
    return envoy.build(topology.load())


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def test_every_grpc_service_is_routed_to_its_cluster_without_a_route_timeout() -> None:
    routes = _hcm(_config())["route_config"]["virtual_hosts"][0]["routes"]
    by_prefix = {r["match"]["prefix"]: r["route"] for r in routes if "headers" not in r["match"]}
    for s in topology.load().services:
        for full in s.grpc_services:
            route = by_prefix[f"/{full}/"]
            assert route["cluster"] == s.name
            assert route["timeout"] == "0s"


def test_health_is_routed_by_the_service_header() -> None:
    routes = _hcm(_config())["route_config"]["virtual_hosts"][0]["routes"]
    health = [r for r in routes if r["match"]["prefix"] == envoy.HEALTH_PREFIX]
    assert {r["match"]["headers"][0]["string_match"]["exact"] for r in health} == {
        s.name for s in topology.load().services
    }
    assert all(r["match"]["headers"][0]["name"] == envoy.SERVICE_HEADER for r in health)


def test_filters_are_grpc_web_cors_router_in_that_order_with_v3_types() -> None:
    filters = _hcm(_config())["http_filters"]
    assert [f["typed_config"]["@type"].rsplit(".", 1)[-1] for f in filters] == ["GrpcWeb", "Cors", "Router"]
    assert filters[0]["typed_config"]["@type"].endswith("filters.http.grpc_web.v3.GrpcWeb")


def test_each_cluster_is_http2_health_checked_with_one_endpoint_per_replica() -> None:
    t = topology.load()
    for cluster in _config()["static_resources"]["clusters"]:
        s = t.service(cluster["name"])
        endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints]
        assert ports == list(s.grpc_ports)
        assert "grpc_health_check" in cluster["health_checks"][0]
        assert "outlier_detection" in cluster
        opts = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in opts["explicit_http_config"]


def test_cors_allows_the_grpc_web_headers_and_exposes_grpc_status() -> None:
    vhost = _hcm(_config())["route_config"]["virtual_hosts"][0]
    policy = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert "x-grpc-web" in policy["allow_headers"]
    assert "grpc-status" in policy["expose_headers"]
