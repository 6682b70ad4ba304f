"""``make bench-offers``: what ``WatchCashOutOffers`` costs the betting service.

Starts NATS, Valkey, PostgreSQL and one betting service (as ``make bench-bets`` does), prices
``--matches`` pre-match matches in Valkey with the engine's own code, gives ``--players`` players
``--bets`` accepted singles each, spread over the matches, and opens one stream per player (every
open bet, ``--interval-ms``). Then, ``--seconds`` each:

1. **quiet**: no odds change. What an open stream costs when nothing moves.
2. **moving**: every match's snapshot rewritten ``--moves`` times a second, its prices switching
   between two sets (what a busy in-play evening does to many matches at once). Every write
   changes the offers of the bets on that match.

For each: the betting process's CPU (% of one core, from /proc), the offers delivered per second,
and the CPU per offer; in the moving phase also the time from a rewrite of the odds to a stream's
message with the new offers (p50/p99; the writes and all the streams' client share one process).
``--json`` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc
import redis
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hdrh.histogram import HdrHistogram
from livebet.betting.v1 import bet_pb2, betting_service_pb2_grpc, wallet_service_pb2_grpc
from livebet.betting.v1 import betting_service_pb2 as bs
from livebet.betting.v1 import wallet_service_pb2 as ws
from livebet.common.v1 import common_pb2
from livebet.feed.v1 import event_pb2 as ev

from betting.bench import _request, one_betting_service
from mesh import eventloop
from mesh.process import cpu_seconds
from pricing.live import codec
from pricing.live.engine import Engine

PRICES = (("2.1", "3.4", "3.6"), ("2.3", "3.3", "3.2"))


def _snapshots(matches: int) -> list[tuple[bytes, bytes]]:
    """Each match's snapshot at both price sets, written by the engine's code."""
    now = Timestamp()
    now.GetCurrentTime()
    out = []
    for m in range(matches):
        pair = []
        for home, draw, away in PRICES:
            engine = Engine()
            e = ev.FeedEvent(event_id=f"bb:{m}", provider="bench", match_id=f"bb:{m}")
            f = e.fixture_change.fixture
            f.match_id = f"bb:{m}"
            prices = f.pre_match_odds
            prices.home.decimal, prices.draw.decimal, prices.away.decimal = home, draw, away
            engine.apply(e)
            pair.append(codec.snapshot(engine.matches[f"bb:{m}"], now))
        out.append((pair[0], pair[1]))
    return out


class Streams:
    """One WatchCashOutOffers stream per player, counting the offers they deliver."""

    def __init__(self, stub: betting_service_pb2_grpc.BettingServiceStub, players: list[str], interval_ms: int) -> None:
        self.stub, self.players, self.interval_ms = stub, players, interval_ms
        self.offers = 0
        self.started: set[str] = set()  # players whose stream sent its first message
        self.written_at = 0.0  # when the odds were last rewritten (moving phase)
        self.latency = HdrHistogram(1, 60_000_000, 3)  # µs from that write to a message with offers
        self.tasks: list[asyncio.Task[None]] = []

    async def _one(self, player: str) -> None:
        req = bs.WatchCashOutOffersRequest(interval=Duration(nanos=self.interval_ms * 1_000_000))
        async for msg in self.stub.WatchCashOutOffers(req, metadata=(("x-livebet-account", player),)):
            self.started.add(player)
            n = sum(1 for o in msg.offers if o.HasField("amount"))
            self.offers += n
            if n and self.written_at:
                self.latency.record_value(max(1, int((time.perf_counter() - self.written_at) * 1e6)))

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._one(p)) for p in self.players]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _run(target: str, redis_url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    snaps = _snapshots(args.matches)
    r = redis.Redis.from_url(redis_url)
    for m, (a, _) in enumerate(snaps):
        r.set(codec.SNAP_KEY + f"bb:{m}", a)
    odds = {m: PRICES[0][0] for m in range(args.matches)}  # home, at the first set
    async with grpc.aio.insecure_channel(target) as ch:
        stub = betting_service_pb2_grpc.BettingServiceStub(ch)
        wallet = wallet_service_pb2_grpc.WalletServiceStub(ch)
        players = [f"offers-{p}" for p in range(args.players)]

        async def seed(p: int, player: str) -> None:
            md = (("x-livebet-account", player),)
            amount = common_pb2.Money(currency_code="EUR", minor_units=10**9)
            await wallet.Deposit(ws.DepositRequest(request_id="seed", amount=amount), metadata=md)
            for b in range(args.bets):
                req = _request(b, player, args.matches, odds, (p * args.bets + b) % args.matches)
                reply = await stub.PlaceBet(req, metadata=md, timeout=30)
                if reply.bet.status != bet_pb2.BET_STATUS_ACCEPTED:
                    raise RuntimeError(f"bet not accepted: {reply.bet}")

        await asyncio.gather(*(seed(p, player) for p, player in enumerate(players)))
        streams = Streams(stub, players, args.interval_ms)
        streams.start()
        deadline = time.monotonic() + 60
        while len(streams.started) < len(players):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(streams.started)} of {len(players)} streams started")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # past the first round of pricing

        async def phase(moves: float) -> dict[str, float]:
            offers, cpu, t0 = streams.offers, cpu_seconds([pid]).get(pid, 0.0), time.monotonic()
            k = 0
            while time.monotonic() - t0 < args.seconds:
                if moves:
                    k += 1
                    pipe = r.pipeline(transaction=False)
                    for m, pair in enumerate(snaps):
                        pipe.set(codec.SNAP_KEY + f"bb:{m}", pair[k % 2])
                    streams.written_at = time.perf_counter()
                    pipe.execute()
                    await asyncio.sleep(1 / moves)
                else:
                    await asyncio.sleep(0.2)
            elapsed = time.monotonic() - t0
            used = cpu_seconds([pid]).get(pid, 0.0) - cpu
            sent = streams.offers - offers
            lat = streams.latency
            return {
                "write_to_message_p50_ms": lat.get_value_at_percentile(50) / 1000 if moves else 0.0,
                "write_to_message_p99_ms": lat.get_value_at_percentile(99) / 1000 if moves else 0.0,
                "betting_cpu_pct": round(100 * used / elapsed, 1),
                "offers_per_s": round(sent / elapsed, 1),
                "cpu_us_per_offer": round(1e6 * used / sent, 1) if sent else 0.0,
                "snapshot_writes_per_s": round(k * args.matches / elapsed, 1),
            }

        quiet = await phase(0)
        moving = await phase(args.moves)
        await streams.stop()
    return {"quiet": quiet, "moving": moving}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    ap.add_argument("--players", type=int, default=200, help="streams, one per player")
    ap.add_argument("--bets", type=int, default=5, help="open bets per player")
    ap.add_argument("--matches", type=int, default=50)
    ap.add_argument("--interval-ms", type=int, default=250, help="each stream's interval (the web app's)")
    ap.add_argument("--moves", type=float, default=2.0, help="odds changes per match per second, moving phase")
    ap.add_argument("--seconds", type=float, default=10.0, help="per phase")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    with one_betting_service("livebet-bench-offers-") as (env, betting, _):
        print(
            f"{args.players} streams x {args.bets} bets on {args.matches} matches, {args.interval_ms} ms,"
            f" {args.seconds:.0f} s per phase ...",
            file=sys.stderr,
        )
        got = eventloop.run(_run(betting.spec.health_target, env["LIVEBET_REDIS_URL"], betting.pid, args))
    setup = {k: getattr(args, k) for k in ("players", "bets", "matches", "interval_ms", "moves", "seconds")}
    if args.json:
        print(json.dumps({"setup": setup, **got}, indent=2))
        return 0
    print(f"WatchCashOutOffers: {setup}")
    for name, f in got.items():
        print(
            f"  {name:>6}: betting CPU {f['betting_cpu_pct']:5.1f} % of a core, {f['offers_per_s']:8.1f} offers/s,"
            f" {f['cpu_us_per_offer']:6.1f} us CPU per offer ({f['snapshot_writes_per_s']:.0f} snapshot writes/s)"
        )
    m = got["moving"]
    print(
        f"  odds written -> a stream's message with the new offers: p50 {m['write_to_message_p50_ms']:.1f} ms,"
        f" p99 {m['write_to_message_p99_ms']:.1f} ms (load generator and streams' client in one process)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
