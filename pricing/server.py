"""The pricing engine process: ``python -m pricing.server`` (one or several replicas).

The FEED stream hashes matches into ``PARTITIONS`` shares (:mod:`feed.adapters.jetstream`); a
replica prices the shares whose lease it holds (:mod:`pricing.leases`), so every match has exactly
one writer at a time and a dead replica's shares are taken over within seconds.

For each share it holds, a replica

1. reads where the share's durable consumer ``pricing-p<k>`` had acknowledged up to (its ack
   floor), then deletes that consumer (which also cuts off a previous holder that lost its lease);
2. rebuilds the share's engine by replaying the share's events up to the floor, without
   publishing, and takes each match's version from Redis when that is higher, so no version ever
   goes backwards; trader actions (:mod:`pricing.trader`) are applied again;
3. creates the consumer again from the floor on (explicit acks, ``AckPolicy.ALL``) and runs the
   engine (:mod:`pricing.live.engine`): each batch's deltas are published on ``odds.<match>`` in
   order (a suspension before its reprice), the latest ``MatchOdds`` and recent deltas written to
   Redis, and only then the batch acknowledged.

Events already published by a holder that died before acknowledging them are priced again by the
next holder: the same prices at a new version, never an older version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from google.protobuf.timestamp_pb2 import Timestamp
from livebet.feed.v1 import event_pb2 as ev
from livebet.odds.v1 import market_pb2, trader_service_pb2_grpc
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError

from feed.adapters.jetstream import (
    PARTITIONS,
    STREAM,
    decode,
    ensure_stream,
    partition_of,
    partition_subjects,
    replay,
)
from mesh import resp, settings, tracing
from mesh.deps import NatsDependency, Readiness, RedisDependency
from mesh.metrics import LATENCY_BUCKETS
from mesh.service import ServiceApp, run
from mesh.tasks import cancel_and_wait
from pricing import checkpoints
from pricing.leases import RENEW_EVERY, Leases, lease_store, plan, settled
from pricing.live import checkpoint, codec
from pricing.live.book import Delta, LiveMatch
from pricing.live.engine import ABANDON_AFTER_MS, RETIRE_AFTER_MS, Engine
from pricing.trader import TraderApi, apply_trader_state, forget, migrate_keys, request_store, trader_store

log = logging.getLogger("pricing")
FIRST_WAIT = 1.0
FETCH = 500
CHECKPOINT_STEP = 8  # matches whose checkpoint state is taken between two turns of the event loop
SWEEP_SECONDS = 30.0
SETTLE_LIMIT = 15.0  # seconds after start after which the engine reports SERVING even if shares still move


def provider_mode_setting() -> frozenset[str]:
    """``LIVEBET_PRICING_PROVIDER_MODE``: comma-separated providers whose matches are priced in
    provider mode (their odds re-margined) rather than by the model; empty by default."""
    return frozenset(p.strip() for p in os.environ.get("LIVEBET_PRICING_PROVIDER_MODE", "").split(",") if p.strip())


def retire_after_setting() -> int:
    """``LIVEBET_PRICING_RETIRE_AFTER_SECONDS``: how long after its last event an ended match is
    forgotten by the engine (its snapshot stays in Redis); 600 by default."""
    return int(settings.seconds(os.environ, "LIVEBET_PRICING_RETIRE_AFTER_SECONDS", RETIRE_AFTER_MS / 1000) * 1000)


def abandon_after_setting() -> int:
    """``LIVEBET_PRICING_ABANDON_AFTER_SECONDS``: how long a match under way (or past its
    kick-off) that nothing is heard of any more is kept before the engine forgets it and it leaves
    the live lists (its snapshot stays in Redis, suspended, for a week); 21600 (6 hours) by default."""
    return int(settings.seconds(os.environ, "LIVEBET_PRICING_ABANDON_AFTER_SECONDS", ABANDON_AFTER_MS / 1000) * 1000)


def warm_up() -> None:
    """Price one made-up match from fixture to a live state, and encode it, before any share is
    taken. The first fit and reprice of a process cost ~200 ms (the margin kernel's compiled code
    is loaded, the fit's optimiser and the encoders run for the first time); with shares rebuilt
    from checkpoints nothing else does it before the first live event, which then waited that long."""
    engine = Engine()
    fixture = ev.FeedEvent(event_id="warm-up", provider="warm-up", match_id="warm-up")
    fixture.fixture_change.fixture.match_id = "warm-up"
    odds = fixture.fixture_change.fixture.pre_match_odds
    odds.home.decimal, odds.draw.decimal, odds.away.decimal = "2.10", "3.40", "3.60"
    live = ev.FeedEvent(event_id="warm-up-1", provider="warm-up", match_id="warm-up")
    live.match_state.state.status, live.match_state.state.clock.minute = ev.MATCH_STATUS_LIVE, 30
    cache, now = codec.MarketCache(), Timestamp()
    now.GetCurrentTime()
    for e in (fixture, live):
        for d in engine.apply(e):
            codec.delta(d, engine.matches[d.match_id], now, 0, cache.update(d))
    codec.snapshot(engine.matches["warm-up"], now, cache)


def durable(k: int) -> str:
    return f"pricing-p{k}"


class Share:
    """One partition of the matches, held by this replica: its engine and what publishes it."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.engine = Engine()
        self.cache = codec.MarketCache()
        self.lock = asyncio.Lock()  # deltas leave in version order whoever causes them
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.sub: Subscription | None = None  # trader requests forwarded by other replicas
        self.swept = 0.0  # when ended matches were last retired (monotonic seconds)
        self.sequence = 0  # the FEED stream sequence the engine has applied everything up to
        self.built = False  # the engine holds exactly the events up to ``sequence`` (checkpoints allowed)
        self.stream = ""  # the FEED stream's life (its creation time) the sequence counts in
        self.checkpointed = 0.0  # when it was last checkpointed (monotonic seconds)

    def retire(
        self, now_ms: int, after_ms: int = RETIRE_AFTER_MS, abandoned_ms: int | None = ABANDON_AFTER_MS
    ) -> list[str]:
        """Forget the matches that ended ``after_ms`` ago or more, and those abandoned
        ``abandoned_ms`` ago (``Engine.retire``): engine and encoded markets."""
        gone = self.engine.retire(now_ms, after_ms, abandoned_ms)
        for match_id in gone:
            self.cache.forget(match_id)
        return gone


LIVE = codec.LIVE_KEY.encode()
LOG_LAST = str(codec.LOG_LENGTH - 1).encode()
ENDED_TTL = str(codec.ENDED_TTL_SECONDS).encode()


@dataclass
class Batch:
    """The Redis writes of one batch of feed events (RESP commands, :func:`mesh.resp.command`),
    sent in one round trip after the deltas."""

    commands: list[bytes] = field(default_factory=list)
    touched: dict[str, LiveMatch] = field(default_factory=dict)


class PricingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        # in play and before it apart: the in-play objective is milliseconds (a goal must suspend
        # and reprice at once); a new round's fixtures come all together, and are priced in turn
        self.event_to_publish = Histogram(
            "livebet_pricing_event_to_publish_seconds",
            "From the feed receiving an event of a match under way (in play or just ended) to the engine"
            " publishing the deltas it caused on NATS.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prematch_to_publish = Histogram(
            "livebet_pricing_prematch_event_to_publish_seconds",
            "The same for an event of a match not yet under way (a fixture, pre-match provider odds).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.events = Counter("livebet_pricing_events_total", "Feed events the engine applied.", registry=registry)
        self.deltas = Counter(
            "livebet_pricing_deltas_published_total", "Odds deltas published, by cause.", ["cause"], registry=registry
        )
        self.shares = Gauge("livebet_pricing_shares_held", "Match shares this replica prices.", registry=registry)
        self.failed = Counter(
            "livebet_pricing_events_failed_total",
            "Feed events the engine could not apply (logged with their id and skipped).",
            registry=registry,
        )
        self.matches = Gauge(
            "livebet_pricing_matches_held", "Matches in this replica's engines (ended ones leave).", registry=registry
        )
        self.abandoned = Counter(
            "livebet_pricing_matches_abandoned_total",
            "Matches forgotten unended: under way (or past their kick-off) and silent for"
            " LIVEBET_PRICING_ABANDON_AFTER_SECONDS; they leave the live lists.",
            registry=registry,
        )
        self.replayed = Counter(
            "livebet_pricing_replayed_events_total",
            "FEED events replayed to rebuild shares (from their checkpoint, else from the stream's start).",
            registry=registry,
        )
        self.checkpoints = Counter(
            "livebet_pricing_checkpoints_total",
            "Share checkpoints written, by outcome.",
            ["outcome"],
            registry=registry,
        )


class Runner:
    def __init__(
        self,
        nats_dep: NatsDependency,
        redis_dep: RedisDependency,
        instance: str,
        provider_mode: frozenset[str] = frozenset(),
        metrics: PricingMetrics | None = None,
    ) -> None:
        self.metrics = metrics or PricingMetrics()
        self.provider_mode = provider_mode
        self.nats_dep = nats_dep
        self.redis_dep = redis_dep  # its pipelined connection (mesh.resp) writes each batch
        self.instance = instance
        self.shares: dict[int, Share] = {}
        self.kv: KeyValue | None = None  # trader state
        self.requests: KeyValue | None = None  # trader calls' answers by request id
        self.retire_after_ms = retire_after_setting()
        self.abandon_after_ms = abandon_after_setting()
        self.sweep_seconds = min(SWEEP_SECONDS, max(0.5, self.retire_after_ms / 2000))
        self.checkpoints: ObjectStore | None = None  # set at start unless off (every rebuild replays it all)
        self.checkpoint_seconds = checkpoints.every_setting()

    def apply(self, share: Share, e: ev.FeedEvent, defer: bool = False) -> list[Delta]:
        """The share's engine on one event (``defer``: see ``Engine.apply``). An event the engine
        fails on is logged with its id, counted and skipped: one bad event must not stop the
        share's other matches (left to fail, it would stop the share, and again at every rebuild,
        since it is replayed)."""
        try:
            return share.engine.apply(e, defer)
        except Exception as err:
            self.skipped(share, "feed event", err, event_id=e.event_id, match_id=e.match_id)
            return []

    def skipped(self, share: Share, what: str, err: Exception, **ids: str) -> None:
        """Work the engine failed on (an event, a deferred reprice): logged, counted, skipped."""
        self.metrics.failed.inc()
        log.error(f"{what} skipped: the engine failed on it", exc_info=err, extra={**ids, "partition": share.k})

    def local(self, match_id: str) -> Share | None:
        """The share holding ``match_id`` if this replica prices it and has rebuilt it."""
        share = self.shares.get(partition_of(match_id))
        return share if share is not None and share.ready.is_set() else None

    async def publish(self, share: Share, deltas: list[Delta], received_ms: dict[str, int] | None = None) -> None:
        """Publish deltas on NATS in order, then the snapshots and the delta log in Redis."""
        if not deltas:
            return
        batch = Batch()
        await self.send(share, deltas, received_ms or {}, batch)
        await self.store(share, batch)

    async def send(self, share: Share, deltas: list[Delta], received_ms: dict[str, int], batch: Batch) -> None:
        """Publish deltas on NATS at once, in order; their Redis writes wait in ``batch``."""
        now = Timestamp()
        now.GetCurrentTime()
        nc, commands = self.nats_dep.nc, batch.commands
        headers = tracing.inject({}) or None
        for d in deltas:
            m = share.engine.matches[d.match_id]
            received = received_ms.get(d.match_id, 0)
            data = codec.delta(d, m, now, received, share.cache.update(d))
            await nc.publish(codec.subject(d.match_id), data, headers=headers)
            self.metrics.deltas.labels(d.cause or "none").inc()
            if received:
                took = max(0.0, time.time() - received / 1000)
                (self.metrics.event_to_publish if m.live or m.ended else self.metrics.prematch_to_publish).observe(took)
            log_key = (codec.LOG_KEY + d.match_id).encode()
            commands.append(resp.command(b"LPUSH", log_key, data))
            commands.append(resp.command(b"LTRIM", log_key, b"0", LOG_LAST))
            batch.touched[d.match_id] = m

    async def store(self, share: Share, batch: Batch) -> None:
        """Each touched match's snapshot (once per batch, however many deltas it had) and the
        delta log, in one Redis round trip."""
        if not batch.touched:
            return
        now = Timestamp()
        now.GetCurrentTime()
        commands = batch.commands
        for match_id, m in batch.touched.items():
            mid, snap_key = match_id.encode(), (codec.SNAP_KEY + match_id).encode()
            commands.append(resp.command(b"SET", snap_key, codec.snapshot(m, now, share.cache)))
            if m.ended:  # its snapshot stays a while (by id); lists and "every match" streams leave it
                commands.append(resp.command(b"ZREM", LIVE, mid))
                commands.append(resp.command(b"EXPIRE", snap_key, ENDED_TTL))
                commands.append(resp.command(b"EXPIRE", (codec.LOG_KEY + match_id).encode(), ENDED_TTL))
            else:
                commands.append(resp.command(b"ZADD", LIVE, str(int(time.time() * 1000)).encode(), mid))
        await self.redis_dep.pipelined.execute(commands)

    async def price_batch(self, share: Share, msgs: list[Msg], batch: Batch) -> None:
        """Each event's deltas leave as soon as it is priced (the NATS client sends them when the
        loop next runs); a reprice that only moves prices waits for the end of the batch and is
        done once per match (``Engine.apply(defer=True)``), carrying the feed time of the
        earliest event it covers."""
        engine = share.engine
        waiting: dict[str, int] = {}  # match id -> feed time (ms) of the first event its deferred reprice covers
        for msg in msgs:
            decoded = decode(msg.data, msg.metadata.sequence.stream)
            if decoded is None:
                self.metrics.failed.inc()
                continue
            e = decoded
            await self.remember_version(share, e)
            deltas = self.apply(share, e, defer=True)
            received = e.received_at.ToMilliseconds() if e.HasField("received_at") else 0
            if e.match_id in engine.deferred:
                waiting.setdefault(e.match_id, received)
            elif e.match_id in waiting:  # this event's reprice did the deferred one's work
                received = waiting.pop(e.match_id) or received
            if deltas:
                await self.send(share, deltas, {e.match_id: received} if e.match_id else {}, batch)
                await asyncio.sleep(0)

        # each match's deferred reprice leaves as soon as it is done, not after every match's
        def failed(match_id: str, err: Exception) -> None:
            self.skipped(share, "deferred reprice", err, match_id=match_id)

        for d in engine.flush_each(failed):
            await self.send(share, [d], waiting, batch)
            await asyncio.sleep(0)

    async def rebuild(self, share: Share) -> tuple[int, int]:
        """Rebuild the share's engine up to its consumer's ack floor (nothing published): from its
        last checkpoint and the events after it, else from the whole stream; returns (events
        replayed, the sequence to consume after)."""
        js = self.nats_dep.js
        try:
            info = await js.consumer_info(STREAM, durable(share.k))
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            await js.delete_consumer(STREAM, durable(share.k))
        except nats.js.errors.NotFoundError:
            floor = 0
        share.built = False
        engine, start = None, 0
        if self.checkpoints is not None:  # checkpoints count in the stream's life: its creation time
            share.stream = str((await js.stream_info(STREAM)).created)
            engine, start = await checkpoints.load(self.checkpoints, share.k, self.provider_mode, share.stream)
        share.engine = engine if engine is not None else Engine(self.provider_mode)
        # a checkpoint past the floor (taken before the last acknowledgement reached the server)
        # holds those events already: consume after it, or they would be applied twice
        floor = max(floor, start)
        count = await replay(js, floor, lambda e: self.apply(share, e), partition_subjects(share.k), after=start)
        self.metrics.replayed.inc(count)
        for m, version in zip(
            share.engine.matches.values(), await self.stored_versions(list(share.engine.matches)), strict=True
        ):
            m.version = max(m.version, version)
        share.cache = codec.MarketCache()
        # ended a while ago: not worth holding (their trader state went when the sweep of an earlier
        # life retired them; purging it again for every match of a long replay would slow the rebuild)
        share.retire(int(time.time() * 1000), self.retire_after_ms, None)  # abandoned ones: by the sweep
        if self.kv is not None:
            await apply_trader_state(share.engine, self.kv, share.k)
        for m in share.engine.matches.values():
            share.cache.seed(m)
        share.sequence, share.built = floor, True
        share.checkpointed = time.monotonic() + share.k * self.checkpoint_seconds / PARTITIONS  # spread out
        if engine is not None:
            log.info("share rebuilt from its checkpoint", extra={"partition": share.k, "checkpoint_sequence": start})
        return count, floor

    async def checkpoint(self, share: Share, force: bool = False) -> None:
        """Checkpoint the share's engine if it is time (``force``: now). The state is taken under
        the share's lock, between batches, ``CHECKPOINT_STEP`` matches at a time with the loop
        free between steps (all at once, it held the loop for 5-11 ms, and every other share's
        events waited); compressing and storing it happen outside. A failure is logged and
        counted: the next rebuild replays a little more."""
        if self.checkpoints is None or not share.built:
            return
        if not force and time.monotonic() - share.checkpointed < self.checkpoint_seconds:
            return
        share.checkpointed = time.monotonic()
        try:
            async with share.lock:  # nothing changes the share meanwhile; the other shares go on
                engine, parts = share.engine, []
                for i, m in enumerate(list(engine.matches.values()), 1):
                    parts.append(checkpoint.match_state(m))
                    if i % CHECKPOINT_STEP == 0:
                        await asyncio.sleep(0)
                state, sequence = checkpoint.document(engine, parts, share.sequence, share.stream), share.sequence
            size = await checkpoints.save(self.checkpoints, share.k, state)
        except Exception:
            self.metrics.checkpoints.labels("failed").inc()
            log.warning("checkpoint failed", exc_info=True, extra={"partition": share.k})
            return
        self.metrics.checkpoints.labels("saved").inc()
        log.debug("checkpoint saved", extra={"partition": share.k, "sequence": sequence, "bytes": size})

    async def stored_versions(self, match_ids: list[str]) -> list[int]:
        """Each match's version in its Redis snapshot (0 without one), in one round trip."""
        if not match_ids:
            return []
        gets = [resp.command(b"GET", (codec.SNAP_KEY + match_id).encode()) for match_id in match_ids]
        return [
            market_pb2.MatchOdds.FromString(raw).version if raw else 0
            for raw in await self.redis_dep.pipelined.execute(gets)
        ]

    async def remember_version(self, share: Share, e: ev.FeedEvent) -> None:
        """A fixture for a match the engine does not hold: one it forgot before a restart may be
        sent again, so it carries on from the version in Redis, never from 1 again."""
        engine = share.engine
        if e.match_id in engine.matches or e.match_id in engine.retired or e.WhichOneof("payload") != "fixture_change":
            return
        (version,) = await self.stored_versions([e.match_id])
        if version:
            engine.retired[e.match_id] = (version, int(time.time() * 1000))

    async def forget_trader_state(self, match_ids: list[str]) -> None:
        """Delete the trader state of retired matches (a failure leaves a few bytes behind that
        the share's rebuilds read and ignore)."""
        if self.kv is None or not match_ids:
            return
        try:
            await forget(self.kv, match_ids)
        except (nats.errors.Error, OSError) as err:
            log.warning("trader state of retired matches not deleted", extra={"error": str(err)})

    async def unlist(self, match_ids: list[str]) -> None:
        """Retired matches out of the live lists (``odds:live``), their snapshot and delta log
        kept for ``ENDED_TTL_SECONDS`` (an ended match left them when it ended; an abandoned one,
        still suspended, leaves them here). A failure is logged: the next retirement does not
        repeat it, and a match left listed is one more suspended match in the list."""
        if not match_ids:
            return
        commands = [resp.command(b"ZREM", LIVE, *(m.encode() for m in match_ids))]
        for m in match_ids:
            commands.append(resp.command(b"EXPIRE", (codec.SNAP_KEY + m).encode(), ENDED_TTL))
            commands.append(resp.command(b"EXPIRE", (codec.LOG_KEY + m).encode(), ENDED_TTL))
        try:
            await self.redis_dep.pipelined.execute(commands)
        except RedisError as err:
            log.warning("retired matches not taken off the live lists", extra={"error": str(err)})

    async def sweep(self, share: Share) -> None:
        """Retire ended and abandoned matches, at most every ``sweep_seconds``."""
        if time.monotonic() - share.swept < self.sweep_seconds:
            return
        share.swept = time.monotonic()
        async with share.lock:
            now = int(time.time() * 1000)
            unended = [k for k, m in share.engine.matches.items() if not m.ended]
            await self.publish(share, share.engine.abandon(now, self.abandon_after_ms))
            gone = share.retire(now, self.retire_after_ms, self.abandon_after_ms)
        if gone:
            dropped = sorted(set(gone) & set(unended))
            log.info(
                "matches retired (ended, or abandoned by their provider)",
                extra={"partition": share.k, "matches": len(gone), "abandoned": dropped[:20]},
            )
            self.metrics.abandoned.inc(len(dropped))
            await self.unlist(gone)
            await self.forget_trader_state(gone)
        self.metrics.matches.set(sum(len(s.engine.matches) for s in self.shares.values()))

    async def run_share(self, share: Share, trader: TraderApi) -> None:
        js, nc = self.nats_dep.js, self.nats_dep.nc
        async with share.lock:
            replayed, floor = await self.rebuild(share)
        config = ConsumerConfig(
            durable_name=durable(share.k),
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=floor + 1,
            max_ack_pending=20_000,
            max_deliver=20,
            ack_wait=30,
            filter_subjects=partition_subjects(share.k),
            deliver_subject=nc.new_inbox(),
        )
        # A push consumer: messages arrive as soon as they are stored (a pull fetch of a batch waits
        # to fill it). The subscription's callback only queues them, without waiting; the engine
        # takes whatever has arrived, up to FETCH, as one batch. (Taking them one ``next_msg`` at a
        # time cost an event-loop round each: under load the shares with the most waiting fell
        # further behind while they gathered their batch, seconds at 1,000 events/s.)
        inbox: deque[Msg] = deque()
        arrived = asyncio.Event()

        async def queue(msg: Msg) -> None:
            inbox.append(msg)
            arrived.set()

        info = await js.add_consumer(STREAM, config)
        sub = await js.subscribe_bind(
            STREAM, info.config, info.name, cb=queue, manual_ack=True, pending_msgs_limit=100_000
        )
        share.sub = await nc.subscribe(f"pricing.trader.{share.k}", cb=trader.on_forwarded)
        share.ready.set()
        log.info(
            "share taken",
            extra={"partition": share.k, "replayed_events": replayed, "matches": len(share.engine.matches)},
        )
        try:
            while True:
                await self.sweep(share)
                if not inbox:
                    arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(arrived.wait(), FIRST_WAIT)
                    continue
                msgs = [inbox.popleft() for _ in range(min(FETCH, len(inbox)))]
                # one span for the batch: the first traced event's trace goes on, the others are linked
                traced = [c for c in (tracing.extract(m.headers) for m in msgs) if c is not None]
                async with share.lock:
                    parent, links = (traced[0], traced[1:]) if traced else (None, [])
                    # until the batch is done the engine is ahead of share.sequence: a batch that
                    # fails half-way (Redis lost) leaves no checkpoint possible until the rebuild,
                    # which would otherwise apply its events a second time
                    share.built = False
                    with tracing.span("pricing.price", parent, links, events=len(msgs), partition=share.k):
                        # each event's deltas leave as soon as they are priced (the NATS client
                        # sends them when the loop next runs); Redis is written once per batch
                        batch = Batch()
                        await self.price_batch(share, msgs, batch)
                        self.metrics.events.inc(len(msgs))
                        await self.store(share, batch)
                    share.sequence, share.built = msgs[-1].metadata.sequence.stream, True
                await msgs[-1].ack()  # AckPolicy.ALL: everything up to here is done
                await self.checkpoint(share)
        finally:
            share.ready.clear()
            for s in (share.sub, sub):
                if s is not None:
                    with contextlib.suppress(Exception):
                        await s.unsubscribe()


def build(app: ServiceApp) -> None:
    s = app.settings
    nats_dep = app.add_dependency(NatsDependency(s.nats_url, s.instance, s.health_interval_seconds))
    redis_dep = app.add_dependency(RedisDependency(s.redis_url, s.health_interval_seconds))
    ready = app.add_dependency(Readiness("engine"))
    # a lease holder's identity: unique per process, so a restarted replica never mistakes a
    # previous life's leases for its own
    metrics = PricingMetrics(app.metrics.registry)
    runner = Runner(nats_dep, redis_dep, f"{s.instance}-{uuid.uuid4().hex[:8]}", provider_mode_setting(), metrics)
    metrics.shares.set_function(lambda: sum(1 for sh in runner.shares.values() if sh.ready.is_set()))
    trader = TraderApi(runner)
    app.add_service(
        "livebet.odds.v1.TraderService", trader, trader_service_pb2_grpc.add_TraderServiceServicer_to_server
    )

    async def share_task(share: Share) -> None:
        """Price one share until it is given up; after a failure (NATS or Redis lost mid-batch)
        start it again from its consumer's position with a rebuilt engine."""
        delay = 0.2
        while True:
            try:
                await runner.run_share(share, trader)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("share stopped; restarting it", extra={"partition": share.k})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def drop(k: int) -> None:
        share = runner.shares.pop(k, None)
        if share is not None and share.task is not None:
            async with share.lock:  # let a batch in flight finish and be acknowledged
                share.task.cancel()
            await cancel_and_wait(share.task)
            await runner.checkpoint(share, force=True)  # whoever takes it next starts from here

    async def balance(leases: Leases) -> None:
        """Keep our leases alive, take free shares up to a fair part, give back extra ones."""
        settle_by = time.monotonic() + SETTLE_LIMIT
        while True:
            try:
                await leases.heartbeat()
                held = list(runner.shares)  # renewed all at once: the lease round stays short under load
                for k, renewed in zip(held, await asyncio.gather(*(leases.renew(k) for k in held)), strict=True):
                    if not renewed:
                        log.warning("lease lost; share dropped", extra={"partition": k})
                        await drop(k)
                holders, members = await leases.holders(), await leases.members()
                take, give = plan(runner.instance, PARTITIONS, holders, members)
                for k in give:
                    await drop(k)
                    await leases.give(k)
                    log.info("share given back", extra={"partition": k})
                for k in take:
                    if await leases.take(k):
                        share = runner.shares[k] = Share(k)
                        share.task = app.spawn(share_task(share))
                # SERVING once the shares are where they will stay and ours are rebuilt (a rolling
                # update waits for that, and so does `make run` before it starts the simulator: a
                # share handed over meanwhile makes its events wait); then it stays so. A peer that
                # never gives its extra shares back delays it SETTLE_LIMIT at most.
                if (
                    not ready.up
                    and all(sh.ready.is_set() for sh in runner.shares.values())
                    and (settled(runner.instance, PARTITIONS, holders, members) or time.monotonic() > settle_by)
                ):
                    ready.set(True)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease round failed")
            await asyncio.sleep(RENEW_EVERY)

    async def start() -> None:
        await asyncio.to_thread(warm_up)
        await nats_dep.wait_ready()
        await redis_dep.wait_ready()
        js = nats_dep.js
        await ensure_stream(js)
        runner.kv = await trader_store(js)
        runner.requests = await request_store(js)
        moved = await migrate_keys(runner.kv)
        if moved:
            log.info("trader keys of an earlier engine moved", extra={"keys": moved})
        if runner.checkpoint_seconds > 0:
            runner.checkpoints = await checkpoints.store(js)
        leases = Leases(await lease_store(js), js, runner.instance, PARTITIONS)
        task = app.spawn(balance(leases))
        app.spawn(
            app.metrics.watch_consumers(
                lambda: nats_dep.js, STREAM, lambda: [durable(k) for k in runner.shares], app.stopping
            )
        )

        async def stop() -> None:
            await cancel_and_wait(task)
            for k in list(runner.shares):
                await drop(k)
                await leases.give(k)  # hand over at once instead of after the lease expires

        app.on_stop(stop)

    async def on_start() -> None:
        app.spawn(start())

    app.on_start(on_start)


if __name__ == "__main__":
    run("pricing", build)
