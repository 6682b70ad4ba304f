"""``make bench-auto``: what automatic cash-outs (``SetAutoCashOut``) cost, and how soon they are taken.

Starts NATS, Valkey, PostgreSQL and one betting service (as ``make bench-bets`` does), prices
``--matches`` pre-match matches in Valkey with the engine's own code, and places ``--bets``
accepted singles of 100.00 EUR on their home sides, spread over ``--players`` players. Then:

1. **baseline**: every match's snapshot rewritten ``--moves`` times a second, its home price
   switching between the one the bets were placed at and a longer one (the offers fall), with no
   rule set: the betting process's CPU when nothing is watched.
2. **watching**: the same, with a rule on every bet at 100.00 EUR (its stake), which those prices
   never reach: the CPU of pricing every watched bet at every change.
3. **taken**: every match's home price shortened at once (the offers rise past the rules): the time
   from that write to each cash-out's commit (PostgreSQL's clock on both sides), p50/p99/max, and
   the automatic cash-outs per second until the last.

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
import psycopg
import redis
from google.protobuf.timestamp_pb2 import Timestamp
from livebet.betting.v1 import bet_pb2, betting_service_pb2_grpc, wallet_service_pb2_grpc
from livebet.betting.v1 import betting_service_pb2 as bs
from livebet.betting.v1 import wallet_service_pb2 as ws
from livebet.common.v1 import common_pb2
from livebet.feed.v1 import event_pb2 as ev

from betting.bench import one_betting_service, postgres_pids
from mesh import eventloop
from mesh.process import cpu_seconds
from pricing.live import codec
from pricing.live.engine import Engine

#: the home price the bets are placed at, a longer one (offers fall), a shorter one (offers rise)
PRICES = {"placed": ("2.3", "3.3", "3.2"), "longer": ("2.5", "3.2", "3.0"), "shorter": ("2.0", "3.4", "3.8")}
STAKE = 10_000  # 100.00 EUR


def _snapshots(matches: int) -> dict[str, list[bytes]]:
    """Each match's snapshot at each price set, written by the engine's code."""
    now = Timestamp()
    now.GetCurrentTime()
    out: dict[str, list[bytes]] = {name: [] for name in PRICES}
    for m in range(matches):
        for name, (home, draw, away) in PRICES.items():
            engine = Engine()
            e = ev.FeedEvent(event_id=f"ba:{m}", provider="bench", match_id=f"ba:{m}")
            f = e.fixture_change.fixture
            f.match_id = f"ba:{m}"
            f.pre_match_odds.home.decimal, f.pre_match_odds.draw.decimal, f.pre_match_odds.away.decimal = (
                home, draw, away,
            )  # fmt: skip
            engine.apply(e)
            out[name].append(codec.snapshot(engine.matches[f"ba:{m}"], now))
    return out


def _bet(i: int, m: int) -> bs.PlaceBetRequest:
    s = bet_pb2.Selection()
    s.outcome.market.match_id, s.outcome.market.market_key, s.outcome.market.market_type = f"ba:{m}", "1x2", "1x2"
    s.outcome.outcome_id = "home"
    s.requested_odds.decimal = "1.01"
    return bs.PlaceBetRequest(
        request_id=f"ba-{i}",
        selections=[s],
        stake=common_pb2.Money(currency_code="EUR", minor_units=STAKE),
        odds_change_policy=bet_pb2.ODDS_CHANGE_POLICY_ANY,
    )


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def _run(target: str, redis_url: str, dsn: str, pid: int, pg: int, args: argparse.Namespace) -> dict[str, Any]:
    snaps = _snapshots(args.matches)
    r = redis.Redis.from_url(redis_url)

    def write(name: str) -> None:
        pipe = r.pipeline(transaction=False)
        for m, snap in enumerate(snaps[name]):
            pipe.set(codec.SNAP_KEY + f"ba:{m}", snap)
        pipe.execute()

    write("placed")
    async with grpc.aio.insecure_channel(target) as ch:
        stub = betting_service_pb2_grpc.BettingServiceStub(ch)
        wallet = wallet_service_pb2_grpc.WalletServiceStub(ch)
        players = [f"auto-{p}" for p in range(args.players)]
        for player in players:
            amount = common_pb2.Money(currency_code="EUR", minor_units=STAKE * (args.bets // args.players + 1))
            md = (("x-livebet-account", player),)
            await wallet.Deposit(ws.DepositRequest(request_id="seed", amount=amount), metadata=md)
        bets: list[tuple[str, str]] = []

        async def place(i: int) -> None:
            player = players[i % len(players)]
            reply = await stub.PlaceBet(
                _bet(i, i % args.matches), metadata=(("x-livebet-account", player),), timeout=30
            )
            if reply.bet.status != bet_pb2.BET_STATUS_ACCEPTED:
                raise RuntimeError(f"bet not accepted: {reply.bet}")
            bets.append((player, reply.bet.bet_id))

        for start in range(0, args.bets, 50):
            await asyncio.gather(*(place(i) for i in range(start, min(args.bets, start + 50))))

        async def phase(seconds: float) -> dict[str, float]:
            cpu, t0, k = cpu_seconds([pid]).get(pid, 0.0), time.monotonic(), 0
            while time.monotonic() - t0 < seconds:
                k += 1
                write("longer" if k % 2 else "placed")
                await asyncio.sleep(1 / args.moves)
            elapsed = time.monotonic() - t0
            used = cpu_seconds([pid]).get(pid, 0.0) - cpu
            writes = round(k * args.matches / elapsed, 1)
            return {"betting_cpu_pct": round(100 * used / elapsed, 1), "snapshot_writes_per_s": writes}

        baseline = await phase(args.seconds)
        rule = common_pb2.Money(currency_code="EUR", minor_units=STAKE)
        for player, bet_id in bets:
            await stub.SetAutoCashOut(
                bs.SetAutoCashOutRequest(bet_id=bet_id, amount=rule), metadata=(("x-livebet-account", player),)
            )
        await asyncio.sleep(1.5)  # every rule read and priced once
        watching = await phase(args.seconds)
        write("placed")
        await asyncio.sleep(1.0)

    with psycopg.connect(dsn, autocommit=True) as conn:
        pg_pids = postgres_pids(pg)
        cpu_before = cpu_seconds([pid, *pg_pids])
        wall = time.monotonic()
        (t0,) = conn.execute("SELECT clock_timestamp()").fetchone()  # type: ignore[misc]
        write("shorter")
        deadline = time.monotonic() + 120
        while True:
            (done,) = conn.execute("SELECT count(*) FROM betting.cash_outs").fetchone()  # type: ignore[misc]
            if done >= len(bets) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        wall = time.monotonic() - wall
        cpu_after = cpu_seconds([pid, *postgres_pids(pg)])
        rows = conn.execute("SELECT extract(epoch FROM created_at - %s) FROM betting.cash_outs", (t0,)).fetchall()

    def used(pids: list[int]) -> float:
        return sum(cpu_after.get(p, 0.0) - cpu_before.get(p, 0.0) for p in pids)

    lat = [float(x) * 1000 for (x,) in rows]
    taken = {
        "cashed_out": len(lat),
        "of": len(bets),
        "p50_ms": round(_percentile(lat, 50), 1),
        "p99_ms": round(_percentile(lat, 99), 1),
        "max_ms": round(max(lat, default=0.0), 1),
        "per_s": round(len(lat) / (max(lat) / 1000), 1) if lat and max(lat) > 0 else 0.0,
        "betting_cpu_pct": round(100 * used([pid]) / wall, 1),
        "postgres_cpu_pct": round(100 * used([p for p in cpu_after if p != pid]) / wall, 1),
    }
    return {"baseline": baseline, "watching": watching, "taken": taken}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    ap.add_argument("--bets", type=int, default=1000, help="accepted singles, each with a rule")
    ap.add_argument("--players", type=int, default=100)
    ap.add_argument("--matches", type=int, default=50)
    ap.add_argument("--moves", type=float, default=2.0, help="odds changes per match per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="per phase (baseline, watching)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    with one_betting_service("livebet-bench-auto-") as (env, betting, procs):
        print(
            f"{args.bets} bets with automatic cash-outs on {args.matches} matches,"
            f" {args.moves:g} odds changes per match per second, {args.seconds:.0f} s per phase ...",
            file=sys.stderr,
        )
        got = eventloop.run(
            _run(
                betting.spec.health_target,
                env["LIVEBET_REDIS_URL"],
                env["LIVEBET_POSTGRES_DSN"],
                betting.pid,
                procs[2].pid,  # PostgreSQL, started last
                args,
            )
        )
    setup = {k: getattr(args, k) for k in ("bets", "players", "matches", "moves", "seconds")}
    if args.json:
        print(json.dumps({"setup": setup, **got}, indent=2))
        return 0
    print(f"automatic cash-out: {setup}")
    for name in ("baseline", "watching"):
        f = got[name]
        print(
            f"  {name:>9}: betting CPU {f['betting_cpu_pct']:5.1f} % of a core"
            f" ({f['snapshot_writes_per_s']:.0f} snapshot writes/s)"
        )
    t = got["taken"]
    print(
        f"  taken: {t['cashed_out']} of {t['of']} cashed out by the service; odds written -> cash-out committed:"
        f" p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms, max {t['max_ms']:.1f} ms ({t['per_s']:.0f}/s);"
        f" meanwhile betting CPU {t['betting_cpu_pct']:.0f} %, PostgreSQL {t['postgres_cpu_pct']:.0f} % of a core"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
