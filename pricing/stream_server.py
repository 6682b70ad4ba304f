"""The odds streaming tier: ``python -m pricing.stream_server`` (several replicas behind Envoy).

Fan-out scales apart from computation. Each process holds one NATS subscription on ``odds.>``
and hands every delta to the watchers of its match without ever waiting on them:

- a watcher's deltas queue in order (a suspension and the reprice right after it both reach the
  client); a client that falls ``QUEUE_LIMIT`` deltas behind is **conflated**: per match pending
  deltas merge (the latest price of each market wins), so memory is bounded by matches times
  markets whatever a client does, and the publisher never blocks;
- ``WatchOdds`` registers its watcher *before* reading the Redis snapshots, sends each match's
  image, then only deltas newer than what the client has; a version gap (after conflation or a
  missed message) is healed with a fresh image marked ``resync``;
- ``resume_from`` continues from a client's versions with the deltas Redis still holds, or sends a
  ``resync`` image when they are gone;
- heartbeats when idle; the stream ends cleanly (status OK) when the process shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from livebet.odds.v1 import market_pb2, odds_service_pb2, odds_service_pb2_grpc
from nats.aio.msg import Msg
from prometheus_client import REGISTRY, Counter, Gauge

from mesh import tracing
from mesh.deps import NatsDependency, RedisDependency
from mesh.errors import abort_bad_request
from mesh.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram, Metrics
from mesh.service import ServiceApp, run
from pricing.live import codec
from pricing.markets import CATALOGUE

log = logging.getLogger("odds")
MIN_HEARTBEAT_MS = 500
DEFAULT_HEARTBEAT_MS = 5000


QUEUE_LIMIT = 64
#: merges a stream may take before it is dropped: a stream this far behind holds nothing and costs
#: nothing until its client reads again, then gets a fresh image of each of its matches
MERGE_LIMIT = 256


@dataclass(slots=True)
class Update:
    """A delta on its way to clients: what routing and the version checks need as plain values,
    and its bytes as the engine published them (None once merged). Every stream sends those bytes
    as they are, framed as a WatchOddsResponse, instead of copying and serialising the message
    once per client; the whole ``OddsDelta`` is parsed only when a stream needs its markets
    (conflation, a market filter)."""

    match_id: str
    version: int
    previous_version: int
    received_s: float = 0.0  # when the feed received the causing event (0: unknown)
    raw: bytes | None = None
    _delta: market_pb2.OddsDelta | None = None
    _frame: bytes | None = None

    @classmethod
    def of_bytes(cls, data: bytes) -> Update:
        """From a published delta's bytes, reading only its head (``codec.DeltaHead``)."""
        return cls._of(codec.DeltaHead.FromString(data), data, None)

    @classmethod
    def of(cls, d: market_pb2.OddsDelta) -> Update:
        return cls._of(d, None, d)

    @classmethod
    def _of(cls, head: Any, raw: bytes | None, delta: market_pb2.OddsDelta | None) -> Update:
        """``head``: an ``OddsDelta`` or its ``codec.DeltaHead`` (the same fields)."""
        received = head.feed_received_at.ToMilliseconds() / 1000 if head.HasField("feed_received_at") else 0.0
        return cls(head.match_id, head.version, head.previous_version, received, raw, delta)

    @property
    def delta(self) -> market_pb2.OddsDelta:
        if self._delta is None:
            assert self.raw is not None
            self._delta = market_pb2.OddsDelta.FromString(self.raw)
        return self._delta

    def frame(self) -> bytes:
        """The serialised ``WatchOddsResponse(delta=...)``: field 2, length-delimited; built once,
        sent to every stream of the match."""
        if self._frame is None:
            raw = self.raw if self.raw is not None else self.delta.SerializeToString()
            self._frame = codec.length_delimited(_DELTA_FIELD, raw)
        return self._frame


_DELTA_FIELD = odds_service_pb2.WatchOddsResponse.DELTA_FIELD_NUMBER


def serialize_watch(response: odds_service_pb2.WatchOddsResponse | bytes) -> bytes:
    """WatchOdds' response serializer: pre-framed bytes go out as they are."""
    return response if isinstance(response, bytes) else response.SerializeToString()


