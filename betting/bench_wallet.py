"""``make bench-wallet``: deposits per second, and what a settlement in flight does to them.

Starts NATS, Valkey, a durable PostgreSQL and one betting service (as ``make bench-bets`` does),
and has ``--clients`` concurrent clients call ``WalletService.Deposit`` (10.00 EUR, each with its
own request id) for ``--players`` players, picked at random, in two phases of ``--seconds``:

1. **alone**: only the deposits;
2. **beside a settlement**: meanwhile another connection keeps ``--locked`` of the players'
   balance rows locked for ``--hold`` seconds out of every ``--every`` (as a settlement of a big
   market does until its commit), so that those players' deposits wait for it.

Each phase prints the deposits per second and their latency p50/p99/max, and how many of them
were for the locked players. Before the change that shards ``cash:<cur>`` and locks it last, a
deposit waiting for its player's row held the one cash row meanwhile, and every other deposit
waited behind it.

``--json`` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from typing import Any

import grpc
import psycopg
from hdrh.histogram import HdrHistogram
from livebet.betting.v1 import wallet_service_pb2 as ws
from livebet.betting.v1 import wallet_service_pb2_grpc
from livebet.common.v1 import common_pb2

from betting.bench import one_betting_service
from mesh import eventloop

AMOUNT = common_pb2.Money(currency_code="EUR", minor_units=1_000)


async def _hold(dsn: str, players: list[str], hold: float, every: float, stop: asyncio.Event) -> int:
    """Lock the players' balance rows ``hold`` s out of every ``every`` s until ``stop``; how often."""
    times = 0
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        while not stop.is_set():
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM betting.ledger_accounts WHERE account_id = ANY(%s) ORDER BY account_id FOR UPDATE",
                    ([f"player:{p}:EUR" for p in players],),
                )
                times += 1
                await asyncio.sleep(hold)
            await asyncio.sleep(max(0.0, every - hold))
    return times


async def _phase(
    target: str, dsn: str, args: argparse.Namespace, name: str, locked: list[str] | None
) -> dict[str, Any]:
    players = [f"w{i}" for i in range(args.players)]
    hist = HdrHistogram(1, 60_000_000, 3)
    ids = itertools.count()
    counts = {"done": 0, "failed": 0, "locked": 0}
    stop = asyncio.Event()
    rng = random.Random(7)
    async with grpc.aio.insecure_channel(target) as channel:
        wallet = wallet_service_pb2_grpc.WalletServiceStub(channel)
        deadline = time.monotonic() + args.seconds

        async def client() -> None:
            while time.monotonic() < deadline:
                player = rng.choice(players)
                req = ws.DepositRequest(request_id=f"{name}-{next(ids)}", amount=AMOUNT)
                t0 = time.perf_counter()
                try:
                    await wallet.Deposit(req, metadata=(("x-livebet-account", player),), timeout=30)
                except grpc.aio.AioRpcError:
                    counts["failed"] += 1
                    continue
                hist.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
                counts["done"] += 1
                counts["locked"] += player in (locked or ())

        holder = asyncio.create_task(_hold(dsn, locked, args.hold, args.every, stop)) if locked is not None else None
        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        elapsed = time.monotonic() - started
        stop.set()
        held = await holder if holder is not None else 0
    return {
        "deposits": counts["done"],
        "failed": counts["failed"],
        "per_s": counts["done"] / elapsed,
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "max_ms": hist.get_max_value() / 1000,
        "for_locked_players": counts["locked"],
        "locks_taken": held,
    }


async def _run(target: str, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:  # every player's accounts exist first
        wallet = wallet_service_pb2_grpc.WalletServiceStub(channel)
        for i in range(args.players):
            req = ws.DepositRequest(request_id="seed", amount=AMOUNT)
            await wallet.Deposit(req, metadata=(("x-livebet-account", f"w{i}"),), timeout=30)
    alone = await _phase(target, dsn, args, "alone", None)
    beside = await _phase(target, dsn, args, "beside", [f"w{i}" for i in range(args.locked)])
    return {"alone": alone, "beside_a_settlement": beside}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--players", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=8.0, help="per phase")
    ap.add_argument("--locked", type=int, default=10, help="players whose rows the 'settlement' holds")
    ap.add_argument("--hold", type=float, default=0.15, help="seconds it holds them")
    ap.add_argument("--every", type=float, default=0.3, help="... out of every this many seconds")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    with one_betting_service("livebet-bench-wallet-") as (env, betting, _):
        what = f"{args.clients} clients, {args.players} players, {args.seconds:.0f} s per phase"
        print(f"deposits: {what} ...", file=sys.stderr)
        got = eventloop.run(_run(betting.spec.health_target, env["LIVEBET_POSTGRES_DSN"], args))
    setup = {k: getattr(args, k) for k in ("clients", "players", "seconds", "locked", "hold", "every")}
    if args.json:
        print(json.dumps({"setup": setup, **got}, indent=2))
        return 0
    print(f"Deposit: {setup}")
    for name, f in got.items():
        print(
            f"  {name:>19}: {f['per_s']:6.0f} deposits/s, p50 {f['p50_ms']:6.1f} ms, p99 {f['p99_ms']:6.1f} ms,"
            f" max {f['max_ms']:6.1f} ms; {f['failed']} failed; {f['for_locked_players']} for the locked players"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
