"""The settlement service's PostgreSQL: what it knows of results (schema ``settlement``), the open
legs it has to settle (read from ``betting``), and the call that moves the money
(``betting.settle_market``, owned by the betting service's migrations).

Every settlement action that changes something (a market settled, a settlement rolled back, bets
voided by a cancel, a cancel rolled back) also writes a ``SettlementEvent`` to ``betting.outbox``
in the same transaction; the betting service's relay publishes it to the JetStream stream ``BETS``
on ``settlements.<match>``, with ``Nats-Msg-Id`` = its ``event_id``, as the contract in
``livebet/settlement/v1/settlement.proto`` says."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import psycopg
from livebet.settlement.v1 import settlement_pb2 as sp
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from betting.adapters.store import PoolSource, money, trace_transaction
from betting.domain.rules import specifiers_of
from feed.adapters.jetstream import token
from settlement.domain.results import MatchResult, OpenLeg

SUBJECT_ROOT = "settlements"
ORIGINS = {
    "score": sp.SETTLEMENT_ORIGIN_SCORE,
    "provider": sp.SETTLEMENT_ORIGIN_PROVIDER,
    "manual": sp.SETTLEMENT_ORIGIN_MANUAL,
}


def settlement_message(
    settlement_id: str,
    match_id: str,
    market_key: str,
    action: int,
    origin: int,
    version: int,
    bets: int,
    payout: int,
    results: list[dict[str, Any]] = (),  # type: ignore[assignment]
    actor: str = "",
    reason: str = "",
    at: datetime | None = None,
) -> sp.Settlement:
    """One settlement action on one market as the contract has it (``results``: the stored
    results, one per outcome and price; the message has one result per outcome)."""
    s = sp.Settlement(
        settlement_id=settlement_id,
        action=action,  # type: ignore[arg-type]
        origin=origin,  # type: ignore[arg-type]
        version=version,
        bets_affected=bets,
        total_payout=money(payout, "EUR"),
        actor=actor,
        reason=reason,
    )
    s.market.match_id, s.market.market_key, s.market.market_type = match_id, market_key, market_key.split("|")[0]
    for k, v in specifiers_of(market_key):
        s.market.specifiers.add(key=k, value=v)
    seen: set[str] = set()
    for r in results:
        if r["outcome_id"] not in seen:
            seen.add(r["outcome_id"])
            s.outcomes.add(outcome_id=r["outcome_id"], result=int(r["result"]))
    if at is not None:
        s.created_at.FromDatetime(at)
    else:
        s.created_at.GetCurrentTime()
    return s


async def write_event(cur: psycopg.AsyncCursor[Any], event_id: str, settlement: sp.Settlement) -> None:
    """The action's ``SettlementEvent``, in the caller's transaction, for the outbox relay."""
    event = sp.SettlementEvent(event_id=event_id, settlement=settlement)
    await cur.execute(  # one round trip: the row, and the relays woken when it commits
        "WITH row AS (INSERT INTO betting.outbox (subject, msg_id, payload) VALUES (%s, %s, %s) RETURNING 1)"
        " SELECT pg_notify('betting_outbox', '') FROM row",
        (f"{SUBJECT_ROOT}.{token(settlement.market.match_id)}", event_id, event.SerializeToString()),
    )


def _cancel_origin(cancel_id: str) -> int:
    return sp.SETTLEMENT_ORIGIN_MANUAL if cancel_id.startswith("manual:") else sp.SETTLEMENT_ORIGIN_PROVIDER


class Cancelled(NamedTuple):
    """What a cancel did: bets it settled, cashed-out bets whose cash-out it annulled (reopened
    before the void), and the matches of those bets' legs (a result known there may settle them)."""

    settled: int
    annulled: int
    matches: tuple[str, ...]