@dataclass(eq=False)  # identity: each stream is its own watcher
class Watcher:
    """One client stream. Deltas queue in order (a suspension and the reprice after it both
    reach the client); when the queue is full the watcher **conflates** instead: per match the
    pending deltas merge and the newest version of each market wins, so memory stays bounded by
    matches times markets whatever the client does, and the publisher never waits."""

    matches: set[str]  # empty: every match
    always_conflate: bool = False  # the client asked for a conflation interval
    on_conflate: Callable[[], None] = lambda: None
    heartbeat: float = DEFAULT_HEARTBEAT_MS / 1000  # seconds without a send before a heartbeat
    queue: deque[Update] = field(default_factory=deque)
    merged: dict[str, Update] = field(default_factory=dict)
    #: what the stream waits on (resolved by ``wake``): one future per wait, no timer
    waiter: asyncio.Future[None] | None = None
    woken: bool = False
    last_send: float = field(default_factory=time.monotonic)
    heartbeat_due: bool = False
    conflated: int = 0
    merges_since_take: int = 0
    #: set when the stream fell so far behind that its pending updates were dropped: the next
    #: take() is empty and the stream sends fresh images (resync) instead
    dropped: bool = False
    on_drop: Callable[[], None] = lambda: None

    def offer(self, u: Update) -> None:
        if self.dropped or (self.matches and u.match_id not in self.matches):
            return
        if self.merges_since_take >= MERGE_LIMIT:  # hopelessly behind: let go of everything
            self.queue.clear()
            self.merged.clear()
            self.dropped = True
            self.on_drop()
            self.wake()
            return
        if not self.merged and len(self.queue) < QUEUE_LIMIT and not self.always_conflate:
            self.queue.append(u)
        else:  # behind: conflate everything pending
            while self.queue:
                self._merge(self.queue.popleft())
            self._merge(u)
        self.wake()

    def wake(self) -> None:
        self.woken = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        """Until woken (a delta, a drop, a heartbeat due or shutdown), at once if it already was."""
        if not self.woken:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        self.woken = False

    def _merge(self, u: Update) -> None:
        entry = self.merged.get(u.match_id)
        if entry is None:
            self.merged[u.match_id] = u
            return
        d, held = u.delta, entry.delta
        merged = market_pb2.OddsDelta()
        merged.CopyFrom(d)
        merged.previous_version = held.previous_version  # the gap check needs the oldest start
        by_key = {m.ref.market_key: m for m in held.markets}
        by_key.update({m.ref.market_key: m for m in d.markets})
        del merged.markets[:]
        merged.markets.extend(by_key.values())
        self.merged[u.match_id] = Update.of(merged)
        self.conflated += 1
        self.merges_since_take += 1
        self.on_conflate()

    def take(self) -> list[Update]:
        """Everything pending, in the order to send."""
        out = list(self.queue) + list(self.merged.values())
        self.queue.clear()
        self.merged.clear()
        self.merges_since_take = 0
        return out


def _only(item: odds_service_pb2.WatchOddsResponse, types: set[str]) -> odds_service_pb2.WatchOddsResponse:
    """The message with only the markets of the requested types."""
    out = odds_service_pb2.WatchOddsResponse()
    out.CopyFrom(item)
    body = out.image if out.WhichOneof("message") == "image" else out.delta
    keep = [m for m in body.markets if m.ref.market_type in types]
    del body.markets[:]
    body.markets.extend(keep)
    return out


def _text(member: object) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)


