"""The odds streaming tier: ``python -m pricing.stream_server`` (several replicas behind Envoy).

Fan-out scales apart from computation: it reads snapshots from Redis and deltas from NATS. Serves
OddsService, answered UNIMPLEMENTED by the generated base servicer until the live-odds issue.
"""

from __future__ import annotations

from livebet.odds.v1 import odds_service_pb2_grpc

from mesh.deps import NatsDependency, RedisDependency
from mesh.service import ServiceApp, run


def build(app: ServiceApp) -> None:
    app.add_dependency(
        NatsDependency(app.settings.nats_url, app.settings.instance, app.settings.health_interval_seconds)
    )
    app.add_dependency(RedisDependency(app.settings.redis_url, app.settings.health_interval_seconds))
    api = odds_service_pb2_grpc.OddsServiceServicer()
    app.add_service("livebet.odds.v1.OddsService", api, odds_service_pb2_grpc.add_OddsServiceServicer_to_server)


if __name__ == "__main__":
    run("odds", build)
