"""``python -m pricing.bench_live`` (make bench-live): feed event → client latency and delivered
updates/s through the real feed, pricing engine and odds stream processes, next to raw grpc.aio
server-streaming throughput of the same message size measured in the same run.

It starts nats-server, Valkey, the feed, the engine and one odds stream process in a temporary
folder, then runs four phases:

1. capacity: the stream process alone at full speed (real deltas published straight on NATS to
   ``--subscribers`` streams, read as bytes);
2. raw: grpc.aio server streaming from a server process of its own to as many streams, with
   messages of the deltas' median size (the goal's share is 1 / 2);
3. live: ``--matches`` fixtures, ``--subscribers`` WatchOdds streams (each on ``--per-client``
   matches), clock updates through the feed at ``--rate`` events/s for ``--seconds`` (a batch
   every ``--tick-ms``). Each received delta's latency is "now - feed_received_at" (the feed's
   receive time, one clock: one machine), in an HdrHistogram (1 µs to 60 s, 3 digits). The
   subscribers read each message's delta head only (match, versions, times: ``HEAD``), not its
   markets, so that the load generator takes as little of the two cores as it can;
4. stuck: ``--stuck`` streams that never read while the feed goes on; the stream process's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp
from hdrh.histogram import HdrHistogram
from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc
from livebet.odds.v1 import odds_service_pb2, odds_service_pb2_grpc

from mesh import access, eventloop, infra
from mesh.process import CpuMeter, Process, service_spec
from pricing.live import codec
from pricing.live.book import Delta
from pricing.live.engine import Engine

GOAL_P99_MS = 10.0
GOAL_RAW_SHARE = 0.66
WATCH_ODDS = "/livebet.odds.v1.OddsService/WatchOdds"
#: a ``WatchOddsResponse`` as the live phase's subscribers read it: a delta's match, versions and
#: times, not its markets (parsing 6 KB of markets per message, 1,000 subscribers of them made
#: the load generator the largest user of the two cores, its latency everyone's)
HEAD = codec.delta_head_type((*codec.HEAD_FIELDS, "published_at"), in_response=True)


def _fixture(i: int, prefix: str = "bl") -> ev.FeedEvent:
    m = f"{prefix}:{i}"
    e = ev.FeedEvent(event_id=f"bl:{i}:fx", provider="bl", match_id=m)
    f = e.fixture_change.fixture
    f.match_id, f.home.name, f.away.name = m, f"Home {i}", f"Away {i}"
    o = f.pre_match_odds
    o.home.decimal, o.draw.decimal, o.away.decimal = "2.10", "3.40", "3.60"
    return e


def _clock(i: int, seq: int, minute: int, prefix: str = "bl") -> ev.FeedEvent:
    m = f"{prefix}:{i}"
    e = ev.FeedEvent(event_id=f"bl:{i}:{seq}", provider="bl", match_id=m, sequence=seq)
    s = e.match_state.state
    s.match_id, s.status, s.period, s.clock.minute = m, ev.MATCH_STATUS_LIVE, ev.PERIOD_SECOND_HALF, minute
    return e


async def _drive_clock(
    fstub: feed_service_pb2_grpc.FeedServiceStub,
    matches: int,
    rate: int,
    seconds: float,
    tick: float,
    first_seq: int,
    after_batch: Callable[[], None] = lambda: None,
) -> tuple[int, float]:
    """Clock updates through the feed at ``rate`` events/s for ``seconds``, a batch every ``tick``,
    round the matches (each round one minute later); returns (events sent, seconds taken)."""
    sent, per_tick, start = 0, max(1, int(rate * tick)), time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = []
        for _ in range(per_tick):
            round_ = sent // matches
            batch.append(_clock(sent % matches, first_seq + round_, 46 + round_ % 44))
            sent += 1
        await fstub.PublishBatch(fs.PublishBatchRequest(provider="bl", events=batch), timeout=30)
        after_batch()
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    return sent, time.perf_counter() - start


async def _priced(odds: str, match_ids: list[str], timeout: float = 120.0) -> None:
    """Until every match has a snapshot: the clock starts with the engine idle."""
    deadline = time.perf_counter() + timeout
    async with grpc.aio.insecure_channel(odds) as ch:
        stub = odds_service_pb2_grpc.OddsServiceStub(ch)
        for match_id in match_ids:
            while True:
                try:
                    await stub.GetOddsSnapshot(odds_service_pb2.GetOddsSnapshotRequest(match_id=match_id), timeout=5)
                    break
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND or time.perf_counter() > deadline:
                        raise
                    await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)  # the last batch's Redis writes and acknowledgement


async def live_run(
    feed: str,
    odds: str,
    matches: int,
    subscribers: int,
    per_client: int,
    rate: int,
    seconds: float,
    tick: float = 0.01,
    pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """``pids``: processes whose CPU time per feed event is measured over the drive (the load
    generator, this process, is added as ``load``)."""
    async with access.aio_channel(feed, "svc:bench", [access.FEED]) as fch:
        fstub = feed_service_pb2_grpc.FeedServiceStub(fch)
        await fstub.PublishBatch(
            fs.PublishBatchRequest(provider="bl", events=[_fixture(i) for i in range(matches)]), timeout=30
        )
        await _priced(odds, [f"bl:{i}" for i in range(matches)])  # fitting 200 fixtures takes seconds
        hist = HdrHistogram(1, 60_000_000, 3)
        engine_hist = HdrHistogram(1, 60_000_000, 3)  # feed received -> engine published
        received = 0
        rng = random.Random(1)
        channels = [grpc.aio.insecure_channel(odds) for _ in range(max(1, subscribers // 100))]
        streams = []
        for k in range(subscribers):
            ids = [f"bl:{rng.randrange(matches)}" for _ in range(per_client)]
            watch = channels[k % len(channels)].unary_stream(
                WATCH_ODDS, request_serializer=odds_service_pb2.WatchOddsRequest.SerializeToString
            )  # the messages as bytes: each subscriber reads only what it measures (HEAD)
            streams.append(watch(odds_service_pb2.WatchOddsRequest(match_ids=ids, heartbeat_interval_ms=5000)))
        measuring = False

        async def reader(call: grpc.aio.UnaryStreamCall) -> None:
            nonlocal received
            with contextlib_suppress():
                async for raw in call:
                    if not measuring:
                        continue
                    d = HEAD.FromString(raw).delta
                    if d.HasField("feed_received_at"):
                        fed = d.feed_received_at.ToMicroseconds()
                        hist.record_value(max(1, int(time.time() * 1e6 - fed)))
                        engine_hist.record_value(max(1, int(d.published_at.ToMicroseconds() - fed)))
                        received += 1

        readers = [asyncio.create_task(reader(c)) for c in streams]
        await asyncio.sleep(2.0)  # images delivered
        measuring = True
        groups = {name: (lambda pid=pid: [pid]) for name, pid in {**(pids or {}), "load": os.getpid()}.items()}
        cpu = CpuMeter(groups)
        sent, elapsed = await _drive_clock(fstub, matches, rate, seconds, tick, first_seq=1)
        await asyncio.sleep(2.0)  # drain
        per_event = {k.removesuffix("_cpu_ms"): v for k, v in cpu.per_op_ms(sent).items()}
        for c in streams:
            c.cancel()
        for t in readers:
            t.cancel()
        for ch in channels:
            await ch.close()
    return {
        "events_per_s": round(sent / elapsed),
        "updates_per_s": round(received / elapsed),
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "p999_ms": hist.get_value_at_percentile(99.9) / 1000,
        "max_ms": hist.get_max_value() / 1000,
        "engine_p50_ms": engine_hist.get_value_at_percentile(50) / 1000,
        "engine_p99_ms": engine_hist.get_value_at_percentile(99) / 1000,
        "cpu_ms_per_event": per_event,  # per process
    }


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def stuck_run(
    feed: str, odds: str, odds_pid: int, matches: int, stuck: int, rate: int, seconds: float
) -> dict[str, float]:
    """``stuck`` clients open WatchOdds on every match and never read a message, while the feed
    goes on at ``rate``: the stream process's memory (RSS) must stay flat (per stream, conflation
    bounds what waits to the latest of each market)."""
    async with access.aio_channel(feed, "svc:bench", [access.FEED]) as fch:
        fstub = feed_service_pb2_grpc.FeedServiceStub(fch)
        channels = [grpc.aio.insecure_channel(odds) for _ in range(max(1, stuck // 50))]
        calls = [
            odds_service_pb2_grpc.OddsServiceStub(channels[k % len(channels)]).WatchOdds(
                odds_service_pb2.WatchOddsRequest(heartbeat_interval_ms=1000)
            )
            for k in range(stuck)
        ]
        for c in calls:  # started (the request is sent), never read
            await c.wait_for_connection()
        samples: list[float] = []
        next_sample = time.perf_counter() + 1.0

        def sample() -> None:
            nonlocal next_sample
            if time.perf_counter() >= next_sample:
                samples.append(_rss_mb(odds_pid))
                next_sample += 1.0

        sent, _ = await _drive_clock(fstub, matches, rate, seconds, 0.05, first_seq=10_000, after_batch=sample)
        samples.append(_rss_mb(odds_pid))
        for c in calls:
            c.cancel()
        for ch in channels:
            await ch.close()
    return {
        "stuck_subscribers": stuck,
        "events_sent": sent,
        "rss_mb_first": round(samples[0], 1),
        "rss_mb_peak": round(max(samples), 1),
        "rss_mb_last": round(samples[-1], 1),
        "rss_mb_growth_second_half": round(samples[-1] - samples[len(samples) // 2], 1),
    }


class contextlib_suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], (asyncio.CancelledError, grpc.aio.AioRpcError))  # type: ignore[arg-type]


def raw_server(port: int, size: int) -> None:
    """Raw grpc.aio server streaming (its own process, as the stream tier is): each stream sends
    ``size``-byte messages as fast as its client reads them."""

    async def serve() -> None:
        payload = b"x" * size

        async def stream(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
            while True:
                yield payload

        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Raw", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    eventloop.run(serve())


async def _count_messages(
    calls: list[grpc.aio.UnaryStreamCall], warmup: float, seconds: float, meter: dict[str, Any] | None = None
) -> tuple[float, dict[str, float]]:
    """Messages/s the calls receive in ``seconds`` after ``warmup`` (read as bytes, not parsed),
    and the CPU time per message of the ``meter`` groups of processes (``CpuMeter``) meanwhile."""
    count = 0
    counting = False

    async def read(call: grpc.aio.UnaryStreamCall) -> None:
        nonlocal count
        with contextlib_suppress():
            async for _ in call:
                if counting:
                    count += 1

    readers = [asyncio.create_task(read(c)) for c in calls]
    await asyncio.sleep(warmup)
    counting = True
    cpu = CpuMeter(meter or {})
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    counting = False
    elapsed = time.perf_counter() - start
    per_msg = cpu.per_op_ms(count)
    for c in calls:
        c.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    return count / elapsed, per_msg


async def raw_run(target: str, streams: int, channels: int, seconds: float, pid: int = 0) -> dict[str, float]:
    """Raw grpc.aio server streaming from ``raw_server`` (process ``pid``): messages/s received by
    ``streams`` streams over ``channels`` channels (as many as the stream tier's clients use), and
    the CPU time per message of the server and of the clients (this process)."""
    chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    for ch in chans:
        await asyncio.wait_for(ch.channel_ready(), 10)
    calls = [chans[k % channels].unary_stream("/bench.Raw/Stream")(b"") for k in range(streams)]
    meter = {"server": lambda: [pid] if pid else [], "client": lambda: [os.getpid()]}
    rate, cpu = await _count_messages(calls, 1.0, seconds, meter)
    for ch in chans:
        await ch.close()
    return {
        "msgs_per_s": rate,
        "server_cpu_us": 1000 * cpu["server_cpu_ms"],
        "client_cpu_us": 1000 * cpu["client_cpu_ms"],
    }


@dataclass
class CapacityBook:
    """The capacity phase's matches: their engine state, the encoded markets of a typical delta
    each, and the version each match was last published at (rounds go on from it)."""

    engine: Engine
    cache: codec.MarketCache
    markets: dict[str, list[bytes]]
    published: dict[str, int]
    delta_bytes: int


def capacity_book(matches: int) -> CapacityBook:
    """``cap:<i>`` matches priced with the engine's own code, each with a one-minute clock tick's
    changed markets (a typical delta, ~35 of 67 markets)."""
    engine, cache = Engine(), codec.MarketCache()
    now = Timestamp()
    markets: dict[str, list[bytes]] = {}
    sizes = []
    for i in range(matches):
        for d in engine.apply(_fixture(i, "cap")):
            cache.update(d)
        m = engine.matches[f"cap:{i}"]
        for d in engine.apply(_clock(i, 1, 59, "cap")):
            cache.update(d)
        tick = engine.apply(_clock(i, 2, 60, "cap"))[0]
        markets[m.match_id] = cache.update(tick)
        sizes.append(len(codec.delta(tick, m, now, 1, markets[m.match_id])))
    return CapacityBook(engine, cache, markets, dict.fromkeys(markets, 1), sorted(sizes)[len(sizes) // 2])


async def capacity_run(
    book: CapacityBook,
    odds: str,
    nats_url: str,
    redis_url: str,
    subscribers: int,
    per_client: int,
    seconds: float,
    seed: int = 2,
    pid: int = 0,
) -> dict[str, float]:
    """The stream process alone at full speed: the book's deltas published on NATS as fast as the
    process hands them to its clients, who read them as bytes as the raw clients do. The
    publisher keeps at most a few updates per stream in flight, so the figure is what the process
    delivers, not what it conflates."""
    now = Timestamp()
    now.GetCurrentTime()
    redis = aioredis.from_url(redis_url)
    for match_id, version in book.published.items():  # the images new streams start from
        m = book.engine.matches[match_id]
        m.version = version
        await redis.set(codec.SNAP_KEY + match_id, codec.snapshot(m, now, book.cache))
    await redis.aclose()
    matches = len(book.markets)
    rng = random.Random(seed)
    watchers: dict[str, int] = dict.fromkeys(book.markets, 0)
    requests = []
    for _ in range(subscribers):
        ids = sorted({f"cap:{rng.randrange(matches)}" for _ in range(per_client)})
        for match_id in ids:
            watchers[match_id] += 1
        requests.append(odds_service_pb2.WatchOddsRequest(match_ids=ids, heartbeat_interval_ms=5000))
    chans = [grpc.aio.insecure_channel(odds) for _ in range(max(1, subscribers // 100))]
    calls = [
        chans[k % len(chans)].unary_stream(
            "/livebet.odds.v1.OddsService/WatchOdds",
            request_serializer=odds_service_pb2.WatchOddsRequest.SerializeToString,
        )(r)
        for k, r in enumerate(requests)
    ]
    nc = await nats.connect(nats_url)
    window = 16 * subscribers  # updates in flight at most (a few per stream: no conflation)
    ids = [match_id for match_id in book.markets if watchers[match_id]]
    # every delta built before the clock starts: publishing costs the publisher nothing but the send
    published_at = int(time.time() * 1000)
    deltas = []
    for k in range(int(3_000 * seconds)):
        match_id = ids[k % len(ids)]
        m = book.engine.matches[match_id]
        m.version += 1
        d = Delta(match_id, m.version, m.version - 1, (), "clock")
        data = codec.delta(d, m, now, published_at, book.markets[match_id])
        deltas.append((codec.subject(match_id), data, match_id, m.version))
    expected = 0
    delivered = 0
    resume_at = 0
    counting = False
    room = asyncio.Event()

    async def read(call: grpc.aio.UnaryStreamCall) -> None:
        nonlocal delivered
        with contextlib_suppress():
            async for _ in call:
                if counting:
                    delivered += 1
                    if delivered >= resume_at:
                        room.set()

    readers = [asyncio.create_task(read(c)) for c in calls]
    await asyncio.sleep(2.0)  # images delivered
    counting = True
    cpu = CpuMeter({"server": lambda: [pid] if pid else [], "client": lambda: [os.getpid()]})
    start = time.perf_counter()
    k = 0
    while k < len(deltas) and time.perf_counter() - start < seconds:
        if expected - delivered >= window:
            resume_at = expected - window // 2
            room.clear()
            with contextlib.suppress(TimeoutError):  # updates merged for a slow stream never arrive
                await asyncio.wait_for(room.wait(), 0.05)
            expected = min(expected, delivered + window)
            continue
        for subject, data, match_id, version in deltas[k : k + 50]:
            await nc.publish(subject, data)
            expected += watchers[match_id]
            book.published[match_id] = version
        k += 50
        await asyncio.sleep(0)  # let the readers run
    elapsed = time.perf_counter() - start
    counting = False
    per_update = cpu.per_op_ms(delivered)
    for c in calls:
        c.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for ch in chans:
        await ch.close()
    await nc.close()
    return {
        "updates_per_s": round(delivered / elapsed),
        "deltas_published_per_s": round(min(k, len(deltas)) / elapsed),
        "server_cpu_us": round(1000 * per_update["server_cpu_ms"], 1),
        "client_cpu_us": round(1000 * per_update["client_cpu_ms"], 1),  # the publisher and the readers
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pricing.bench_live", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--matches", type=int, default=200)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--per-client", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1000, help="feed events per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--tick-ms", type=float, default=10.0, help="the feed's events go out in one batch every TICK ms"
    )
    parser.add_argument("--stuck", type=int, default=100, help="clients that never read, for the memory figure")
    parser.add_argument("--stuck-seconds", type=float, default=10.0)
    parser.add_argument("--capacity-seconds", type=float, default=3.0, help="per round, for each of the two")
    parser.add_argument("--rounds", type=int, default=3, help="alternating capacity / raw rounds (the median is kept)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--raw-server", type=int, default=0, help=argparse.SUPPRESS)  # internal: PORT
    parser.add_argument("--raw-size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_server:
        raw_server(args.raw_server, args.raw_size)
        return 0
    root = Path(tempfile.mkdtemp(prefix="livebet-benchlive-"))
    root.chmod(0o755)
    procs: list[Process] = []
    try:
        n = infra.nats(root / "nats", infra.free_port(), infra.free_port())
        r = infra.valkey(root / "redis", infra.free_port(), persist=False)
        procs += [Process(n, root / "nats.log").start(), Process(r, root / "redis.log").start()]
        env = {
            "LIVEBET_NATS_URL": f"nats://127.0.0.1:{n.port}",
            "LIVEBET_REDIS_URL": f"redis://127.0.0.1:{r.port}/0",
            "LIVEBET_LOG_LEVEL": "WARNING",
        }
        specs = [
            service_spec(name, module, env)
            for name, module in (
                ("feed", "feed.server"),
                ("pricing", "pricing.server"),
                ("odds", "pricing.stream_server"),
            )
        ]
        procs += [Process(s, root / f"{s.name}.log").start() for s in specs]
        odds_proc = procs[-1]
        # the stream process at full speed and raw grpc.aio streaming in alternating rounds, so
        # that what the (shared, noisy) machine does to one it does to the other
        book = capacity_book(args.matches)
        size = book.delta_bytes
        raw_port = infra.free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "pricing.bench_live", "--raw-server", str(raw_port), "--raw-size", str(size)]
        )
        rounds: list[dict[str, Any]] = []
        try:
            for k in range(args.rounds):
                cap_r = eventloop.run(
                    capacity_run(
                        book,
                        specs[2].health_target,
                        env["LIVEBET_NATS_URL"],
                        env["LIVEBET_REDIS_URL"],
                        args.subscribers,
                        args.per_client,
                        args.capacity_seconds,
                        seed=k,
                        pid=odds_proc.pid,
                    )
                )
                raw_r = eventloop.run(
                    raw_run(
                        f"127.0.0.1:{raw_port}",
                        args.subscribers,
                        max(1, args.subscribers // 100),
                        args.capacity_seconds,
                        server.pid,
                    )
                )
                share_r = cap_r["updates_per_s"] / raw_r["msgs_per_s"] if raw_r["msgs_per_s"] else 0.0
                rounds.append(
                    {
                        "capacity": cap_r,
                        "raw_msgs_per_s": round(raw_r["msgs_per_s"]),
                        "raw_server_cpu_us": round(raw_r["server_cpu_us"], 1),
                        "raw_client_cpu_us": round(raw_r["client_cpu_us"], 1),
                        "share": round(share_r, 3),
                    }
                )
        finally:
            server.terminate()
            server.wait(10)
        middle = sorted(rounds, key=lambda x: float(x["share"]))[len(rounds) // 2]
        capacity: dict[str, float] = middle["capacity"]
        raw = float(middle["raw_msgs_per_s"])
        share = float(middle["share"])
        live = eventloop.run(
            live_run(
                specs[0].health_target,
                specs[2].health_target,
                args.matches,
                args.subscribers,
                args.per_client,
                args.rate,
                args.seconds,
                args.tick_ms / 1000,
                {
                    "engine": procs[3].pid,
                    "stream": odds_proc.pid,
                    "feed": procs[2].pid,
                    "nats": procs[0].pid,
                    "redis": procs[1].pid,
                },
            )
        )
        stuck: dict[str, float] = {}
        if args.stuck:
            stuck = eventloop.run(
                stuck_run(
                    specs[0].health_target,
                    specs[2].health_target,
                    odds_proc.pid,
                    args.matches,
                    args.stuck,
                    args.rate,
                    args.stuck_seconds,
                )
            )
    finally:
        for p in reversed(procs):
            p.stop()
        if os.environ.get("LIVEBET_KEEP_TEST_DIRS") == "1":
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    result: dict[str, object] = {
        "live": live,
        "rounds": rounds,
        "capacity": capacity,
        "raw_grpc_streaming_msgs_per_s": round(raw),
        "raw_message_bytes": size,
        "share_of_raw": round(share, 3),
        "stuck": stuck,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"live odds: {args.matches} matches, {args.subscribers} subscribers x {args.per_client} matches, "
        f"{args.rate} events/s for {args.seconds:.0f} s"
    )
    print(f"  feed events/s {live['events_per_s']}, updates delivered/s {live['updates_per_s']}")
    print(
        f"  feed event -> client latency: p50 {live['p50_ms']:.1f} ms, p99 {live['p99_ms']:.1f} ms, "
        f"p99.9 {live['p999_ms']:.1f} ms, max {live['max_ms']:.1f} ms  (goal p99 <= {GOAL_P99_MS:.0f} ms: "
        f"{'ok' if live['p99_ms'] <= GOAL_P99_MS else 'MISSED'})"
    )
    print(
        f"  of which feed received -> engine published: p50 {live['engine_p50_ms']:.1f} ms, "
        f"p99 {live['engine_p99_ms']:.1f} ms"
    )
    shares: dict[str, float] = live["cpu_ms_per_event"]
    total = sum(shares.values())
    print(
        "  CPU ms per feed event: "
        + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
        + f"; {total:.2f} in all, {total * args.rate / 1000:.2f} of the {os.cpu_count()} cores at {args.rate} events/s"
    )
    if stuck:
        print(
            f"  {stuck['stuck_subscribers']:.0f} subscribers that never read, {args.stuck_seconds:.0f} s at "
            f"{args.rate} events/s: odds process RSS {stuck['rss_mb_first']} MB -> peak {stuck['rss_mb_peak']} MB -> "
            f"{stuck['rss_mb_last']} MB (second half: {stuck['rss_mb_growth_second_half']:+} MB)"
        )
    each = ", ".join(f"{x['share']:.0%}" for x in rounds)
    print(
        f"stream process at full speed ({args.subscribers} streams, deltas of {size} bytes published straight "
        f"to NATS): {capacity['updates_per_s']} updates/s delivered (the median of {args.rounds} rounds: {each})"
    )
    print(
        f"  raw grpc.aio streaming of {size}-byte messages, {args.subscribers} streams, server in its own process: "
        f"{raw:.0f} msgs/s; the stream process delivered {share:.0%} of it "
        f"(goal >= {GOAL_RAW_SHARE:.0%}: {'ok' if share >= GOAL_RAW_SHARE else 'MISSED'})"
    )
    cpu = "; ".join(
        f"{x['capacity']['server_cpu_us']:.0f} vs {x['raw_server_cpu_us']:.0f}"
        f" (clients {x['capacity']['client_cpu_us']:.0f} vs {x['raw_client_cpu_us']:.0f})"
        for x in rounds
    )
    print(f"  CPU µs per message, stream process vs raw server, each round: {cpu}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