class Hub:
    """The process's one subscription on ``odds.>``, dispatching to watchers: a delta goes to the
    watchers of its match and to those of every match, never past the others."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.watchers: set[Watcher] = set()
        self._by_match: dict[str, set[Watcher]] = {}
        self._of_all: set[Watcher] = set()
        registry = metrics.registry if metrics else None
        self.subscribers = Gauge("livebet_odds_subscribers", "Open WatchOdds streams.", registry=registry)
        self.conflations = Counter(
            "livebet_odds_conflations_total",
            "Deltas merged into a pending one for a client that fell behind.",
            registry=registry,
        )
        # counted and timed per message sent: lock-free (see mesh.metrics.LoopCounter)
        self.delivered = LoopCounter(
            "livebet_odds_updates_sent_total", "Images and deltas sent to clients.", registry or REGISTRY
        )
        self.drops = Counter(
            "livebet_odds_stream_drops_total",
            "Streams that fell so far behind that their pending updates were dropped (they resync).",
            registry=registry,
        )
        self.queued = Gauge(
            "livebet_odds_queued_deltas", "Deltas waiting to be sent, over every stream.", registry=registry
        )
        self.queued.set_function(lambda: sum(len(w.queue) + len(w.merged) for w in self.watchers))
        self.deepest = Gauge(
            "livebet_odds_queue_depth_max", "Deltas waiting in the stream furthest behind.", registry=registry
        )
        self.deepest.set_function(lambda: max((len(w.queue) + len(w.merged) for w in self.watchers), default=0))
        self.feed_to_send = LoopHistogram(
            "livebet_odds_feed_to_send_seconds",
            "From the feed receiving an event to this process sending a client the update it caused.",
            LATENCY_BUCKETS,
            registry or REGISTRY,
        )

    def add(self, w: Watcher) -> None:
        self.watchers.add(w)
        if not w.matches:
            self._of_all.add(w)
        for match_id in w.matches:
            self._by_match.setdefault(match_id, set()).add(w)

    def remove(self, w: Watcher) -> None:
        self.watchers.discard(w)
        self._of_all.discard(w)
        for match_id in w.matches:
            watching = self._by_match.get(match_id)
            if watching is not None:
                watching.discard(w)
                if not watching:
                    del self._by_match[match_id]

    def _targets(self, match_id: str) -> list[Watcher]:
        return [*self._by_match.get(match_id, ()), *self._of_all]

    async def on_msg(self, msg: Msg) -> None:
        u = Update.of_bytes(msg.data)
        targets = self._targets(u.match_id)
        parent = tracing.extract(msg.headers)
        if parent is None:
            for w in targets:
                w.offer(u)
            return
        with tracing.span("odds.fanout", parent, match_id=u.match_id, version=u.version, streams=len(targets)):
            for w in targets:
                w.offer(u)

    def wake_all(self) -> None:
        for w in list(self.watchers):
            w.wake()

    async def heartbeats(self, every: float = MIN_HEARTBEAT_MS / 2000) -> None:
        """Wake the streams that have sent nothing for their heartbeat interval (one timer for the
        process instead of one per stream and wait)."""
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for w in list(self.watchers):
                if now - w.last_send >= w.heartbeat:
                    w.heartbeat_due = True
                    w.wake()


MAX_WATCHED = 500  # match ids one stream may name (none: every match)
#: versions a stream may resume from: a client watching every match (the web app) sends one per
#: match it has seen, and those the stream does not carry cost nothing
MAX_RESUME = 10_000
MAX_ID = 128
MAX_CONFLATION_MS = 60_000
MARKET_TYPES = frozenset(spec.market_type for spec in CATALOGUE)


def watch_violations(request: odds_service_pb2.WatchOddsRequest) -> list[tuple[str, str]]:
    """What is wrong with a WatchOdds request, as (field, description); empty when nothing."""
    bad: list[tuple[str, str]] = []
    if len(request.match_ids) > MAX_WATCHED:
        bad.append(("match_ids", f"at most {MAX_WATCHED} matches a stream (none: every match)"))
    if any(not m or len(m) > MAX_ID for m in request.match_ids):
        bad.append(("match_ids", f"a match id is empty or longer than {MAX_ID} characters"))
    if len(request.resume_from) > MAX_RESUME:
        bad.append(("resume_from", f"at most {MAX_RESUME} matches"))
    named = set(request.match_ids)
    if named and any(m not in named for m in request.resume_from):
        bad.append(("resume_from", "names a match that match_ids does not"))
    unknown = sorted(set(request.market_types) - MARKET_TYPES)
    if unknown:
        shown = ", ".join(repr(t[:40]) for t in unknown[:5])
        bad.append(("market_types", f"unknown market type(s) {shown}; known: {', '.join(sorted(MARKET_TYPES))}"))
    if request.conflation_interval_ms > MAX_CONFLATION_MS:
        bad.append(("conflation_interval_ms", f"at most {MAX_CONFLATION_MS} (0: every delta as it comes)"))
    return bad


class OddsApi(odds_service_pb2_grpc.OddsServiceServicer):
    def __init__(self, app: ServiceApp, hub: Hub, redis: RedisDependency) -> None:
        self.app = app
        self.hub = hub
        self.redis = redis

    async def _snapshot(self, match_id: str) -> market_pb2.MatchOdds | None:
        raw = await self.redis.client.get(codec.SNAP_KEY + match_id)
        return market_pb2.MatchOdds.FromString(raw) if raw else None

    async def _log_since(self, match_id: str, version: int) -> list[market_pb2.OddsDelta] | None:
        """The deltas after ``version``, oldest first, or None when Redis no longer has them all."""
        raw = await self.redis.client.lrange(codec.LOG_KEY + match_id, 0, codec.LOG_LENGTH - 1)
        deltas = [market_pb2.OddsDelta.FromString(r) for r in reversed(raw)]
        if not deltas or version > deltas[-1].version:
            return None  # nothing kept, or a version this server never published (state lost)
        newer = [d for d in deltas if d.version > version]
        if not newer:
            return []
        if newer[0].previous_version != version:
            return None
        return newer

    async def GetOddsSnapshot(
        self, request: odds_service_pb2.GetOddsSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> odds_service_pb2.GetOddsSnapshotResponse:
        if not request.match_id or len(request.match_id) > MAX_ID:
            await abort_bad_request(context, [("match_id", f"is required (at most {MAX_ID} characters)")])
        snap = await self._snapshot(request.match_id)
        if snap is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no prices for match {request.match_id!r}")
            raise AssertionError("unreachable")
        return odds_service_pb2.GetOddsSnapshotResponse(odds=snap)

    async def ListLiveMatches(
        self, request: odds_service_pb2.ListLiveMatchesRequest, context: grpc.aio.ServicerContext
    ) -> odds_service_pb2.ListLiveMatchesResponse:
        size = min(request.page_size or 50, 500)
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size cannot be negative")
        try:
            offset = int(request.page_token or "0")
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one this service issued")
            raise AssertionError("unreachable") from None
        ids = await self.redis.client.zrevrange(codec.LIVE_KEY, offset, offset + size)
        out = odds_service_pb2.ListLiveMatchesResponse()
        for raw_id in ids[:size]:
            snap = await self._snapshot(_text(raw_id))
            if snap is None:
                continue
            open_markets = sum(1 for m in snap.markets if m.status == market_pb2.MARKET_STATUS_OPEN)
            out.matches.append(
                odds_service_pb2.LiveMatch(
                    match_id=snap.match_id,
                    home_team=snap.home_team,
                    away_team=snap.away_team,
                    score=snap.score,
                    minute=snap.minute,
                    version=snap.version,
                    open_markets=open_markets,
                )
            )
        if len(ids) > size:
            out.next_page_token = str(offset + size)
        return out

    async def WatchOdds(
        self, request: odds_service_pb2.WatchOddsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[odds_service_pb2.WatchOddsResponse | bytes]:
        """Images, then deltas as they come, heartbeats when idle: one generator between the queue
        and the transport. The stream ends (status OK) when shutdown starts: the hub wakes every
        stream and the loop returns."""
        bad = watch_violations(request)
        if bad:
            await abort_bad_request(context, bad)
        types = set(request.market_types)
        hub = self.hub
        heartbeat = max(request.heartbeat_interval_ms or DEFAULT_HEARTBEAT_MS, MIN_HEARTBEAT_MS) / 1000.0
        interval = request.conflation_interval_ms / 1000.0
        watcher = Watcher(
            set(request.match_ids), interval > 0, hub.conflations.inc, on_drop=hub.drops.inc, heartbeat=heartbeat
        )

        def image(snap: market_pb2.MatchOdds, resync: bool) -> odds_service_pb2.WatchOddsResponse:
            hub.delivered.inc()
            watcher.last_send = time.monotonic()
            item = odds_service_pb2.WatchOddsResponse(image=snap, resync=resync)
            return _only(item, types) if types else item

        def delta(u: Update) -> odds_service_pb2.WatchOddsResponse | bytes:
            hub.delivered.inc()
            if u.received_s:
                hub.feed_to_send.observe(max(0.0, time.time() - u.received_s))
            return _only(odds_service_pb2.WatchOddsResponse(delta=u.delta), types) if types else u.frame()

        hub.add(watcher)  # subscribed before the snapshots are read: nothing falls between
        hub.subscribers.inc()
        known: dict[str, int] = {}
        try:
            if request.match_ids:
                ids = list(dict.fromkeys(request.match_ids))
            else:
                ids = [_text(x) for x in await self.redis.client.zrevrange(codec.LIVE_KEY, 0, -1)]
            for match_id in ids:
                resume = request.resume_from.get(match_id)
                if resume:
                    deltas = await self._log_since(match_id, resume)
                    if deltas is not None:
                        known[match_id] = resume
                        for d in deltas:
                            known[match_id] = d.version
                            yield delta(Update.of(d))
                        continue
                snap = await self._snapshot(match_id)
                if snap is not None:
                    known[match_id] = snap.version
                    yield image(snap, bool(resume))
            stopping = self.app.stopping
            while not stopping.is_set():
                await watcher.wait()
                if stopping.is_set():
                    return
                if watcher.dropped:  # it fell too far behind: fresh images of what it watches
                    watcher.dropped = False
                    again = list(watcher.matches) if watcher.matches else list(known)
                    for match_id in again:
                        snap = await self._snapshot(match_id)
                        if snap is not None:
                            known[match_id] = snap.version
                            yield image(snap, True)
                    continue
                pending = watcher.take()
                if not pending:
                    # due when the ticker looked, and still nothing sent since
                    if watcher.heartbeat_due and time.monotonic() - watcher.last_send >= watcher.heartbeat:
                        watcher.heartbeat_due = False
                        beat = odds_service_pb2.Heartbeat()
                        beat.server_time.GetCurrentTime()
                        yield odds_service_pb2.WatchOddsResponse(heartbeat=beat)
                        watcher.last_send = time.monotonic()
                    continue
                watcher.heartbeat_due = False
                for u in pending:
                    match_id = u.match_id
                    have = known.get(match_id)
                    if have is not None and u.version <= have:
                        continue  # already in the image or sent
                    if (have is None and u.previous_version != 0) or (have is not None and u.previous_version > have):
                        snap = await self._snapshot(match_id)  # a gap: heal it with a fresh image
                        if snap is not None and snap.version >= u.version:
                            known[match_id] = snap.version
                            yield image(snap, True)
                            continue
                    known[match_id] = u.version
                    yield delta(u)
                watcher.last_send = time.monotonic()
                if interval:
                    await asyncio.sleep(interval)  # what arrives meanwhile merges per match
        finally:
            hub.remove(watcher)
            hub.subscribers.dec()


def add_odds_service(servicer: OddsApi, server: grpc.aio.Server) -> None:
    """The generated registration, with one change: WatchOdds' serializer sends pre-framed deltas
    as they are (``serialize_watch``)."""

    class Recorder:
        handlers: dict[str, grpc.RpcMethodHandler] = {}

        def add_generic_rpc_handlers(self, _: object) -> None:
            pass

        def add_registered_method_handlers(self, _: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
            Recorder.handlers = handlers

    odds_service_pb2_grpc.add_OddsServiceServicer_to_server(servicer, Recorder())
    handlers = dict(Recorder.handlers)
    watch = handlers["WatchOdds"]
    handlers["WatchOdds"] = grpc.unary_stream_rpc_method_handler(
        watch.unary_stream, request_deserializer=watch.request_deserializer, response_serializer=serialize_watch
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("livebet.odds.v1.OddsService", handlers),))
    server.add_registered_method_handlers("livebet.odds.v1.OddsService", handlers)


def build(app: ServiceApp) -> None:
    s = app.settings
    nats_dep = app.add_dependency(NatsDependency(s.nats_url, s.instance, s.health_interval_seconds))
    redis_dep = app.add_dependency(RedisDependency(s.redis_url, s.health_interval_seconds))
    hub = Hub(app.metrics)
    api = OddsApi(app, hub, redis_dep)
    app.add_service("livebet.odds.v1.OddsService", api, add_odds_service)

    async def wake_streams_on_stop() -> None:
        await app.stopping.wait()
        hub.wake_all()  # every WatchOdds stream ends now, with status OK

    async def heartbeats() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await hub.heartbeats()

    async def subscribe() -> None:
        await nats_dep.wait_ready()
        await nats_dep.nc.subscribe(f"{codec.SUBJECT_ROOT}.>", cb=hub.on_msg, pending_msgs_limit=1_000_000)
        log.info("odds stream ready")

    async def on_start() -> None:
        app.spawn(subscribe())
        app.spawn(wake_streams_on_stop())
        app.spawn(heartbeats())

    app.on_start(on_start)


if __name__ == "__main__":
    run("odds", build)
