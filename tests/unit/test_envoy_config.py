from pathlib import Path
from typing import Any

from edge import envoy_config as envoy
from mesh import topology


def _config() -> dict[str, Any]:
    return envoy.build(topology.load(), "/keys/jwks.json", "/gen/livebet.binpb")


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def test_every_grpc_service_is_routed_to_its_cluster_without_a_route_timeout() -> None:
    routes = _hcm(_config())["route_config"]["virtual_hosts"][0]["routes"]
    by_prefix = {
        r["match"]["prefix"]: r["route"] for r in routes if "prefix" in r["match"] and "headers" not in r["match"]
    }
    for s in topology.load().services:
        for full in s.grpc_services:
            route = by_prefix[f"/{full}/"]
            assert route["cluster"] == s.name
            assert route["timeout"] == "0s"


def test_health_is_routed_by_the_service_header() -> None:
    routes = _hcm(_config())["route_config"]["virtual_hosts"][0]["routes"]
    health = [r for r in routes if r["match"].get("prefix") == envoy.HEALTH_PREFIX]
    assert {r["match"]["headers"][0]["string_match"]["exact"] for r in health} == {
        s.name for s in topology.load().services
    }
    assert all(r["match"]["headers"][0]["name"] == envoy.SERVICE_HEADER for r in health)


def test_filters_strip_identity_first_then_authenticate_authorize_limit_route() -> None:
    filters = _hcm(_config())["http_filters"]
    assert [f["typed_config"]["@type"].rsplit(".", 1)[-1] for f in filters] == [
        "HeaderMutation",
        "Cors",
        "GrpcJsonTranscoder",
        "GrpcWeb",
        "JwtAuthentication",
        "RBAC",
        "LocalRateLimit",
        "Router",
    ]
    removed = {m["remove"] for m in filters[0]["typed_config"]["mutations"]["request_mutations"]}
    assert removed == {"x-livebet-account", "x-livebet-roles"}


def test_jwt_is_required_exactly_where_the_access_table_says() -> None:
    jwt = next(f for f in _hcm(_config())["http_filters"] if f["name"] == "envoy.filters.http.jwt_authn")
    provider = jwt["typed_config"]["providers"][envoy.JWT_PROVIDER]
    assert provider["require_expiration"] is True
    assert provider["issuer"] and provider["audiences"]
    assert provider["local_jwks"] == {"filename": "/keys/jwks.json"}
    required = {next(iter(r["match"].values())) for r in jwt["typed_config"]["rules"] if "requires" in r}
    assert "/livebet.betting.v1.BettingService/" in required
    assert "/livebet.odds.v1.TraderService/" in required
    assert "/livebet.feed.v1.FeedService/PublishBatch" in required
    assert "/livebet.odds.v1.OddsService/" not in required
    # first match wins: a method's own rule comes before its service's
    paths = [next(iter(r["match"].values())) for r in jwt["typed_config"]["rules"]]
    assert paths.index("/livebet.feed.v1.FeedService/PublishBatch") < paths.index("/livebet.feed.v1.FeedService/")


def test_money_routes_are_rate_limited_per_account_and_streams_are_not_retried() -> None:
    routes = _hcm(_config())["route_config"]["virtual_hosts"][0]["routes"]
    by_path = {r["match"].get("path"): r for r in routes if "path" in r["match"]}
    place = by_path["/livebet.betting.v1.BettingService/PlaceBet"]
    limit = place["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    assert limit["rate_limited_as_resource_exhausted"] is True
    assert limit["descriptors"][0]["entries"] == [{"key": "account"}]
    assert "unavailable" in place["route"]["retry_policy"]["retry_on"]  # idempotent by request_id
    assert "retry_policy" not in by_path["/livebet.odds.v1.OddsService/WatchOdds"]["route"]
    assert "typed_per_filter_config" not in by_path["/livebet.odds.v1.OddsService/WatchOdds"]
    suspend = by_path["/livebet.odds.v1.TraderService/SuspendMatch"]["route"]["retry_policy"]["retry_on"]
    assert "unavailable" not in suspend and "refused-stream" in suspend


def test_each_cluster_is_http2_health_checked_with_an_endpoint_per_replica_and_a_spare() -> None:
    t = topology.load()
    for cluster in _config()["static_resources"]["clusters"]:
        s = t.service(cluster["name"])
        endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints]
        assert ports == [*s.grpc_ports, s.spare_port]  # the spare: where a rolling restart starts the new one
        assert "grpc_health_check" in cluster["health_checks"][0]
        assert "outlier_detection" in cluster
        opts = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in opts["explicit_http_config"]


def test_cors_allows_the_grpc_web_headers_and_exposes_grpc_status() -> None:
    vhost = _hcm(_config())["route_config"]["virtual_hosts"][0]
    policy = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert "x-grpc-web" in policy["allow_headers"]
    assert "grpc-status" in policy["expose_headers"]


def test_the_committed_cluster_config_is_the_generated_one() -> None:
    """edge/envoy-cluster.json is what Kubernetes mounts; regenerate it with
    `python -m mesh envoy-config --cluster > edge/envoy-cluster.json`."""
    committed = (Path(__file__).resolve().parents[2] / "edge" / "envoy-cluster.json").read_text()
    assert committed == envoy.render_cluster(topology.load())


def test_the_cluster_config_finds_services_by_dns_and_listens_on_every_interface() -> None:
    cfg = envoy.build_cluster(topology.load(), "bets-prod")
    listener = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener["address"] == "0.0.0.0"
    assert cfg["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    for cluster in cfg["static_resources"]["clusters"]:
        assert cluster["type"] == "STRICT_DNS"
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]["address"]
        assert address == f"{cluster['name']}.bets-prod.svc.cluster.local"
