"""``python -m settlement.bench`` (make bench-settle): how long settling 100,000 open bets on one
match takes, from the full-time result to the last ledger posting.

It starts a durable PostgreSQL (as ``make run``) in a temporary folder, applies the betting and
settlement migrations, and sets up ``--bets`` accepted single bets on one match spread over 1X2,
total 2.5 and Asian handicap -0.25 outcomes and ``--players`` players, with their stakes held in
the ledger, directly in SQL (setup is not measured). It then does what the settlement service does
when the full-time result arrives (:class:`settlement.service.Settler`): read the open legs,
decide each outcome with ``pricing.settlement``, and call ``betting.settle_market`` per market.
It checks that every bet was settled and that the ledger still balances. Goal (issue 7): <= 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool

from betting.adapters.store import Pooled
from mesh import infra
from mesh.migrate import migrate
from mesh.process import Process
from settlement.adapters.store import Store
from settlement.service import Settler

GOAL_SECONDS = 10.0
REPO = Path(__file__).resolve().parent.parent
PICKS = [
    ("1x2", "1x2", "home", "2.10"),
    ("1x2", "1x2", "draw", "3.40"),
    ("1x2", "1x2", "away", "3.60"),
    ("total|total=2.5", "total", "over", "1.95"),
    ("total|total=2.5", "total", "under", "1.90"),
    ("asian_handicap|hcp=-0.25", "asian_handicap", "home", "1.98"),
    ("asian_handicap|hcp=-0.25", "asian_handicap", "away", "1.92"),
]

SETUP = """
INSERT INTO betting.ledger_accounts (account_id, kind, owner, currency)
SELECT 'player:bp' || g || ':EUR', 'player', 'bp' || g, 'EUR' FROM generate_series(0, %(players)s - 1) g
UNION ALL SELECT 'held:bp' || g || ':EUR', 'held', 'bp' || g, 'EUR' FROM generate_series(0, %(players)s - 1) g
UNION ALL VALUES ('house:EUR', 'house', '', 'EUR'), ('cash:EUR', 'cash', '', 'EUR')
ON CONFLICT DO NOTHING;

INSERT INTO betting.transactions (transaction_id, kind, owner, currency) VALUES
  ('00000000-0000-0000-0000-000000000001', 'deposit', 'bench', 'EUR'),
  ('00000000-0000-0000-0000-000000000002', 'stake_hold', 'bench', 'EUR');
INSERT INTO betting.postings (transaction_id, account_id, amount)
SELECT '00000000-0000-0000-0000-000000000001'::uuid, 'player:bp' || g || ':EUR', 10000000
  FROM generate_series(0, %(players)s - 1) g
UNION ALL SELECT '00000000-0000-0000-0000-000000000001'::uuid, 'cash:EUR', -10000000::bigint * %(players)s;

CREATE TEMP TABLE picks (k int, market_key text, market_type text, outcome_id text, odds numeric);
INSERT INTO picks SELECT * FROM unnest(%(k)s::int[], %(keys)s::text[], %(types)s::text[], %(outcomes)s::text[],
                                       %(odds)s::numeric[]);

INSERT INTO betting.bets (bet_id, account_id, request_id, request_digest, currency, stake, policy, status, odds,
                          potential_payout, in_play, placed_at, decide_at, decided_at)
SELECT md5('bet' || g)::uuid, 'bp' || (g %% %(players)s), 'r' || g, '\\x00'::bytea, 'EUR', 100 + (g %% 7) * 50, 1,
       'accepted', p.odds, floor((100 + (g %% 7) * 50) * p.odds), false,
       now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour'
  FROM generate_series(1, %(bets)s) g JOIN picks p ON p.k = g %% %(n)s;

INSERT INTO betting.selections (bet_id, leg, match_id, market_key, market_type, outcome_id, requested_odds,
                                market_version, seen_version, odds)
SELECT md5('bet' || g)::uuid, 0, 'bench:1', p.market_key, p.market_type, p.outcome_id, p.odds, 1, 1, p.odds
  FROM generate_series(1, %(bets)s) g JOIN picks p ON p.k = g %% %(n)s;

