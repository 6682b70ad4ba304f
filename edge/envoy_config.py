"""Envoy's configuration, generated from the topology (v3 API, static resources).

One listener serves gRPC (HTTP/2) and gRPC-web (HTTP/1.1 and HTTP/2): the ``grpc_web`` filter
translates gRPC-web to gRPC, ``cors`` answers browser pre-flights, ``router`` routes by the gRPC
service in the path to one cluster per service. Each cluster is HTTP/2, health-checked with the
gRPC health protocol and has outlier detection; a service with replicas lists one endpoint each.

Health and reflection calls have the same path on every service, so they are routed by the
``x-livebet-service: <name>`` header; a reflection call without it goes to any service (every
process knows every livebet descriptor).

Routes have no timeout (``timeout: 0s``): WatchOdds, WatchBets and WatchCashOutOffers streams never end
on their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from edge import auth
from mesh import access, contracts
from mesh.topology import ServiceSpec, Topology

SERVICE_HEADER = "x-livebet-service"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/")

_T = "type.googleapis.com/envoy.extensions"


def _cluster(s: ServiceSpec, host: str, dns: str | None = None) -> dict[str, Any]:
    """A service's cluster: its replicas' ports on ``host`` locally; in a cluster (``dns``: the
    namespace), every address of the service's headless DNS name, re-resolved as pods come and go."""
    if dns is None:
        endpoints = [(host, port) for port, _ in s.slots]  # the spare slot too (rolling restarts)
    else:
        endpoints = [(f"{s.name}.{dns}.svc.cluster.local", s.grpc_ports[0])]
    return {
        "name": s.name,
        "type": "STATIC" if dns is None else "STRICT_DNS",
        **({} if dns is None else {"dns_refresh_rate": "5s", "respect_dns_ttl": True}),
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
                        {"endpoint": {"address": {"socket_address": {"address": h, "port_value": port}}}}
                        for h, port in endpoints
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


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per account (per Envoy process) on the calls under ``prefix``, plus one for
    everyone together so a flood of new accounts cannot get round it."""

    prefix: str
    per_second: int
    burst: int
    total_per_second: int


#: Calls that move money are rate limited; watching odds is not (it is one long stream).
RATE_LIMITS = {
    "place_bet": RateLimit("/livebet.betting.v1.BettingService/PlaceBet", 10, 20, 2000),
    "cash_out": RateLimit("/livebet.betting.v1.BettingService/CashOut", 5, 10, 1000),
    "wallet": RateLimit("/livebet.betting.v1.WalletService/", 5, 10, 500),
}
#: Unary calls that may be retried on another replica even after they reached a service: reads,
#: and calls made idempotent by their request_id.
IDEMPOTENT = (
    "/livebet.odds.v1.OddsService/GetOddsSnapshot",
    "/livebet.odds.v1.OddsService/ListLiveMatches",
    "/livebet.feed.v1.FeedService/GetMatchState",
    "/livebet.feed.v1.FeedService/ListMatches",
    "/livebet.betting.v1.BettingService/PlaceBet",
    "/livebet.betting.v1.BettingService/GetBet",
    "/livebet.betting.v1.BettingService/ListBets",
    "/livebet.betting.v1.BettingService/GetCashOutOffer",
    "/livebet.betting.v1.BettingService/CashOut",
    "/livebet.betting.v1.BettingService/SetAutoCashOut",  # sets a value: the same again changes nothing
    "/livebet.betting.v1.WalletService/Deposit",
    "/livebet.betting.v1.WalletService/Withdraw",
    "/livebet.betting.v1.WalletService/GetBalance",
    "/livebet.betting.v1.WalletService/ListTransactions",
    "/livebet.betting.v1.WalletService/GetLimits",
    "/livebet.betting.v1.PlayerAdminService/GetPlayer",
    "/livebet.settlement.v1.SettlementService/GetSettlement",
    "/livebet.settlement.v1.SettlementService/ListSettlements",
)
#: Every other unary call is retried only when it cannot have reached a service.
SAFE_RETRY_ON = "connect-failure,refused-stream,reset-before-request"
IDEMPOTENT_RETRY_ON = SAFE_RETRY_ON + ",unavailable,reset"
STREAMS = (
    "/livebet.odds.v1.OddsService/WatchOdds",
    "/livebet.betting.v1.BettingService/WatchBets",
    "/livebet.betting.v1.BettingService/WatchCashOutOffers",
    "/livebet.feed.v1.FeedService/WatchEvents",
    "/livebet.feed.v1.FeedService/Ingest",
)
JWT_PROVIDER = "livebet"
MAX_REQUEST_HEADERS_KB = 32
MAX_STREAMS_PER_CONNECTION = 100


def _percent(n: int = 100) -> dict[str, Any]:
    return {"default_value": {"numerator": n, "denominator": "HUNDRED"}}


def _rate_limit(name: str, rl: RateLimit) -> dict[str, Any]:
    return {
        "@type": f"{_T}.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": f"rate_limit_{name}",
        "token_bucket": {
            "max_tokens": rl.total_per_second,
            "tokens_per_fill": rl.total_per_second,
            "fill_interval": "1s",
        },
        "filter_enabled": _percent(),
        "filter_enforced": _percent(),
        "rate_limited_as_resource_exhausted": True,
        "max_dynamic_descriptors": 100_000,
        "descriptors": [
            {
                "entries": [{"key": "account"}],  # no value: one bucket per account seen
                "token_bucket": {"max_tokens": rl.burst, "tokens_per_fill": rl.per_second, "fill_interval": "1s"},
            }
        ],
        "rate_limits": [
            {"actions": [{"request_headers": {"header_name": access.ACCOUNT_HEADER, "descriptor_key": "account"}}]}
        ],
    }


def _route(prefix: str, cluster: str, header: str | None = None, exact: bool = False) -> dict[str, Any]:
    match: dict[str, Any] = {"path": prefix} if exact else {"prefix": prefix}
    if header is not None:
        match["headers"] = [{"name": SERVICE_HEADER, "string_match": {"exact": header}}]
    route: dict[str, Any] = {
        "cluster": cluster,
        # No route timeout and no cap from grpc-timeout: streams are never-ending by design.
        "timeout": "0s",
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
    }
    if exact and prefix not in STREAMS:
        route["retry_policy"] = {
            "retry_on": IDEMPOTENT_RETRY_ON if prefix in IDEMPOTENT else SAFE_RETRY_ON,
            "num_retries": 2,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": f"{_T}.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
                }
            ],
            "host_selection_retry_max_attempts": 3,
        }
    out: dict[str, Any] = {"match": match, "route": route}
    for name, rl in RATE_LIMITS.items():
        if prefix.startswith(rl.prefix):
            out["typed_per_filter_config"] = {"envoy.filters.http.local_ratelimit": _rate_limit(name, rl)}
    return out


def _methods(full_service: str) -> list[str]:
    """Every method path of a livebet service, from the contracts."""
    from google.protobuf import descriptor_pool

    contracts.load_all()
    svc = descriptor_pool.Default().FindServiceByName(full_service)
    return [f"/{full_service}/{m.name}" for m in svc.methods]


def _jwt_authn(jwks_path: str) -> dict[str, Any]:
    rules = [
        {"match": {"path" if not p.endswith("/") else "prefix": p}, **({} if lvl == access.PUBLIC else _requires())}
        for p, lvl in access.ordered_rules()
    ]
    return {
        "@type": f"{_T}.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            JWT_PROVIDER: {
                "issuer": auth.ISSUER,
                "audiences": [auth.AUDIENCE],
                "require_expiration": True,
                "clock_skew_seconds": 30,
                "local_jwks": {"filename": jwks_path},
                "forward": False,  # services see the headers below, never the token
                "claim_to_headers": [
                    {"header_name": access.ACCOUNT_HEADER, "claim_name": "sub"},
                    {"header_name": access.ROLES_HEADER, "claim_name": "roles"},
                ],
            }
        },
        "rules": rules,
    }


def _requires() -> dict[str, Any]:
    return {"requires": {"provider_name": JWT_PROVIDER}}


def _rbac() -> dict[str, Any]:
    """Role-only calls need the role (or admin) in the header jwt_authn set; a miss is 403, which
    a gRPC client sees as PERMISSION_DENIED."""
    by_role: dict[str, list[str]] = {}
    for p, lvl in access.ordered_rules():
        if lvl not in (access.PUBLIC, access.ACCOUNT):
            by_role.setdefault(lvl, []).append(p)

    def paths(ps: list[str]) -> dict[str, Any]:
        return {
            "or_rules": {
                "rules": [{"url_path": {"path": {"prefix": p} if p.endswith("/") else {"exact": p}}} for p in ps]
            }
        }

    def has(role: str) -> dict[str, Any]:
        words = "|".join(sorted({role, access.ADMIN}))
        return {
            "header": {
                "name": access.ROLES_HEADER,
                "string_match": {"safe_regex": {"regex": f"(.*[, ])?({words})([, ].*)?"}},
            }
        }

    policies: dict[str, Any] = {
        f"role-{role}": {"permissions": [paths(ps)], "principals": [has(role)]} for role, ps in by_role.items()
    }
    every_role_path = [p for ps in by_role.values() for p in ps]
    policies["open"] = {"permissions": [{"not_rule": paths(every_role_path)}], "principals": [{"any": True}]}
    return {"@type": f"{_T}.filters.http.rbac.v3.RBAC", "rules": {"action": "ALLOW", "policies": policies}}


#: gRPC services offered as REST/JSON too (their RPCs carry ``google.api.http`` annotations)
REST_SERVICES = (
    "livebet.odds.v1.OddsService",
    "livebet.feed.v1.FeedService",
    "livebet.betting.v1.BettingService",
    "livebet.betting.v1.WalletService",
)


def _transcoder(descriptor_path: str) -> dict[str, Any]:
    return {
        "@type": f"{_T}.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        "proto_descriptor": descriptor_path,
        "services": list(REST_SERVICES),
        "print_options": {
            "always_print_primitive_fields": True,
            # server streams: one JSON object a line, flushed as each message arrives
            "stream_newline_delimited": True,
        },
        # a gRPC error becomes its HTTP status with a google.rpc.Status JSON body
        "convert_grpc_status": True,
        "request_validation_options": {"reject_unknown_query_parameters": True},
        "max_request_body_size": 65536,
        "max_response_body_size": 4194304,
    }


#: The web app's files under edge/web, served by Envoy itself: the page and its style as written,
#: the bundle as `make web` builds it (dist/app.js, committed).
WEB_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("dist/app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def _web_routes(web_dir: str) -> list[dict[str, Any]]:
    return [
        {
            "match": {"path": path, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
            "direct_response": {"status": 200, "body": {"filename": f"{web_dir}/{name}"}},
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": ctype}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                {"header": {"key": "cache-control", "value": "no-cache"}},
                {"header": {"key": "x-content-type-options", "value": "nosniff"}},
            ],
        }
        for path, (name, ctype) in WEB_FILES.items()
    ]


#: Where the cluster's Envoy finds its files (mounted from a Secret and ConfigMaps).
CLUSTER_FILES = {
    "jwks": "/etc/livebet/jwks/jwks.json",
    "schema": "/etc/livebet/schema/livebet.binpb",
    "web": "/srv/livebet/web",
}


def build_cluster(t: Topology, namespace: str = "livebet") -> dict[str, Any]:
    """The static Envoy config for Kubernetes: the same edge, listening on every interface, with
    one STRICT_DNS cluster per service (``<service>.<namespace>.svc.cluster.local``)."""
    f = CLUSTER_FILES
    return build(replace(t, host="0.0.0.0"), f["jwks"], f["schema"], f["web"], dns=namespace)


def build(
    t: Topology, jwks_path: str, descriptor_path: str, web_dir: str | None = None, dns: str | None = None
) -> dict[str, Any]:
    """The whole Envoy bootstrap for topology ``t`` (ports must be resolved); ``jwks_path`` is the
    public keys file tokens are checked against, ``descriptor_path`` the contracts' descriptor set
    (``gen/livebet.binpb``) the REST transcoder reads, ``web_dir`` the built web app (if any)."""
    routes: list[dict[str, Any]] = _web_routes(web_dir) if web_dir else []
    for s in t.services:
        routes.append(_route(HEALTH_PREFIX, s.name, s.name))
        routes.extend(_route(p, s.name, s.name) for p in REFLECTION_PREFIXES)
    routes.extend(_route(p, t.services[0].name) for p in REFLECTION_PREFIXES)
    for s in t.services:
        for full in s.grpc_services:
            routes.extend(_route(m, s.name, exact=True) for m in _methods(full))
            routes.append(_route(f"/{full}/", s.name))
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
        # a stream with nothing sent either way for this long is dead (WatchOdds heartbeats every few s)
        "stream_idle_timeout": "300s",
        "request_headers_timeout": "10s",
        "max_request_headers_kb": MAX_REQUEST_HEADERS_KB,
        "common_http_protocol_options": {"idle_timeout": "600s", "headers_with_underscores_action": "REJECT_REQUEST"},
        "http2_protocol_options": {
            "max_concurrent_streams": MAX_STREAMS_PER_CONNECTION,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        # jwt_authn answers a token for another audience with 403; that is still "who are you?",
        # not "you may not": a 403 on a request that has no identity (jwt_authn sets it only for a
        # good token) becomes 401, so gRPC clients get UNAUTHENTICATED. RBAC's 403s keep theirs.
        "local_reply_config": {
            "mappers": [
                {
                    "filter": {
                        "and_filter": {
                            "filters": [
                                {
                                    "status_code_filter": {
                                        "comparison": {
                                            "op": "EQ",
                                            "value": {"default_value": 403, "runtime_key": "edge.unused_403"},
                                        }
                                    }
                                },
                                {
                                    "header_filter": {
                                        "header": {
                                            "name": access.ACCOUNT_HEADER,
                                            "present_match": True,
                                            "invert_match": True,
                                        }
                                    }
                                },
                            ]
                        }
                    },
                    "status_code": 401,
                }
            ]
        },
        "route_config": {
            "name": "livebet",
            "max_direct_response_body_size_bytes": 4 * 1024 * 1024,
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
            # 1. identity headers are the edge's alone: any copy the client sent goes first
            {
                "name": "envoy.filters.http.header_mutation",
                "typed_config": {
                    "@type": f"{_T}.filters.http.header_mutation.v3.HeaderMutation",
                    "mutations": {"request_mutations": [{"remove": h} for h in access.IDENTITY_HEADERS]},
                },
            },
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": f"{_T}.filters.http.cors.v3.Cors"}},
            # REST/JSON calls become gRPC here, so everything after sees a gRPC call
            {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": _transcoder(descriptor_path)},
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": f"{_T}.filters.http.grpc_web.v3.GrpcWeb"},
            },
            # 2. the token, checked where the call needs one; its claims become the identity headers
            {"name": "envoy.filters.http.jwt_authn", "typed_config": _jwt_authn(jwks_path)},
            # 3. roles, 4. rate limits per account (set per route)
            {"name": "envoy.filters.http.rbac", "typed_config": _rbac()},
            {
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": f"{_T}.filters.http.local_ratelimit.v3.LocalRateLimit",
                    "stat_prefix": "rate_limit",
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{_T}.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "node": {"id": "livebet-edge", "cluster": "livebet-edge"},
        # the admin interface never listens beyond the pod or machine
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": t.admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": {"socket_address": {"address": t.host, "port_value": t.edge_port}},
                    "per_connection_buffer_limit_bytes": 1048576,
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [_cluster(s, t.host, dns) for s in t.services],
        },
    }


def render(t: Topology, jwks_path: str, descriptor_path: str, web_dir: str | None = None) -> str:
    return json.dumps(build(t, jwks_path, descriptor_path, web_dir), indent=2) + "\n"


def render_cluster(t: Topology, namespace: str = "livebet") -> str:
    return json.dumps(build_cluster(t, namespace), indent=2) + "\n"
