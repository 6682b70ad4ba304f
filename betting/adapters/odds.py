"""What is on offer now, read from the live odds the pricing engine keeps in Redis.

``odds:snap:<match>`` is the latest ``MatchOdds`` and ``odds:log:<match>`` the recent
``OddsDelta`` messages, newest first (see :mod:`pricing.live.codec`). Placement checks a bet
against the snapshot; the decision at the end of the in-play delay checks the snapshot again and
the deltas published since placement (was the market ever not open in between?). Nothing here is
kept in memory, so any betting replica, or one restarted during the delay, decides the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from livebet.betting.v1 import bet_pb2
from livebet.common.v1 import common_pb2
from livebet.odds.v1 import market_pb2
from redis.asyncio import Redis

from betting.domain.rules import Kind, Leg, Quote, Refusal, parse_odds
from mesh.resp import Pipelined
from pricing.live.codec import LOG_KEY, SNAP_KEY


@dataclass(frozen=True)
class MatchView:
    match_id: str
    version: int
    in_play: bool
    sport: str
    markets: dict[str, market_pb2.Market]

    def quote(self, leg: Leg) -> Quote:
        market = self.markets.get(leg.market_key)
        if market is None:
            raise Refusal(Kind.NOT_FOUND, 0, f"match {leg.match_id} has no market {leg.market_key!r}")
        for o in market.outcomes:
            if o.outcome_id == leg.outcome_id:
                is_open = market.status == market_pb2.MARKET_STATUS_OPEN and o.active
                odds = parse_odds(o.odds.decimal) if o.odds.decimal else None
                return Quote(is_open, odds, market.version, market.status_reason)
        message = f"market {leg.market_key!r} of match {leg.match_id} has no outcome {leg.outcome_id!r}"
        raise Refusal(Kind.NOT_FOUND, 0, message)


def _sport(value: int) -> str:
    name = common_pb2.Sport.Name(value) if value in common_pb2.Sport.values() else "SPORT_FOOTBALL"
    return name.removeprefix("SPORT_").lower() if value else "football"


class RedisSource(Protocol):
    @property
    def client(self) -> Redis: ...

    @property
    def pipelined(self) -> Pipelined: ...


class OddsView:
    """``source``: anything with a Redis ``client`` and ``pipelined`` (the service's Redis
    dependency); a snapshot is read through ``pipelined``, ~5 times cheaper per bet than
    redis.asyncio."""

    def __init__(self, source: RedisSource, cache_size: int = 10_000) -> None:
        self.source = source
        self._cache: dict[str, tuple[bytes, MatchView]] = {}  # the last snapshot read per match, parsed
        self._cache_size = cache_size

    @property
    def redis(self) -> Redis:
        return self.source.client

    async def match(self, match_id: str) -> MatchView:
        got = await self.source.pipelined.get(SNAP_KEY + match_id)
        if got is None:
            raise Refusal(Kind.NOT_FOUND, 0, f"no priced match {match_id!r}")
        raw = got
        cached = self._cache.get(match_id)
        if cached is not None and cached[0] == raw:
            return cached[1]  # unchanged since the last bet on it: no parse
        snap = market_pb2.MatchOdds.FromString(raw)
        view = MatchView(
            snap.match_id,
            snap.version,
            snap.in_play,
            _sport(snap.sport),
            {m.ref.market_key: m for m in snap.markets},
        )
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[match_id] = (raw, view)
        return view

    async def interrupted_since(self, leg: Leg, version: int, current: int) -> str:
        """Why the leg's market was not open at some version in (``version``, ``current``] (a
        suspension, a closure), or ``""`` when it stayed open; when the kept history does not reach
        back that far, that is a reason too."""
        if current <= version:
            return ""  # nothing was published since
        raw = await self.redis.lrange(LOG_KEY + leg.match_id, 0, -1)
        reached = False
        for data in raw:  # newest first
            d = market_pb2.OddsDelta.FromString(data)
            if d.version <= version:
                reached = True
                break
            for m in d.markets:
                if m.ref.market_key == leg.market_key and m.status != market_pb2.MARKET_STATUS_OPEN:
                    return f"suspended at version {d.version} ({m.status_reason or 'no reason given'})"
            if d.previous_version <= version:
                reached = True
                break
        if not reached:
            return "the price history since placement is no longer available"
        return ""


REJECT_NAMES = {v: bet_pb2.RejectReason.Name(v) for v in bet_pb2.RejectReason.values()}
