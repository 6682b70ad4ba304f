"""What is on offer now, read from the live odds the pricing engine keeps in Redis.

``odds:snap:<match>`` is the latest ``MatchOdds`` and ``odds:log:<match>`` the recent
``OddsDelta`` messages, newest first (see :mod:`pricing.live.codec`). Placement checks a bet
against the snapshot; the decision at the end of the in-play delay checks the snapshot again and
the deltas published since placement (was the market ever not open in between?).

Snapshots read are kept, parsed, for as long as Redis says they have not changed: the connection
that reads them tracks them (``CLIENT TRACKING``, see :mod:`mesh.resp`), and Redis tells it of
every change of a snapshot it has read, in order with its replies. A kept snapshot is used only
while that connection has answered a command sent less than ``FRESH_SECONDS`` ago; otherwise
(and after any lost connection, or when Redis refuses tracking) the snapshot is read again. So a
bet is checked against the snapshot Redis holds, give or take the time an invalidation takes to
arrive: as with a read, which is as old as its round trip by the time the bet is written. The
price history (the deltas) is always read from Redis. Nothing else is kept, so any betting
replica, or one restarted during the delay, decides the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from livebet.betting.v1 import bet_pb2
from livebet.common.v1 import common_pb2
from livebet.odds.v1 import market_pb2
from redis.asyncio import Redis

from betting.domain.rules import Kind, Leg, Quote, Refusal, parse_odds
from mesh.resp import Pipelined
from pricing.builder import ModelInputs
from pricing.live.codec import LOG_KEY, SNAP_KEY, model_inputs

#: a kept snapshot is used while its tracking connection answered a command sent this recently
FRESH_SECONDS = 0.1
_SNAP_PREFIX = SNAP_KEY.encode()


@dataclass(frozen=True)
class MatchView:
    match_id: str
    version: int
    in_play: bool
    sport: str
    markets: dict[str, market_pb2.Market]
    model: ModelInputs | None = None  # what the own model priced this version from (None: a provider)

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
    redis.asyncio, which is made to track what it reads (see the module's doc).
    ``reads``: called with "cache" or "redis" for each snapshot asked for (a metric)."""

    def __init__(
        self, source: RedisSource, cache_size: int = 10_000, reads: Callable[[str], None] | None = None
    ) -> None:
        self.source = source
        # per match: the last snapshot read, parsed, and whether it is tracked (still current
        # while the tracking connection is fresh), or only kept to skip parsing the same bytes
        self._cache: dict[str, tuple[bytes, MatchView, bool]] = {}
        self._cache_size = cache_size
        # invalidations seen per match, and of everything: a read overtaken by one is not kept
        self._changes: dict[str, int] = {}
        self._resets = 0
        self._reads = reads
        # per match: the events of those waiting for its snapshot to change (offer streams)
        self._waiting: dict[str, set[asyncio.Event]] = {}
        source.pipelined.track(self._invalidated, FRESH_SECONDS)

    def tells_changes(self) -> bool:
        """Whether a change of a snapshot read is told now (tracking on, the connection fresh):
        only then may a caller wait on :meth:`wait_for_changes` instead of looking again."""
        return self.source.pipelined.fresh()

    def wait_for_changes(self, match_ids: Iterable[str], event: asyncio.Event) -> None:
        """Set ``event`` when Redis tells of a change of one of these matches' snapshots (read at
        least once through this view since: a read is what makes Redis track a key), or of all."""
        for match_id in match_ids:
            self._waiting.setdefault(match_id, set()).add(event)

    def stop_waiting(self, match_ids: Iterable[str], event: asyncio.Event) -> None:
        for match_id in match_ids:
            waiting = self._waiting.get(match_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiting[match_id]

    @property
    def redis(self) -> Redis:
        return self.source.client

    def _invalidated(self, keys: list[bytes] | None) -> None:
        if keys is None or len(self._changes) > 4 * self._cache_size:
            self._resets += 1
            self._changes.clear()
            self._cache.clear()
            for waiting in self._waiting.values():
                for event in waiting:
                    event.set()
            return
        for key in keys:
            if key.startswith(_SNAP_PREFIX):
                match_id = key[len(_SNAP_PREFIX) :].decode(errors="replace")
                self._changes[match_id] = self._changes.get(match_id, 0) + 1
                self._cache.pop(match_id, None)
                for event in self._waiting.get(match_id, ()):
                    event.set()

    def kept(self, match_id: str) -> MatchView | None:
        """The match's kept snapshot while Valkey tracks it unchanged (what :meth:`match` would
        return without a read), else None; not counted as a read. For a caller that only wants to
        know whether anything changed."""
        cached = self._cache.get(match_id)
        if cached is not None and cached[2] and self.source.pipelined.fresh():
            return cached[1]
        return None

    async def match(self, match_id: str) -> MatchView:
        pipelined = self.source.pipelined
        kept = self.kept(match_id)
        if kept is not None:
            if self._reads is not None:
                self._reads("cache")
            return kept  # Redis has not changed it since it was read
        seen = (self._resets, self._changes.get(match_id, 0))
        got = await pipelined.get(SNAP_KEY + match_id)
        if self._reads is not None:
            self._reads("redis")
        if got is None:
            raise Refusal(Kind.NOT_FOUND, 0, f"no priced match {match_id!r}")
        raw = got
        cached = self._cache.get(match_id)
        if cached is not None and cached[0] == raw:
            view = cached[1]  # the same bytes as last time: no parse
        else:
            snap = market_pb2.MatchOdds.FromString(raw)
            view = MatchView(
                snap.match_id,
                snap.version,
                snap.in_play,
                _sport(snap.sport),
                {m.ref.market_key: m for m in snap.markets},
                model_inputs(snap),
            )
        # tracked only if no invalidation of it (or of everything) came while it was being read
        tracked = pipelined.fresh() and seen == (self._resets, self._changes.get(match_id, 0))
        if match_id not in self._cache and len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[match_id] = (raw, view, tracked)
        return view

    async def interrupted_since(
        self, leg: Leg, version: int, current: int, histories: dict[str, list[Any]] | None = None
    ) -> str:
        """Why the leg's market was not open at some version in (``version``, ``current``] (a
        suspension, a closure), or ``""`` when it stayed open; when the kept history does not reach
        back that far, that is a reason too. ``histories``: the price histories read so far, by
        match, for a caller checking several legs of one match (a bet builder) to read each once."""
        if current <= version:
            return ""  # nothing was published since
        raw = histories.get(leg.match_id) if histories is not None else None
        if raw is None:
            raw = await self.redis.lrange(LOG_KEY + leg.match_id, 0, -1)
            if histories is not None:
                histories[leg.match_id] = raw
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
