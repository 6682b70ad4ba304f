"""Results from the feed become settlements (the I/O around :mod:`settlement.domain.results`)."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime

from livebet.feed.v1 import event_pb2 as ev

from betting.domain.rules import ref_key
from mesh.settings import seconds
from settlement.adapters.store import Store
from settlement.domain.results import OpenLeg, parse_market_key, provider_results, results_by_market

log = logging.getLogger("settlement")
_ENDED = (ev.MATCH_STATUS_ENDED, ev.MATCH_STATUS_CLOSED)
_SIDE = {1: "home", 2: "away"}
PARALLEL_MARKETS = 2  # markets settled at once (each on its own connection)


def _when(e: ev.FeedEvent, produced: bool = True) -> datetime:
    """When the result became known: when the provider produced the event (a late feed does not
    make a result known later), else when the feed received it. A provider's settlement message is
    produced long after the result, so for those (``produced=False``) the receipt time counts:
    bets placed on a result the feed reported late are for ``bet_cancel`` to void."""
    stamps = (e.produced_at, e.received_at) if produced else (e.received_at,)
    times = [t.ToDatetime(tzinfo=UTC) for t in stamps if t.seconds or t.nanos]
    return min(times) if times else datetime.now(UTC)


STALE_MATCH_SECONDS = 3 * 3600.0


def certainty_setting() -> int:
    """``LIVEBET_SETTLEMENT_CERTAINTY``: the least certain provider settlement acted on, ``live``
    or ``confirmed`` (the default: wait for the provider's confirmation after the match)."""
    value = os.environ.get("LIVEBET_SETTLEMENT_CERTAINTY", "confirmed").strip().lower()
    levels = {"live": ev.SETTLEMENT_CERTAINTY_LIVE, "confirmed": ev.SETTLEMENT_CERTAINTY_CONFIRMED}
    if value not in levels:
        raise ValueError(f"LIVEBET_SETTLEMENT_CERTAINTY must be live or confirmed, got {value!r}")
    return levels[value]


def stale_match_seconds() -> float:
    """``LIVEBET_SETTLEMENT_STALE_MATCH_SECONDS`` (default 3 hours): a match seen in play, not
    ended, with no state update for this long, has open bets that nothing will settle."""
    return seconds(os.environ, "LIVEBET_SETTLEMENT_STALE_MATCH_SECONDS", STALE_MATCH_SECONDS)


class Settler:
    def __init__(self, store: Store, certainty: int = ev.SETTLEMENT_CERTAINTY_CONFIRMED) -> None:
        self.store = store
        self.certainty = certainty
        self.settled_bets = 0

    async def on_event(self, e: ev.FeedEvent, stream_seq: int) -> None:
        """Record what the event says about the result; settle whatever it decided."""
        kind = e.WhichOneof("payload")
        if not e.match_id:
            return
        if kind == "match_state":
            s = e.match_state.state
            ended = s.status in _ENDED or s.period == ev.PERIOD_FULL_TIME
            halftime = None
            if s.period in (ev.PERIOD_HALFTIME, ev.PERIOD_SECOND_HALF) and s.period_scores:
                halftime = (s.period_scores[0].home, s.period_scores[0].away)
            elif s.period == ev.PERIOD_HALFTIME:
                halftime = (s.score.home, s.score.away)
            await self.store.record_state(e.match_id, s.score.home, s.score.away, ended, halftime, _when(e))
            # settle at full time and at half time; the second half's clock ticks also carry the
            # half-time score (recorded above) but decide nothing new, so they settle nothing
            if ended or s.period == ev.PERIOD_HALFTIME:
                await self.settle_match(e.match_id)
        elif kind == "bet_settlement":
            await self.provider_settlement(e)
        elif kind == "bet_cancel":
            c = e.bet_cancel
            start = (
                c.start_time.ToDatetime(tzinfo=UTC) if c.HasField("start_time") else datetime.min.replace(tzinfo=UTC)
            )
            end = c.end_time.ToDatetime(tzinfo=UTC) if c.HasField("end_time") else None
            for ref in c.markets:
                key = ref_key(ref)
                await self.cancel(f"{e.event_id}:{key}", e.match_id, key, start, end, c.void_reason)
        elif kind == "rollback_bet_cancel":
            c = e.rollback_bet_cancel
            start = c.start_time.ToDatetime(tzinfo=UTC) if c.HasField("start_time") else None
            end = c.end_time.ToDatetime(tzinfo=UTC) if c.HasField("end_time") else None
            for ref in c.markets:
                key = ref_key(ref)
                reopened = await self.store.rollback_cancels(e.match_id, key, start, end)
                log.info("cancel rolled back", extra={"match_id": e.match_id, "market": key, "bets": reopened})
            await self.settle_match(e.match_id)  # a result already known settles them now
            await self.settle_provider_again(e.match_id)
        elif kind == "rollback_bet_settlement":
            for ref in e.rollback_bet_settlement.markets:
                key = ref_key(ref)
                version, reopened = await self.store.rollback(e.match_id, key, "provider rollback")
                log.info(
                    "settlement rolled back",
                    extra={"match_id": e.match_id, "market": key, "version": version, "bets": reopened},
                )
        elif kind == "goal" and e.goal.side in _SIDE:
            await self.store.record_goal(e.event_id, e.match_id, stream_seq, _SIDE[e.goal.side], _when(e))
            await self.settle_match(e.match_id)

    async def cancel(
        self,
        cancel_id: str,
        match_id: str,
        key: str,
        start: datetime,
        end: datetime | None,
        reason: str,
        actor: str = "",
    ) -> int:
        """A bet cancel (the feed's or a trader's): void the market's bets placed in [start, end),
        cashed-out ones included (their cash-out annulled). An accumulator reopened that way may
        have legs on markets settled while it was cashed out: their matches are settled again.
        Returns the bets the cancel settled."""
        done = await self.store.cancel(cancel_id, match_id, key, start, end, reason, actor)
        log.info(
            "bets cancelled",
            extra={"match_id": match_id, "market": key, "bets": done.settled, "cash_outs_annulled": done.annulled},
        )
        for other in done.matches:
            await self.settle_match(other)
            await self.settle_provider_again(other)
        return done.settled

    async def provider_settlement(self, e: ev.FeedEvent) -> int:
        """The provider's results, when at least as certain as the operator requires. A market
        already settled from the score with other results is left alone and logged: a correction
        needs a rollback and a new settlement version (not built yet)."""
        bs = e.bet_settlement
        if bs.certainty < self.certainty:
            return 0
        legs = await self.store.open_legs(e.match_id)
        when = _when(e, produced=False)
        total = 0
        for m in bs.markets:
            key = ref_key(m.market)
            outcomes = [(o.outcome_id, int(o.result), o.void_factor, o.dead_heat_factor) for o in m.outcomes]
            await self.store.keep_provider_outcomes(e.match_id, key, outcomes, when)
            total += await self._settle_provider(e.match_id, key, outcomes, legs, when)
        self.settled_bets += total
        return total

    async def settle_provider_again(self, match_id: str) -> int:
        """Settle the legs open now by the provider's settlements kept for the match: legs that
        opened again since those came (a reopened accumulator, a cancel rolled back)."""
        kept = await self.store.provider_outcomes(match_id)
        if not kept:
            return 0
        legs = await self.store.open_legs(match_id)
        total = 0
        for key, outcomes, when in kept:
            total += await self._settle_provider(match_id, key, outcomes, legs, when)
        self.settled_bets += total
        return total

    async def _settle_provider(
        self, match_id: str, key: str, outcomes: list[tuple[str, int, str, str]], legs: list[OpenLeg], when: datetime
    ) -> int:
        results = provider_results(outcomes, legs, key)
        if not results:
            return 0
        version, count, _, conflict = await self.store.settle_provider(match_id, key, results, when)
        if conflict:
            log.warning(
                "provider settlement differs from the settled result; left for a rollback",
                extra={"match_id": match_id, "market": key, "version": version},
            )
        return count

    async def settle_match(self, match_id: str) -> int:
        """Settle every market of the match whose result is known and has open bets."""
        known = await self.store.result(match_id)
        if known is None:
            return 0
        result, times = known
        legs = await self.store.open_legs(match_id, include_settled=True)  # a corrected result reopens them
        gate = asyncio.Semaphore(PARALLEL_MARKETS)

        async def one(market_key: str, results: list[dict[str, object]]) -> int:
            market_type, specs = parse_market_key(market_key)
            if market_type == "halftime_1x2":
                decided = times.get("ht")
            elif market_type == "next_goal" and f"goal{specs.get('goalnr')}" in times:
                decided = times[f"goal{specs['goalnr']}"]
            else:
                decided = times.get("ft")
            if decided is None:
                return 0
            async with gate:
                version, count, payout = await self.store.settle(match_id, market_key, results, decided, "score")
            if count:
                log.info(
                    "market settled",
                    extra={
                        "match_id": match_id,
                        "market": market_key,
                        "version": version,
                        "bets": count,
                        "payout": payout,
                    },
                )
            return count

        # markets of a match hold disjoint bets and lock ledger accounts in one order: they can
        # settle side by side
        done = await asyncio.gather(*(one(k, r) for k, r in results_by_market(result, legs).items()))
        total = sum(done)
        self.settled_bets += total
        return total
