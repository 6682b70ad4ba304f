"""A service used only by the runtime's tests, built on mesh.service like every real one:
FeedService.WatchEvents streams a message every 20 ms through ``ServiceApp.until_stopping``;
GetMatchState takes one second, to be in flight when SIGTERM arrives. No dependencies."""

from __future__ import annotations

import asyncio
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


def build(app: ServiceApp) -> None:
    api = StreamingFeed(app)
    app.add_service("livebet.feed.v1.FeedService", api, feed_service_pb2_grpc.add_FeedServiceServicer_to_server)


if __name__ == "__main__":
    run("teststream", build)
