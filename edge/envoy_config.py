"""Envoy's configuration, generated from the topology (v3 API, static resources).

One listener serves gRPC (HTTP/2) and gRPC-web (HTTP/1.1 and HTTP/2): the ``grpc_web`` filter
translates gRPC-web to gRPC, ``cors`` answers browser pre-flights, ``router`` routes by the gRPC
service in the path to one cluster per service. Each cluster is HTTP/2, health-checked with the
gRPC health protocol and has outlier detection; a service with replicas lists one endpoint each.

Health and reflection calls have the same path on every service, so they are routed by the
``x-livebet-service: <name>`` header; a reflection call without it goes to any service (every
process knows every livebet descriptor).

Routes have no timeout (``timeout: 0s``): WatchOdds and WatchBets streams never end on their own.
"""

from __future__ import annotations

import json
from typing import Any

from mesh.topology import ServiceSpec, Topology

SERVICE_HEADER = "x-livebet-service"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/")

_T = "type.googleapis.com/envoy.extensions"


def _cluster(s: ServiceSpec, host: str) -> dict[str, Any]:
    return {
        "name": s.name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_T}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {"connection_keepalive": {"interval": "20s", "timeout": "5s"}}
                },
            }
        },
        "load_assignment": {
            "cluster_name": s.name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                        for port in s.grpc_ports
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "1s",
                "no_traffic_interval": "1s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
        "outlier_detection": {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 3,
            "interval": "2s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 50,
        },
    }


def _route(prefix: str, cluster: str, header: str | None = None) -> dict[str, Any]:
    match: dict[str, Any] = {"prefix": prefix}
    if header is not None:
        match["headers"] = [{"name": SERVICE_HEADER, "string_match": {"exact": header}}]
    return {
        "match": match,
        # No route timeout and no cap from grpc-timeout: streams are never-ending by design.
        "route": {
            "cluster": cluster,
            "timeout": "0s",
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
        },
    }


def build(t: Topology) -> dict[str, Any]:
    """The whole Envoy bootstrap for topology ``t`` (ports must be resolved)."""
    routes: list[dict[str, Any]] = []
    for s in t.services:
        routes.append(_route(HEALTH_PREFIX, s.name, s.name))
        routes.extend(_route(p, s.name, s.name) for p in REFLECTION_PREFIXES)
    routes.extend(_route(p, t.services[0].name) for p in REFLECTION_PREFIXES)
    for s in t.services:
        routes.extend(_route(f"/{full}/", s.name) for full in s.grpc_services)

    cors_policy = {
        "@type": f"{_T}.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"prefix": o} for o in t.cors_origins],
        "allow_methods": "GET, PUT, DELETE, POST, OPTIONS",
        "allow_headers": "keep-alive,user-agent,cache-control,content-type,content-transfer-encoding,"
        "x-accept-content-transfer-encoding,x-accept-response-streaming,x-user-agent,x-grpc-web,"
        f"grpc-timeout,authorization,x-request-id,{SERVICE_HEADER},connect-protocol-version",
        "expose_headers": "grpc-status,grpc-message,grpc-status-details-bin,x-request-id",
        "max_age": "1728000",
    }
    hcm = {
        "@type": f"{_T}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "generate_request_id": True,
        "stream_idle_timeout": "300s",
        "common_http_protocol_options": {"idle_timeout": "600s"},
        "http2_protocol_options": {"max_concurrent_streams": 1000},
        "route_config": {
            "name": "livebet",
            "virtual_hosts": [
                {
                    "name": "livebet",
                    "domains": ["*"],
                    "routes": routes,
                    "typed_per_filter_config": {"envoy.filters.http.cors": cors_policy},
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": f"{_T}.filters.http.grpc_web.v3.GrpcWeb"},
            },
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": f"{_T}.filters.http.cors.v3.Cors"}},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{_T}.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "node": {"id": "livebet-edge", "cluster": "livebet-edge"},
        "admin": {"address": {"socket_address": {"address": t.host, "port_value": t.admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": {"socket_address": {"address": t.host, "port_value": t.edge_port}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [_cluster(s, t.host) for s in t.services],
        },
    }


def render(t: Topology) -> str:
    return json.dumps(build(t), indent=2) + "\n"