class Store:
    def __init__(self, source: PoolSource) -> None:
        self.source = source

    @property
    def pool(self) -> AsyncConnectionPool:
        return self.source.pool

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """One transaction that moves money: the outbox events it writes continue the current trace."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await trace_transaction(cur)
            yield cur

    async def record_state(
        self, match_id: str, home: int, away: int, ended: bool, halftime: tuple[int, int] | None, at: datetime
    ) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                """INSERT INTO settlement.matches AS m (match_id, home, away, ht_home, ht_away, ht_at, ended, ended_at)
                   VALUES (%(m)s, %(h)s, %(a)s, %(hh)s, %(ha)s, CASE WHEN %(hh)s::int IS NULL THEN NULL ELSE %(t)s END,
                           %(e)s, CASE WHEN %(e)s THEN %(t)s END)
                   ON CONFLICT (match_id) DO UPDATE SET
                     home = excluded.home, away = excluded.away,
                     ht_home = coalesce(m.ht_home, excluded.ht_home), ht_away = coalesce(m.ht_away, excluded.ht_away),
                     ht_at = coalesce(m.ht_at, excluded.ht_at),
                     ended = m.ended OR excluded.ended, ended_at = coalesce(m.ended_at, excluded.ended_at),
                     updated_at = now()""",
                {
                    "m": match_id,
                    "h": home,
                    "a": away,
                    "hh": halftime[0] if halftime else None,
                    "ha": halftime[1] if halftime else None,
                    "e": ended,
                    "t": at,
                },
            )

    async def record_goal(self, event_id: str, match_id: str, seq: int, side: str, at: datetime) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                """INSERT INTO settlement.goals (event_id, match_id, stream_seq, side, received_at)
                   VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING""",
                (event_id, match_id, seq, side, at),
            )

    async def result(self, match_id: str) -> tuple[MatchResult, dict[str, datetime]] | None:
        """The match's result so far and when each part became known (``ft``, ``ht``, ``goal<n>``)."""
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT home, away, ht_home, ht_away, ht_at, ended, ended_at FROM settlement.matches"
                " WHERE match_id = %s",
                (match_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            await cur.execute(
                "SELECT side, received_at FROM settlement.goals WHERE match_id = %s ORDER BY stream_seq", (match_id,)
            )
            goals = await cur.fetchall()
        home, away, hth, hta, ht_at, ended, ended_at = row
        times: dict[str, datetime] = {f"goal{i + 1}": at for i, (_, at) in enumerate(goals)}
        if ended_at:
            times["ft"] = ended_at
        if ht_at:
            times["ht"] = ht_at
        halftime = (hth, hta) if hth is not None else None
        return MatchResult(home, away, ended, halftime, tuple(side for side, _ in goals)), times

    async def open_legs(self, match_id: str, include_settled: bool = False) -> list[OpenLeg]:
        """The distinct (market, outcome, odds) of the legs of accepted bets not settled yet; with
        ``include_settled`` those of settled bets too (to notice a corrected result)."""
        statuses = ["accepted", "settled"] if include_settled else ["accepted"]
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                """SELECT DISTINCT s.market_key, s.outcome_id, s.odds
                   FROM betting.selections s JOIN betting.bets b ON b.bet_id = s.bet_id
                   WHERE s.match_id = %s AND b.status = ANY(%s)
                     AND (s.settled_version IS NULL OR %s)""",
                (match_id, statuses, include_settled),
            )
            return [OpenLeg(k, o, Decimal(odds)) for k, o, odds in await cur.fetchall()]

    async def keep_provider_outcomes(
        self, match_id: str, market_key: str, outcomes: list[tuple[str, int, str, str]], decided_at: datetime
    ) -> None:
        """Keep a provider's settlement of a market as it came (the latest replaces the one before)."""
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                """INSERT INTO settlement.provider_outcomes (match_id, market_key, outcomes, decided_at)
                   VALUES (%s, %s, %s, %s)
                   ON CONFLICT (match_id, market_key) DO UPDATE
                   SET outcomes = excluded.outcomes, decided_at = excluded.decided_at, received_at = now()""",
                (match_id, market_key, Jsonb(outcomes), decided_at),
            )

    async def provider_outcomes(self, match_id: str) -> list[tuple[str, list[tuple[str, int, str, str]], datetime]]:
        """The provider's settlements kept for the match: (market key, outcomes, decided at)."""
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT market_key, outcomes, decided_at FROM settlement.provider_outcomes WHERE match_id = %s"
                " ORDER BY market_key",
                (match_id,),
            )
            return [(k, [tuple(o) for o in outcomes], when) for k, outcomes, when in await cur.fetchall()]

    async def settle_provider(
        self, match_id: str, market_key: str, results: list[dict[str, Any]], decided_at: datetime
    ) -> tuple[int, int, int, bool]:
        """A provider's settlement: like :meth:`settle`, unless the market was settled before with
        another result for one of these outcomes (then nothing is done and ``conflict`` is True)."""
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT version, results FROM settlement.settlements WHERE match_id = %s AND market_key = %s"
                " ORDER BY version DESC LIMIT 1",
                (match_id, market_key),
            )
            row = await cur.fetchone()
        if row is not None:
            before = {(r["outcome_id"], r["odds"]): (r["result"], r["rpu"]) for r in row[1]}
            for r in results:
                old = before.get((r["outcome_id"], r["odds"]))
                if old is not None and (old[0], Decimal(str(old[1]))) != (r["result"], Decimal(str(r["rpu"]))):
                    return int(row[0]), 0, 0, True
        version, count, payout = await self.settle(match_id, market_key, results, decided_at, "provider")
        return version, count, payout, False

    async def settle(
        self,
        match_id: str,
        market_key: str,
        results: list[dict[str, Any]],
        decided_at: datetime,
        origin: str,
        correct_any: bool = False,
        actor: str = "",
        reason: str = "",
    ) -> tuple[int, int, int]:
        """Settle one market; returns (version, bets settled now, their total payout). The first
        settlement is version 1. The same results again change nothing. Other results for an
        outcome already settled from the same origin are a correction: that version is rolled back
        and the market settled again at the next version."""
        async with self._transaction() as cur:
            await cur.execute(
                "SELECT version, results, decided_at, origin, rolled_back_at FROM settlement.settlements"
                " WHERE match_id = %s AND market_key = %s ORDER BY version DESC LIMIT 1 FOR UPDATE",
                (match_id, market_key),
            )
            row = await cur.fetchone()
            new = False  # a settlement version made by this call
            if row is None or row[4] is not None:
                version = 1 if row is None else int(row[0]) + 1
                await cur.execute(
                    """INSERT INTO settlement.settlements (match_id, market_key, version, origin, results, decided_at)
                       VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (match_id, market_key, version) DO NOTHING""",
                    (match_id, market_key, version, origin, Jsonb(results), decided_at),
                )
                new = cur.rowcount == 1
                stored, decided = results, decided_at
            else:
                version, stored, decided, stored_origin = int(row[0]), row[1], row[2], row[3]
                before = {(r["outcome_id"], r["odds"]): (r["result"], str(r["rpu"])) for r in stored}
                changed = [
                    r
                    for r in results
                    if (r["outcome_id"], r["odds"]) in before
                    and before[(r["outcome_id"], r["odds"])] != (r["result"], str(r["rpu"]))
                ]
                if changed and (stored_origin == origin or correct_any):  # a correction: roll back, settle anew
                    await self._rollback(cur, match_id, market_key, version, reason or "corrected result", actor)
                    version += 1
                    new = True
                    await cur.execute(
                        """INSERT INTO settlement.settlements
                           (match_id, market_key, version, origin, results, decided_at)
                           VALUES (%s, %s, %s, %s, %s, %s)""",
                        (match_id, market_key, version, origin, Jsonb(results), decided_at),
                    )
                    stored, decided = results, decided_at
            # the stored results win: a leg with new odds is added to them, a known one keeps its result
            known = {(r["outcome_id"], r["odds"]) for r in stored}
            merged = list(stored) + [r for r in results if (r["outcome_id"], r["odds"]) not in known]
            if len(merged) != len(stored):
                await cur.execute(
                    "UPDATE settlement.settlements SET results = %s WHERE match_id = %s AND market_key = %s"
                    " AND version = %s",
                    (Jsonb(merged), match_id, market_key, version),
                )
            await cur.execute(
                "SELECT * FROM betting.settle_market(%s, %s, %s, %s, %s)",
                (match_id, market_key, version, Jsonb(merged), decided),
            )
            got = await cur.fetchone()
            count, payout = (int(got[0]), int(got[1])) if got else (0, 0)
            if actor:
                await cur.execute(
                    "UPDATE settlement.settlements SET actor = %s, reason = %s WHERE match_id = %s AND market_key = %s"
                    " AND version = %s",
                    (actor, reason, match_id, market_key, version),
                )
            await cur.execute(
                "UPDATE settlement.settlements SET bets_settled = bets_settled + %s,"
                " total_payout = total_payout + %s WHERE match_id = %s AND market_key = %s AND version = %s"
                " RETURNING settlement_id, bets_settled, origin, actor, reason",
                (count, payout, match_id, market_key, version),
            )
            sid, settled, stored_origin, stored_actor, stored_reason = await cur.fetchone()  # type: ignore[misc]
            if new or count:  # settled now, or more bets settled by it: the same results again are no event
                message = settlement_message(
                    str(sid), match_id, market_key, sp.SETTLEMENT_ACTION_SETTLE, ORIGINS[stored_origin], version,
                    count, payout, merged, stored_actor, stored_reason,
                )  # fmt: skip
                await write_event(cur, f"{sid}:settle:{settled}", message)
            return version, count, payout

    @staticmethod
    async def _rollback(cur: Any, match_id: str, market_key: str, version: int, reason: str, actor: str = "") -> int:
        await cur.execute("SELECT * FROM betting.rollback_market(%s, %s, %s)", (match_id, market_key, version))
        got = await cur.fetchone()
        reopened = int(got[0]) if got else 0
        await cur.execute(
            "UPDATE settlement.settlements SET rolled_back_at = now(), rollback_reason = %s"
            " WHERE match_id = %s AND market_key = %s AND version = %s RETURNING settlement_id, origin, total_payout",
            (reason, match_id, market_key, version),
        )
        sid, origin, paid = await cur.fetchone()
        message = settlement_message(
            str(sid), match_id, market_key, sp.SETTLEMENT_ACTION_ROLLBACK_SETTLEMENT,
            ORIGINS["manual"] if actor else ORIGINS[origin], version, reopened, -int(paid), actor=actor, reason=reason,
        )  # fmt: skip
        await write_event(cur, f"{sid}:rollback", message)
        return reopened

    async def rollback(self, match_id: str, market_key: str, reason: str, actor: str = "") -> tuple[int, int]:
        """Roll back the market's latest settlement (its bets reopen); (version, bets reopened)."""
        async with self._transaction() as cur:
            await cur.execute(
                "SELECT version FROM settlement.settlements WHERE match_id = %s AND market_key = %s"
                " AND rolled_back_at IS NULL ORDER BY version DESC LIMIT 1 FOR UPDATE",
                (match_id, market_key),
            )
            row = await cur.fetchone()
            if row is None:
                return 0, 0
            # a provider's settlement kept for legs that open again goes with it
            await cur.execute(
                "DELETE FROM settlement.provider_outcomes WHERE match_id = %s AND market_key = %s",
                (match_id, market_key),
            )
            return int(row[0]), await self._rollback(cur, match_id, market_key, int(row[0]), reason, actor)

    async def cancel(
        self,
        cancel_id: str,
        match_id: str,
        market_key: str,
        start: datetime,
        end: datetime | None,
        reason: str,
        actor: str = "",
    ) -> Cancelled:
        """Void the open legs on the market of bets placed in [start, end) and settle what that
        decides (version 0); once per cancel id. A cashed-out bet in the window has its cash-out
        annulled first (``betting.annul_cash_outs``) and is then voided like any other."""
        async with self._transaction() as cur:
            await cur.execute(
                """INSERT INTO settlement.cancels (cancel_id, match_id, market_key, start_time, end_time, reason)
                   VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (cancel_id) DO NOTHING""",
                (cancel_id, match_id, market_key, start, end, reason),
            )
            if cur.rowcount == 0:
                return Cancelled(0, 0, ())  # this cancel was applied before
            await cur.execute(
                "SELECT * FROM betting.annul_cash_outs(%s, %s, %s, %s, %s)",
                (match_id, market_key, start, end, cancel_id),
            )
            annulled = await cur.fetchone()
            reopened = int(annulled[0]) if annulled else 0
            others: tuple[str, ...] = ()
            if reopened:  # the matches of their legs: a result known there may settle them now
                await cur.execute(
                    """SELECT DISTINCT s.match_id FROM betting.cash_outs c
                       JOIN betting.selections s ON s.bet_id = c.bet_id WHERE c.annulled_by = %s""",
                    (cancel_id,),
                )
                others = tuple(r[0] for r in await cur.fetchall())
            await cur.execute(
                """UPDATE betting.selections s
                      SET result = 3, return_per_unit = 1, settled_version = 0, cancelled_by = %s
                     FROM betting.bets b
                    WHERE b.bet_id = s.bet_id AND b.status = 'accepted' AND s.match_id = %s AND s.market_key = %s
                      AND s.settled_version IS NULL AND s.cancelled_by IS NULL
                      AND b.placed_at >= %s AND (%s::timestamptz IS NULL OR b.placed_at < %s)""",
                (cancel_id, match_id, market_key, start, end, end),
            )
            await cur.execute(
                "SELECT * FROM betting.settle_market(%s, %s, 0, '[]'::jsonb, now())", (match_id, market_key)
            )
            got = await cur.fetchone()
            count = int(got[0]) if got else 0
            await cur.execute("UPDATE settlement.cancels SET bets_voided = %s WHERE cancel_id = %s", (count, cancel_id))
            message = settlement_message(
                cancel_id, match_id, market_key, sp.SETTLEMENT_ACTION_VOID, _cancel_origin(cancel_id), 0, count,
                int(got[1]) if got else 0, actor=actor, reason=reason,
            )  # fmt: skip
            await write_event(cur, f"cancel:{cancel_id}", message)
            return Cancelled(count, reopened, others)

    async def rollback_cancels(
        self, match_id: str, market_key: str, start: datetime | None, end: datetime | None
    ) -> int:
        """Undo the cancels of the market (those within [start, end) when given): their legs are open
        again and the bets they settled reopened with compensating entries. Returns bets reopened."""
        async with self._transaction() as cur:
            await cur.execute(
                """UPDATE settlement.cancels SET rolled_back_at = now()
                    WHERE match_id = %s AND market_key = %s AND rolled_back_at IS NULL
                      AND (%s::timestamptz IS NULL OR start_time >= %s)
                      AND (%s::timestamptz IS NULL OR coalesce(end_time, 'infinity') <= %s)
                RETURNING cancel_id""",
                (match_id, market_key, start, start, end, end),
            )
            ids = [r[0] for r in await cur.fetchall()]
            if not ids:
                return 0
            # the bets each cancel settled, which its rollback reopens (for its event)
            await cur.execute(
                """SELECT s.cancelled_by, count(DISTINCT s.bet_id) FROM betting.selections s
                   JOIN betting.bets b ON b.bet_id = s.bet_id
                   WHERE s.cancelled_by = ANY(%s) AND b.status = 'settled' GROUP BY 1""",
                (ids,),
            )
            reopens = dict(await cur.fetchall())
            await cur.execute("UPDATE betting.selections SET cancelled_by = NULL WHERE cancelled_by = ANY(%s)", (ids,))
            await cur.execute("SELECT * FROM betting.rollback_market(%s, %s, 0)", (match_id, market_key))
            got = await cur.fetchone()
            # the cash-outs these cancels annulled stand again (their bets are open again now)
            await cur.execute("SELECT * FROM betting.restore_cash_outs(%s)", (ids,))
            for cancel_id in ids:
                message = settlement_message(
                    cancel_id, match_id, market_key, sp.SETTLEMENT_ACTION_ROLLBACK_VOID, _cancel_origin(cancel_id),
                    0, int(reopens.get(cancel_id, 0)), 0, reason="cancel rolled back",
                )  # fmt: skip
                await write_event(cur, f"cancel:{cancel_id}:rollback", message)
            return int(got[0]) if got else 0

    async def stale_open_bets(self, silent_seconds: float) -> tuple[int, int]:
        """Accepted bets still open on matches that were seen in play, have not ended, and have had
        no state update for ``silent_seconds``: (bets, matches). Nothing will settle them by
        itself: a trader settles or voids their markets."""
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                """SELECT count(DISTINCT b.bet_id), count(DISTINCT m.match_id)
                   FROM settlement.matches m
                   JOIN betting.selections s ON s.match_id = m.match_id AND s.settled_version IS NULL
                   JOIN betting.bets b ON b.bet_id = s.bet_id AND b.status = 'accepted'
                   WHERE NOT m.ended AND m.updated_at < now() - make_interval(secs => %s)""",
                (silent_seconds,),
            )
            row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def settle_decided(self) -> int:
        """Accepted bets of more than one leg that are decided (every leg known, or one lost) and yet
        open, settled now: ``betting.settle_market`` with no new result, on the market of each one's
        last settled leg, at that leg's version. Nothing should leave such a bet (betting's
        R_settle_market.sql locks multi-leg bets while their legs are settled), but one left by the
        race that lock closes, or by anything unforeseen, is settled here instead of holding its
        stake for ever.
        Returns the bets settled."""
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                """SELECT DISTINCT x.match_id, x.market_key, x.settled_version FROM (
                     SELECT DISTINCT ON (s.bet_id) s.match_id, s.market_key, s.settled_version
                       FROM betting.bets b JOIN betting.selections s ON s.bet_id = b.bet_id
                      WHERE b.status = 'accepted' AND s.return_per_unit IS NOT NULL
                        AND b.bet_id IN (SELECT o.bet_id FROM betting.selections o
                                          JOIN betting.bets ob ON ob.bet_id = o.bet_id AND ob.status = 'accepted'
                                         GROUP BY o.bet_id
                                         HAVING count(*) > 1 AND (bool_and(o.return_per_unit IS NOT NULL)
                                                                  OR bool_or(o.return_per_unit = 0)))
                      ORDER BY s.bet_id, s.settled_version DESC) x"""
            )
            markets = await cur.fetchall()
        settled = 0
        for match_id, market_key, version in markets:
            async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                await cur.execute(
                    "SELECT * FROM betting.settle_market(%s, %s, %s, '[]'::jsonb, now())",
                    (match_id, market_key, version),
                )
                row = await cur.fetchone()
                settled += int(row[0]) if row else 0
        return settled

    # --- events the settler could not apply (migrations/0006_failed_events.sql) ---------------
    async def park(
        self, seq: int, subject: str, payload: bytes, error: str, attempts: int, match_id: str, event_id: str, kind: str
    ) -> None:
        """Keep an event the settler could not apply (a second parking of the same one, after a
        redelivery, changes nothing)."""
        async with self.pool.connection() as conn:
            await conn.execute(
                """INSERT INTO settlement.failed_events
                       (stream_seq, subject, match_id, event_id, kind, payload, error, attempts)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (stream_seq) DO NOTHING""",
                (seq, subject, match_id, event_id, kind, payload, error, attempts),
            )

    async def parked(self, include_retried: bool = False) -> list[dict[str, Any]]:
        """Parked events in stream order (those applied again by hand too, with ``include_retried``)."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM settlement.failed_events WHERE %s OR retried_at IS NULL ORDER BY stream_seq",
                (include_retried,),
            )
            return await cur.fetchall()

    async def retried(self, seq: int, error: str | None) -> None:
        """Record a retry by hand: done (``error`` None) or failed again."""
        async with self.pool.connection() as conn:
            if error is None:
                await conn.execute(
                    "UPDATE settlement.failed_events SET retried_at = now(), retry_error = NULL WHERE stream_seq = %s",
                    (seq,),
                )
            else:
                await conn.execute(
                    "UPDATE settlement.failed_events SET retry_error = %s WHERE stream_seq = %s", (error, seq)
                )
