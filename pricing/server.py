"""The pricing engine process: ``python -m pricing.server``.

Depends on NATS (feed in, odds out) and Redis (latest odds snapshot). Serves the trader admin API,
answered UNIMPLEMENTED by the generated base servicer until the live-odds issue fills it in.
"""

from __future__ import annotations

from livebet.odds.v1 import trader_service_pb2_grpc

from mesh.deps import NatsDependency, RedisDependency
from mesh.service import ServiceApp, run


def build(app: ServiceApp) -> None:
    app.add_dependency(
        NatsDependency(app.settings.nats_url, app.settings.instance, app.settings.health_interval_seconds)
    )
    app.add_dependency(RedisDependency(app.settings.redis_url, app.settings.health_interval_seconds))
    api = trader_service_pb2_grpc.TraderServiceServicer()
    app.add_service("livebet.odds.v1.TraderService", api, trader_service_pb2_grpc.add_TraderServiceServicer_to_server)


if __name__ == "__main__":
    run("pricing", build)
