"""Engine values ⇄ ``livebet.odds.v1`` protobuf, and the Redis / NATS names of live odds.

NATS: every delta is published on ``odds.<match>`` (match id made a subject token).
Redis (only what can be rebuilt): ``odds:snap:<match>`` the latest ``MatchOdds``;
``odds:log:<match>`` the last ``LOG_LENGTH`` ``OddsDelta`` messages, newest first (for resuming
clients); ``odds:live`` a sorted set of priced matches by last update time (ms).
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from livebet.common.v1 import common_pb2
from livebet.odds.v1 import market_pb2

from feed.adapters.jetstream import token
from pricing import ladder
from pricing.live.book import Delta, LiveMatch, MarketQuote, Status

SUBJECT_ROOT = "odds"
LOG_LENGTH = 256
SNAP_KEY = "odds:snap:"
LOG_KEY = "odds:log:"
LIVE_KEY = "odds:live"

_STATUS = {
    Status.OPEN: market_pb2.MARKET_STATUS_OPEN,
    Status.SUSPENDED: market_pb2.MARKET_STATUS_SUSPENDED,
    Status.CLOSED: market_pb2.MARKET_STATUS_CLOSED,
}


def subject(match_id: str) -> str:
    return f"{SUBJECT_ROOT}.{token(match_id)}"


def _ref(match_id: str, q: MarketQuote) -> common_pb2.MarketRef:
    return common_pb2.MarketRef(
        match_id=match_id,
        market_type=q.market_type,
        specifiers=[common_pb2.Specifier(key=k, value=v) for k, v in q.specifiers],
        market_key=q.market_type + "".join(f"|{k}={v}" for k, v in q.specifiers),
    )


def market(match_id: str, q: MarketQuote, version: int) -> market_pb2.Market:
    m = market_pb2.Market(
        ref=_ref(match_id, q), name=q.key, status=_STATUS[q.status], version=version, status_reason=q.reason
    )
    for outcome, cents, p in zip(q.outcomes, q.odds_cents, q.probabilities, strict=True):
        o = market_pb2.Outcome(outcome_id=outcome, name=outcome, active=bool(cents) and q.status is Status.OPEN)
        if cents:
            o.odds.decimal = ladder.to_text(cents)
        o.probability.decimal = f"{p:.6f}"
        m.outcomes.append(o)
    return m


class MarketCache:
    """The protobuf of every market's current quote, built once when the quote changes: a delta
    carries the changed ones, a snapshot all of them (each with the version it last changed at)."""

    def __init__(self) -> None:
        self._markets: dict[str, dict[str, market_pb2.Market]] = {}

    def update(self, d: Delta) -> list[market_pb2.Market]:
        book = self._markets.setdefault(d.match_id, {})
        out = []
        for q in d.markets:
            pb = market(d.match_id, q, d.version)
            book[q.key] = pb
            out.append(pb)
        return out

    def seed(self, m: LiveMatch) -> None:
        """Every quote of a rebuilt match (its markets' change versions are not known: the match's)."""
        self._markets[m.match_id] = {q.key: market(m.match_id, q, m.version) for q in m.quotes.values()}

    def markets(self, match_id: str) -> list[market_pb2.Market]:
        return list(self._markets.get(match_id, {}).values())


def delta(
    d: Delta, m: LiveMatch, published: Timestamp, received_ms: int, markets: list[market_pb2.Market] | None = None
) -> market_pb2.OddsDelta:
    out = market_pb2.OddsDelta(
        match_id=d.match_id,
        version=d.version,
        previous_version=d.previous_version,
        cause=d.cause,
        markets=markets if markets is not None else [market(d.match_id, q, d.version) for q in d.markets],
        score=f"{m.home_goals}-{m.away_goals}",
        minute=int(m.minute),
    )
    out.published_at.CopyFrom(published)
    if received_ms:
        out.feed_received_at.FromMilliseconds(received_ms)
    return out


def snapshot(m: LiveMatch, published: Timestamp, cache: MarketCache | None = None) -> market_pb2.MatchOdds:
    if cache is not None:
        markets = cache.markets(m.match_id)
    else:
        markets = [market(m.match_id, q, m.version) for q in m.quotes.values()]
    out = market_pb2.MatchOdds(
        match_id=m.match_id,
        version=m.version,
        home_team=m.home,
        away_team=m.away,
        score=f"{m.home_goals}-{m.away_goals}",
        minute=int(m.minute),
        source=market_pb2.PRICE_SOURCE_PROVIDER if m.mode == "provider" else market_pb2.PRICE_SOURCE_MODEL,
        markets=markets,
        in_play=m.live and not m.ended,
        sport=m.sport or common_pb2.SPORT_FOOTBALL,  # type: ignore[arg-type]
    )
    out.published_at.CopyFrom(published)
    return out
