"""The pricing engine process: ``python -m pricing.server``.

Consumes the FEED stream through the durable JetStream consumer ``pricing-engine`` (explicit
acks, acknowledged only after the resulting deltas were published and Redis updated), runs the
engine (:mod:`pricing.live.engine`), publishes each ``OddsDelta`` on ``odds.<match>`` in order (a
suspension before its reprice) and keeps the latest ``MatchOdds`` and the recent deltas in Redis.

On start it rebuilds the engine's state by replaying the stream up to where the durable consumer
stands, without publishing, and takes each match's version from Redis when that is higher, so no
version ever goes backwards across a restart. Trader actions (:mod:`pricing.trader`) are kept in
the NATS key-value bucket ``pricing-trader`` and applied again after the rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats.errors
from google.protobuf.timestamp_pb2 import Timestamp
from livebet.feed.v1 import event_pb2 as ev
from livebet.odds.v1 import market_pb2, trader_service_pb2_grpc
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.kv import KeyValue

from feed.adapters.jetstream import STREAM, ensure_stream, replay
from mesh.deps import NatsDependency, Readiness, RedisDependency
from mesh.service import ServiceApp, run
from pricing.live import codec
from pricing.live.book import Delta
from pricing.live.engine import Engine
from pricing.trader import TraderApi, apply_trader_state, trader_store

log = logging.getLogger("pricing")
DURABLE = "pricing-engine"
FIRST_WAIT = 1.0
FETCH = 500


async def rebuild(engine: Engine, nats_dep: NatsDependency, redis_dep: RedisDependency) -> int:
    """Replay FEED up to the durable consumer's position into the engine (nothing published)."""
    js = nats_dep.js
    try:
        info = await js.consumer_info(STREAM, DURABLE)
        upto = info.ack_floor.stream_seq if info.ack_floor else 0
    except nats.js.errors.NotFoundError:
        upto = 0
    count = await replay(js, upto, engine.apply)
    # versions never go backwards: take the published version when it is higher
    redis = redis_dep.client
    for match_id, m in engine.matches.items():
        raw = await redis.get(codec.SNAP_KEY + match_id)
        if raw:
            m.version = max(m.version, market_pb2.MatchOdds.FromString(raw).version)
    return count


class Runner:
    """The engine and everything that publishes its deltas, behind one lock so that deltas leave
    in version order whoever causes them (the feed consumer or a trader)."""

    def __init__(self, nats_dep: NatsDependency, redis_dep: RedisDependency) -> None:
        self.nats_dep = nats_dep
        self.redis_dep = redis_dep
        self.engine = Engine()
        self.lock = asyncio.Lock()
        self.kv: KeyValue | None = None
        self.cache = codec.MarketCache()

    async def publish(self, deltas: list[Delta], received_ms: dict[str, int] | None = None) -> None:
        """Publish deltas on NATS in order, then the snapshots and the delta log in Redis."""
        if not deltas:
            return
        now = Timestamp()
        now.GetCurrentTime()
        nc, pipe = self.nats_dep.nc, self.redis_dep.client.pipeline(transaction=False)
        touched = {}
        for d in deltas:
            m = self.engine.matches[d.match_id]
            markets = self.cache.update(d)
            data = codec.delta(d, m, now, (received_ms or {}).get(d.match_id, 0), markets).SerializeToString()
            await nc.publish(codec.subject(d.match_id), data)
            pipe.lpush(codec.LOG_KEY + d.match_id, data)
            pipe.ltrim(codec.LOG_KEY + d.match_id, 0, codec.LOG_LENGTH - 1)
            touched[d.match_id] = m
        for match_id, m in touched.items():
            pipe.set(codec.SNAP_KEY + match_id, codec.snapshot(m, now, self.cache).SerializeToString())
            pipe.zadd(codec.LIVE_KEY, {match_id: int(time.time() * 1000)})
        await pipe.execute()


def build(app: ServiceApp) -> None:
    s = app.settings
    nats_dep = app.add_dependency(NatsDependency(s.nats_url, s.instance, s.health_interval_seconds))
    redis_dep = app.add_dependency(RedisDependency(s.redis_url, s.health_interval_seconds))
    ready = app.add_dependency(Readiness("engine"))
    runner = Runner(nats_dep, redis_dep)
    trader = TraderApi(runner)
    app.add_service(
        "livebet.odds.v1.TraderService", trader, trader_service_pb2_grpc.add_TraderServiceServicer_to_server
    )

    async def consume() -> None:
        js = nats_dep.js
        await ensure_stream(js)
        runner.kv = await trader_store(js)
        async with runner.lock:
            runner.engine = Engine()
            replayed = await rebuild(runner.engine, nats_dep, redis_dep)
            await apply_trader_state(runner.engine, runner.kv)
            runner.cache = codec.MarketCache()
            for m in runner.engine.matches.values():
                runner.cache.seed(m)
        config = ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.ALL,
            max_ack_pending=20_000,
            max_deliver=20,
            ack_wait=30,
            filter_subject="feed.>",
        )
        # A push consumer: messages arrive as soon as they are stored (a pull fetch of a batch waits
        # to fill it); the engine takes whatever has arrived, up to FETCH, as one batch.
        sub = await js.subscribe(
            "feed.>", stream=STREAM, durable=DURABLE, manual_ack=True, config=config, pending_msgs_limit=100_000
        )
        ready.set()
        log.info("engine ready", extra={"replayed_events": replayed, "matches": len(runner.engine.matches)})
        while not app.stopping.is_set():
            try:
                msgs = [await sub.next_msg(timeout=FIRST_WAIT)]
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            while len(msgs) < FETCH and sub.pending_msgs > 0:
                msgs.append(await sub.next_msg(timeout=FIRST_WAIT))
            async with runner.lock:
                deltas = []
                received: dict[str, int] = {}
                for msg in msgs:
                    e = ev.FeedEvent.FromString(msg.data)
                    if e.match_id and e.HasField("received_at"):
                        received[e.match_id] = e.received_at.ToMilliseconds()
                    deltas += runner.engine.apply(e)
                await runner.publish(deltas, received)
            await msgs[-1].ack()  # AckPolicy.ALL: everything up to here is done

    async def supervise() -> None:
        """Run the consumer; after a failure (NATS or Redis lost mid-batch) start again from the
        durable consumer's position with a rebuilt engine: nothing unacknowledged is skipped."""
        delay = 0.2
        while not app.stopping.is_set():
            try:
                await consume()
            except asyncio.CancelledError:
                raise
            except Exception:
                ready.set(False)
                log.exception("engine stopped; restarting it")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def start() -> None:
        await nats_dep.wait_ready()
        await redis_dep.wait_ready()
        task = app.spawn(supervise())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

        app.on_stop(stop)

    async def on_start() -> None:
        app.spawn(start())

    app.on_start(on_start)


if __name__ == "__main__":
    run("pricing", build)
