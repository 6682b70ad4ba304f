"""``python -m feed.bench`` (make bench-feed): sustained feed ingestion, persisted and acknowledged
in JetStream, next to the raw JetStream async-publish rate measured in the same run.

It starts its own nats-server (JetStream, in a temporary folder) and the real feed service
process, then:

- **raw**: nats-py ``publish_async`` of the same serialised events with ``Nats-Msg-Id``, all
  acknowledged, into a stream of the same configuration (the ceiling for one Python publisher);
- **feed**: ``PublishBatch`` calls (500 events each, several in flight) through gRPC into the feed
  service, which validates, orders, publishes and waits for every acknowledgement.

For the ``sync_interval`` livebet uses, for "always" (fsync before every acknowledgement) and for
nats-server's default ("2m"), so that the cost of durability is measured, not guessed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import nats
from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc

from feed.adapters.jetstream import ensure_stream, stream_config
from mesh import access, infra
from mesh.process import Process, service_spec

GOAL_EVENTS_PER_S = 20_000
GOAL_SHARE_OF_RAW = 0.5


def _events(n: int, matches: int, tag: str) -> list[ev.FeedEvent]:
    out = []
    for i in range(n):
        match = f"bench:{i % matches}"
        e = ev.FeedEvent(event_id=f"{tag}:{i}", provider="bench", match_id=match, sequence=i // matches + 1)
        s = e.match_state.state
        s.match_id, s.status, s.clock.minute = match, ev.MATCH_STATUS_LIVE, (i // matches) % 90
        s.score.home, s.score.away = i % 3, i % 2
        out.append(e)
    return out


async def raw_rate(url: str, events: list[ev.FeedEvent]) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20_000)
    await ensure_stream(js, stream_config("RAWBENCH"))
    payloads = [(f"rawbench.bench.{e.match_id.replace(':', '_')}", e.SerializeToString(), e.event_id) for e in events]
    t = time.perf_counter()
    futures = [await js.publish_async(s, p, headers={"Nats-Msg-Id": i}) for s, p, i in payloads]
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - t
    await nc.close()
    return len(events) / elapsed


async def feed_rate(target: str, events: list[ev.FeedEvent], matches: int, batch: int, in_flight: int) -> float:
    async with access.aio_channel(target, "svc:bench", [access.FEED]) as channel:
        stub = feed_service_pb2_grpc.FeedServiceStub(channel)
        fixtures = []
        for m in range(matches):
            f = ev.FeedEvent(event_id=f"bench:fixture:{m}", provider="bench", match_id=f"bench:{m}")
            f.fixture_change.fixture.match_id = f"bench:{m}"
            fixtures.append(f)
        await stub.PublishBatch(fs.PublishBatchRequest(provider="bench", events=fixtures), timeout=60)
        # `in_flight` lanes, each with its own matches and its batches one after another: a match's
        # events always arrive in sequence order (concurrent batches sharing a match could arrive
        # out of order, and the feed rightly drops an older event after a newer one as stale)
        lanes: list[list[ev.FeedEvent]] = [[] for _ in range(in_flight)]
        for e in events:
            lanes[int(e.match_id.rsplit(":", 1)[1]) % in_flight].append(e)
        accepted = 0

        async def lane(own: list[ev.FeedEvent]) -> None:
            nonlocal accepted
            for i in range(0, len(own), batch):
                request = fs.PublishBatchRequest(provider="bench", events=own[i : i + batch])
                r = await stub.PublishBatch(request, timeout=120)  # awaited first: `+=` would race
                accepted += r.accepted

        t = time.perf_counter()
        await asyncio.gather(*(lane(own) for own in lanes))
        elapsed = time.perf_counter() - t
    if accepted != len(events):
        raise RuntimeError(f"only {accepted} of {len(events)} events were accepted")
    return len(events) / elapsed


def run_once(sync_interval: str, n: int, matches: int, batch: int, in_flight: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="livebet-bench-"))
    procs: list[Process] = []
    try:
        spec = infra.nats(root / "nats", infra.free_port(), infra.free_port(), sync_interval=sync_interval)
        procs.append(Process(spec, root / "nats.log").start())
        url = f"nats://127.0.0.1:{spec.port}"
        raw = asyncio.run(raw_rate(url, _events(n, matches, "raw")))
        feed = service_spec("feed", "feed.server", {"LIVEBET_NATS_URL": url, "LIVEBET_LOG_LEVEL": "WARNING"})
        procs.append(Process(feed, root / "feed.log").start())
        rate = asyncio.run(feed_rate(feed.health_target, _events(n, matches, "feed"), matches, batch, in_flight))
        return {"raw_events_per_s": round(raw), "feed_events_per_s": round(rate), "ratio": round(rate / raw, 3)}
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m feed.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--matches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument(
        "--sync",
        nargs="+",
        default=[infra.DEFAULT_SYNC_INTERVAL, "always", "2m"],
        help="nats-server sync_interval values to measure (default: livebet's, always, 2m)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    syncs = list(dict.fromkeys(args.sync))
    results = {s: run_once(s, args.events, args.matches, args.batch, args.in_flight) for s in syncs}
    if args.json:
        print(
            json.dumps(
                {"goal_events_per_s": GOAL_EVENTS_PER_S, "goal_ratio": GOAL_SHARE_OF_RAW, "results": results}, indent=2
            )
        )
        return 0
    print(
        f"feed ingestion, {args.events} events over {args.matches} matches, batches of {args.batch}, "
        f"{args.in_flight} in flight; goal >= {GOAL_EVENTS_PER_S} events/s and >= {GOAL_SHARE_OF_RAW:.0%} of raw"
    )
    print(f"{'sync_interval':<14}{'raw JetStream/s':>16}{'feed/s':>10}{'ratio':>8}  verdict")
    for s, r in results.items():
        ok = r["feed_events_per_s"] >= GOAL_EVENTS_PER_S and r["ratio"] >= GOAL_SHARE_OF_RAW
        used = " (livebet's setting)" if s == infra.DEFAULT_SYNC_INTERVAL else ""
        print(
            f"{s:<14}{r['raw_events_per_s']:>16}{r['feed_events_per_s']:>10}{r['ratio']:>8.2f}  "
            f"{'ok' if ok else 'MISSED'}{used}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
