"""A service used only by the runtime's tests, built on mesh.service like every real one:
FeedService.WatchEvents streams a message every 20 ms through ``ServiceApp.until_stopping``;
GetMatchState takes one second, to be in flight when SIGTERM arrives. No dependencies.

``TEST_STUCK_STOP`` makes its stop hang the way a faulty library would: ``hook``, a stop hook that
swallows its cancellation; ``thread``, a non-daemon thread stuck in a blocking call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator

import grpc
from livebet.feed.v1 import feed_service_pb2, feed_service_pb2_grpc

from mesh.service import ServiceApp, run


class StreamingFeed(feed_service_pb2_grpc.FeedServiceServicer):
    def __init__(self, app: ServiceApp) -> None:
        self.app = app

    async def WatchEvents(
        self, request: feed_service_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[feed_service_pb2.WatchEventsResponse]:
        async def ticks() -> AsyncIterator[feed_service_pb2.WatchEventsResponse]:
            n = 0
            while True:
                n += 1
                yield feed_service_pb2.WatchEventsResponse(stream_sequence=n)
                await asyncio.sleep(0.02)

        async for item in self.app.until_stopping(ticks()):
            yield item

    async def GetMatchState(
        self, request: feed_service_pb2.GetMatchStateRequest, context: grpc.aio.ServicerContext
    ) -> feed_service_pb2.GetMatchStateResponse:
        await asyncio.sleep(1.0)
        return feed_service_pb2.GetMatchStateResponse(sequence=7)


async def swallows_cancellation() -> None:
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


def build(app: ServiceApp) -> None:
    api = StreamingFeed(app)
    app.add_service("livebet.feed.v1.FeedService", api, feed_service_pb2_grpc.add_FeedServiceServicer_to_server)
    stuck = os.environ.get("TEST_STUCK_STOP", "")
    if stuck == "hook":
        app.on_stop(swallows_cancellation)
    elif stuck == "thread":
        threading.Thread(target=time.sleep, args=(3600,), name="blocked", daemon=False).start()


if __name__ == "__main__":
    run("teststream", build)
