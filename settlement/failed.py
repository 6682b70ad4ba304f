"""``python -m settlement.failed``: the FEED events settlement could not apply, and applying them
again once the cause is fixed.

    python -m settlement.failed                # the parked events not applied since
    python -m settlement.failed --all          # with those applied again by hand
    python -m settlement.failed --retry        # apply every parked event again, in stream order
    python -m settlement.failed --retry 812 9  # only these (FEED stream sequences)

The settlement service parks an event (``settlement.failed_events``) when it is not a FeedEvent or
failed three times for a reason other than PostgreSQL or NATS being down, and goes on with the
next; the alert ``SettlementEventsParked`` says one was. Applying one again goes through the same
``Settler.on_event`` as the service: settling, voiding and rolling back are idempotent, so an event
whose effect is already there changes nothing. An event applied after later ones of its match
(a result after its correction's rollback, say) is applied as it is: read the list first. The
database is ``LIVEBET_POSTGRES_DSN``'s, as the service's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from livebet.feed.v1 import event_pb2 as ev
from psycopg_pool import AsyncConnectionPool

from betting.adapters.store import Pooled
from mesh.settings import Settings
from settlement.adapters.store import Store
from settlement.service import Settler, certainty_setting


def _line(row: dict[str, Any]) -> str:
    state = f"applied by hand {row['retried_at']:%Y-%m-%d %H:%M:%S}" if row["retried_at"] else "parked"
    what = f"{row['kind'] or '?'} {row['event_id'] or '(not a FeedEvent)'} match {row['match_id'] or '?'}"
    out = f"{row['stream_seq']:>10}  {row['failed_at']:%Y-%m-%d %H:%M:%S}  {state:<30} {what}\n"
    out += f"{'':>12}{row['error']}"
    if row["retry_error"]:
        out += f"\n{'':>12}again by hand: {row['retry_error']}"
    return out


async def run(dsn: str, retry: bool, only: Sequence[int], include_retried: bool) -> int:
    """Prints the parked events (and applies them again with ``retry``); the exit status is 1 when
    one applied again failed again."""
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        await pool.open(wait=True, timeout=10)
        store = Store(Pooled(pool))
        rows = await store.parked(include_retried or bool(only))
        if only:
            rows = [r for r in rows if r["stream_seq"] in set(only)]
            missing = set(only) - {r["stream_seq"] for r in rows}
            if missing:
                print(f"not parked: {', '.join(map(str, sorted(missing)))}", file=sys.stderr)
                return 2
        if not retry:
            for r in rows:
                print(_line(r))
            print(f"{len(rows)} event(s)")
            return 0
        settler, failures = Settler(store, certainty_setting()), 0
        for r in rows:
            try:
                e = ev.FeedEvent.FromString(bytes(r["payload"]))
                await settler.on_event(e, r["stream_seq"])
            except Exception as err:  # reported and recorded; the next one is tried
                failures += 1
                await store.retried(r["stream_seq"], f"{type(err).__name__}: {err}")
                print(f"{r['stream_seq']}: failed again: {type(err).__name__}: {err}")
                continue
            await store.retried(r["stream_seq"], None)
            print(f"{r['stream_seq']}: applied")
        print(f"{len(rows) - failures} applied, {failures} failed again; {settler.settled_bets} bet(s) settled")
        return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m settlement.failed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--retry", action="store_true", help="apply the parked events again, in stream order")
    parser.add_argument("--all", action="store_true", help="list those applied again by hand too")
    parser.add_argument("seq", nargs="*", type=int, help="only these FEED stream sequences")
    args = parser.parse_args(argv)
    dsn = Settings.from_env("settlement").postgres_dsn
    return asyncio.run(run(dsn, args.retry, args.seq, args.all))


if __name__ == "__main__":
    raise SystemExit(main())
