"""FeedService over gRPC: protobuf in and out, FeedError → status codes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc
from nats.aio.msg import Msg

from feed.adapters.jetstream import PublishUnavailable, decode
from feed.service import FeedCore, FeedError, IngestResult
from mesh.service import ServiceApp

_CODES = {
    name: getattr(grpc.StatusCode, name)
    for name in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED")
}


class FeedApi(feed_service_pb2_grpc.FeedServiceServicer):
    def __init__(self, core: FeedCore, app: ServiceApp, watch: WatchSource) -> None:
        self.core = core
        self.app = app
        self.watch = watch

    async def _ingest(
        self,
        context: grpc.aio.ServicerContext,
        provider: str,
        events: list[ev.FeedEvent],
        raw: list[fs.RawMessage],
        strict: bool,
    ) -> IngestResult:
        try:
            return await self.core.ingest(provider, events, raw, strict=strict)
        except FeedError as exc:
            await context.abort(_CODES.get(exc.code, grpc.StatusCode.INVALID_ARGUMENT), str(exc))
        except PublishUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; nothing of this batch is acknowledged, retry it")
        raise AssertionError("unreachable")

    async def PublishBatch(
        self, request: fs.PublishBatchRequest, context: grpc.aio.ServicerContext
    ) -> fs.PublishBatchResponse:
        r = await self._ingest(context, request.provider, list(request.events), list(request.raw_messages), True)
        return fs.PublishBatchResponse(
            accepted=r.accepted,
            duplicates=r.duplicates,
            skipped=r.skipped + r.stale,
            last_stream_sequence=r.last_stream_sequence,
        )

    async def Ingest(
        self, request_iterator: AsyncIterator[fs.IngestRequest], context: grpc.aio.ServicerContext
    ) -> fs.IngestResponse:
        total = fs.IngestResponse()
        async for batch in request_iterator:
            r = await self._ingest(context, batch.provider, list(batch.events), list(batch.raw_messages), False)
            total.accepted += r.accepted
            total.duplicates += r.duplicates
            total.skipped += r.skipped + r.stale
        return total

    async def GetMatchState(
        self, request: fs.GetMatchStateRequest, context: grpc.aio.ServicerContext
    ) -> fs.GetMatchStateResponse:
        rec = self.core.matches.get(request.match_id)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no match {request.match_id!r}")
            raise AssertionError("unreachable")
        return fs.GetMatchStateResponse(fixture=rec.fixture, state=rec.state, sequence=rec.sequence)

    async def ListMatches(
        self, request: fs.ListMatchesRequest, context: grpc.aio.ServicerContext
    ) -> fs.ListMatchesResponse:
        try:
            page, token = self.core.list_matches(request.page_size, request.page_token, request.status)
        except FeedError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from exc
        return fs.ListMatchesResponse(
            matches=[fs.MatchSummary(fixture=r.fixture, state=r.state) for r in page], next_page_token=token
        )

    async def WatchEvents(
        self, request: fs.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[fs.WatchEventsResponse]:
        wanted = set(request.match_ids)
        async for seq, e in self.app.until_stopping(self.watch.events(request.after_stream_sequence)):
            if not wanted or e.match_id in wanted:
                yield fs.WatchEventsResponse(event=e, stream_sequence=seq)


class WatchSource:
    """Events as JetStream stores them, for watchers: an ordered consumer per watcher."""

    def __init__(self, js_provider: object, stream: str = "FEED", subject: str = "feed.>") -> None:
        self._js_provider = js_provider
        self.stream = stream
        self.subject = subject

    async def events(self, after: int) -> AsyncIterator[tuple[int, ev.FeedEvent]]:
        from nats.js.api import ConsumerConfig, DeliverPolicy

        js = self._js_provider.js  # type: ignore[attr-defined]
        config = (
            ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
            if after > 0
            else ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        )
        queue: asyncio.Queue[tuple[int, ev.FeedEvent]] = asyncio.Queue(maxsize=10_000)

        async def on_msg(msg: Msg) -> None:
            e = decode(msg.data, msg.metadata.sequence.stream)
            if e is not None:
                await queue.put((msg.metadata.sequence.stream, e))

        sub = await js.subscribe(self.subject, stream=self.stream, ordered_consumer=True, config=config, cb=on_msg)
        try:
            while True:
                yield await queue.get()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