INSERT INTO betting.postings (transaction_id, account_id, amount, bet_id)
SELECT '00000000-0000-0000-0000-000000000002'::uuid, a, v, b FROM (
  SELECT 'player:' || account_id || ':EUR' AS a, -stake AS v, bet_id AS b FROM betting.bets
  UNION ALL SELECT 'held:' || account_id || ':EUR', stake, bet_id FROM betting.bets) x
ORDER BY a;
"""


async def _migrate(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn, "betting", REPO / "betting" / "migrations")
        await migrate(conn, "settlement", REPO / "settlement" / "migrations")


async def _settle(dsn: str) -> tuple[float, int, float]:
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False, kwargs={"autocommit": True})
    await pool.open(wait=True)
    store = Store(Pooled(pool))
    # what the minute's sweep of decided-yet-open bets costs with this many open bets (it finds none)
    start = time.perf_counter()
    swept = await store.settle_decided()
    sweep = time.perf_counter() - start
    assert swept == 0, swept
    await store.record_state("bench:1", 2, 1, True, (1, 1), datetime.now(UTC))
    start = time.perf_counter()
    settled = await Settler(store).settle_match("bench:1")
    elapsed = time.perf_counter() - start
    await pool.close()
    return elapsed, settled, sweep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    ap.add_argument("--bets", type=int, default=100_000)
    ap.add_argument("--players", type=int, default=2_000)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="livebet-bench-settle-"))
    root.chmod(0o755)
    port = infra.free_port()
    pg = Process(infra.postgres(root / "pg", port, durable=True), root / "pg.log").start()
    try:
        dsn = infra.postgres_dsn(port)
        asyncio.run(_migrate(dsn))
        print(f"setting up {args.bets:,} open bets for {args.players:,} players ...", file=sys.stderr)
        t0 = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            params = {
                "players": args.players,
                "bets": args.bets,
                "n": len(PICKS),
                "k": list(range(len(PICKS))),
                "keys": [p[0] for p in PICKS],
                "types": [p[1] for p in PICKS],
                "outcomes": [p[2] for p in PICKS],
                "odds": [p[3] for p in PICKS],
            }
            for statement in filter(None, (x.strip() for x in SETUP.split(";\n"))):
                conn.execute(statement, params)
        print(f"  set up in {time.perf_counter() - t0:.1f} s; settling (full time 2-1) ...", file=sys.stderr)
        elapsed, settled, sweep = asyncio.run(_settle(dsn))
        with psycopg.connect(dsn, autocommit=True) as conn:
            open_left = conn.execute("SELECT count(*) FROM betting.bets WHERE status = 'accepted'").fetchone()
            unbalanced = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM betting.postings GROUP BY transaction_id"
                " HAVING sum(amount) <> 0) x"
            ).fetchone()
            held = conn.execute("SELECT sum(balance) FROM betting.ledger_accounts WHERE kind = 'held'").fetchone()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    ok = settled == args.bets and open_left == (0,) and unbalanced == (0,) and held == (0,)
    if args.json:
        figures = {"bets": args.bets, "settled": settled, "seconds": round(elapsed, 3)}
        figures |= {"bets_per_s": round(settled / elapsed), "goal_seconds": GOAL_SECONDS, "checks_ok": ok}
        figures |= {"sweep_ms": round(sweep * 1000, 1)}
        print(json.dumps(figures, indent=2))
        return 0 if ok else 1
    print(f"\nsettled {settled:,} bets on one match in {elapsed:.2f} s ({settled / elapsed:,.0f} bets/s)")
    print(f"goal <= {GOAL_SECONDS:.0f} s: {'met' if elapsed <= GOAL_SECONDS else 'NOT met'}")
    print(f"checks: every bet settled, ledger balanced, nothing left held: {'yes' if ok else 'NO'}")
    print(f"the sweep of decided-yet-open bets (each minute) over the {args.bets:,} open bets: {sweep * 1000:.0f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
