"""Test helpers: the project's own process runner and health call (mesh.process)."""

import grpc

from mesh.process import Process as Proc
from mesh.process import health, service_spec, wait_for

__all__ = ["Proc", "health", "service_spec", "wait_for"]


def feed_channel(target: str) -> grpc.Channel:
    """A channel to a service as a feed provider (the role FeedService.Ingest/PublishBatch need)."""
    from mesh import access

    return access.channel(target, "svc:tests", [access.FEED])


def admin_channel(target: str) -> grpc.Channel:
    """A channel to a service as a trader/admin (trader, manual settlement and report APIs)."""
    from mesh import access

    return access.channel(target, "trader:tests", [access.ADMIN])
