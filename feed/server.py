"""The feed service process: ``python -m feed.server``.

Depends on NATS (JetStream). The FeedService business RPCs are answered UNIMPLEMENTED by the
generated base servicer until the feed-ingestion issue fills them in.
"""

from __future__ import annotations

from livebet.feed.v1 import feed_service_pb2_grpc

from mesh.deps import NatsDependency
from mesh.service import ServiceApp, run


def build(app: ServiceApp) -> None:
    app.add_dependency(
        NatsDependency(app.settings.nats_url, app.settings.instance, app.settings.health_interval_seconds)
    )
    api = feed_service_pb2_grpc.FeedServiceServicer()
    app.add_service("livebet.feed.v1.FeedService", api, feed_service_pb2_grpc.add_FeedServiceServicer_to_server)


if __name__ == "__main__":
    run("feed", build)
