"""Engine values ⇄ ``livebet.odds.v1`` protobuf, and the Redis / NATS names of live odds.

NATS: every delta is published on ``odds.<match>`` (match id made a subject token).
Redis (only what can be rebuilt): ``odds:snap:<match>`` the latest ``MatchOdds``;
``odds:log:<match>`` the last ``LOG_LENGTH`` ``OddsDelta`` messages, newest first (for resuming
clients); ``odds:live`` a sorted set of priced matches that have not ended, by last update time
(ms). The snapshot and delta log of a match that ended expire ``ENDED_TTL_SECONDS`` later.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from livebet.common.v1 import common_pb2
from livebet.odds.v1 import market_pb2, odds_service_pb2

from feed.adapters.jetstream import token
from pricing import ladder
from pricing.builder import ModelInputs
from pricing.football import MatchState, Period
from pricing.live.book import Delta, LiveMatch, MarketQuote, Status

SUBJECT_ROOT = "odds"
LOG_LENGTH = 256
SNAP_KEY = "odds:snap:"
LOG_KEY = "odds:log:"
LIVE_KEY = "odds:live"
ENDED_TTL_SECONDS = 7 * 24 * 3600  # a match's keys stay this long after it ended

_PERIODS = (
    None,
    Period.NOT_STARTED,
    Period.FIRST_HALF,
    Period.HALF_TIME,
    Period.SECOND_HALF,
    Period.FULL_TIME,
)  # by livebet.odds.v1.MatchPeriod number

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


def varint(n: int) -> bytes:
    """``n`` as a protobuf base-128 varint."""
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` with ``payload`` (a message's or a string's bytes), length-delimited (wire
    type 2). Appending it to a message's bytes sets that field, as parsing merges fields."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _text(number: int, text: str) -> bytes:
    return length_delimited(number, text.encode()) if text else b""


# Market fields 3 (status, varint), 5 (version, varint), 6 (status_reason); Outcome fields 3 (odds),
# 4 (probability), 5 (active); both decimal wrappers carry their text in field 1.
_STATUS_BYTES = {status: bytes((3 << 3, value)) for status, value in _STATUS.items()}
_VERSION_TAG = bytes((5 << 3,))
_ACTIVE = bytes((5 << 3, 1))
_OUTCOME = bytes((4 << 3 | 2,))
_PROBABILITY = bytes((4 << 3 | 2, 10, 1 << 3 | 2, 8))
_ODDS: dict[int, bytes] = {}  # odds cents -> the encoded Outcome.odds field


def _odds_field(cents: int) -> bytes:
    encoded = _ODDS.get(cents)
    if encoded is None:
        encoded = _ODDS[cents] = length_delimited(3, _text(1, ladder.to_text(cents)))
    return encoded


class MarketCache:
    """Every market's current quote as encoded protobuf (a ``Market`` message's bytes, length
    first), built once when the quote changes: a delta carries the changed ones, a snapshot all of
    them (each with the version it last changed at). The parts of a market that never change (its
    reference, name and outcome names) are encoded once per match and market; a clock tick costs
    the prices only. ``encode`` gives the same bytes as ``market(...).SerializeToString()``."""

    def __init__(self) -> None:
        self._markets: dict[str, dict[str, bytes]] = {}
        self._fixed: dict[str, dict[str, tuple[bytes, tuple[bytes, ...]]]] = {}

    def encode(self, match_id: str, q: MarketQuote, version: int) -> bytes:
        """``q`` as the bytes of a ``Market`` message."""
        fixed = self._fixed.setdefault(match_id, {})
        parts = fixed.get(q.key)
        if parts is None:
            ref = _ref(match_id, q).SerializeToString()
            parts = fixed[q.key] = (
                length_delimited(1, ref) + _text(2, q.key),
                tuple(_text(1, o) + _text(2, o) for o in q.outcomes),
            )
        head, names = parts
        is_open = q.status is Status.OPEN
        body = [head, _STATUS_BYTES[q.status]]
        for name, cents, p in zip(names, q.odds_cents, q.probabilities, strict=True):
            text = f"{p:.6f}".encode()
            # Outcome.probability: a Probability of 8 characters ("0.532438") has a fixed header
            probability = _PROBABILITY + text if len(text) == 8 else length_delimited(4, length_delimited(1, text))
            if cents:
                outcome = name + (_ODDS.get(cents) or _odds_field(cents)) + probability
                if is_open:
                    outcome += _ACTIVE
            else:
                outcome = name + probability
            body.append(_OUTCOME + varint(len(outcome)) + outcome)
        if version:
            body.append(_VERSION_TAG + varint(version))
        body.append(_text(6, q.reason))
        return b"".join(body)

    def _store(self, match_id: str, q: MarketQuote, version: int) -> bytes:
        body = self.encode(match_id, q, version)
        framed = self._markets.setdefault(match_id, {})[q.key] = varint(len(body)) + body
        return framed

    def update(self, d: Delta) -> list[bytes]:
        """The delta's markets encoded (each length first), remembered for the snapshots."""
        return [self._store(d.match_id, q, d.version) for q in d.markets]

    def seed(self, m: LiveMatch) -> None:
        """Every quote of a rebuilt match (its markets' change versions are not known: the match's)."""
        self._markets[m.match_id] = {}
        for q in m.quotes.values():
            self._store(m.match_id, q, m.version)

    def forget(self, match_id: str) -> None:
        """Drop a retired match's markets (see ``Engine.retire``)."""
        self._markets.pop(match_id, None)
        self._fixed.pop(match_id, None)

    def markets(self, match_id: str) -> list[bytes]:
        return list(self._markets.get(match_id, {}).values())


HEAD_FIELDS = ("match_id", "version", "previous_version", "feed_received_at")


def delta_head_type(fields: tuple[str, ...] = HEAD_FIELDS, in_response: bool = False) -> type[Message]:
    """``OddsDelta`` as a router needs it: ``fields`` of it only (by default the match, the
    versions and the feed's receive time). A message type of its own (built here, in a pool of
    its own, not part of the API) with those fields' numbers and types; parsing a delta's bytes
    with it skips the markets, a twentieth of the cost of parsing the whole delta.

    ``in_response``: the type of a ``WatchOddsResponse`` whose ``delta`` is such a head (a client
    that measures deltas without reading their markets: the live benchmark's subscribers)."""
    pool = descriptor_pool.DescriptorPool()
    timestamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    pool.Add(timestamp)
    f = descriptor_pb2.FileDescriptorProto(
        name="livebet/internal/odds_delta_head.proto",
        package="livebet.internal",
        syntax="proto3",
        dependency=[timestamp.name],
    )
    head = f.message_type.add(name="OddsDeltaHead")
    odds = descriptor_pb2.FileDescriptorProto()
    market_pb2.DESCRIPTOR.CopyToProto(odds)
    (delta,) = (m for m in odds.message_type if m.name == "OddsDelta")
    head.field.extend(fd for fd in delta.field if fd.name in fields)  # same numbers and types
    name = "OddsDeltaHead"
    if in_response:
        name = "WatchOddsResponseHead"
        number = odds_service_pb2.WatchOddsResponse.DESCRIPTOR.fields_by_name["delta"].number
        f.message_type.add(name=name).field.add(
            name="delta",
            number=number,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
            type_name=".livebet.internal.OddsDeltaHead",
        )
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"livebet.internal.{name}"))


#: ``DeltaHead.FromString(delta_bytes)``: an ``OddsDelta``'s match id, versions and
#: ``feed_received_at`` without parsing its markets
DeltaHead = delta_head_type()


def _repeated(number: int, framed: list[bytes]) -> bytes:
    """Messages already encoded with their length in front, as the repeated field ``number``."""
    if not framed:
        return b""
    tag = varint(number << 3 | 2)
    return tag + tag.join(framed)


def delta(d: Delta, m: LiveMatch, published: Timestamp, received_ms: int, markets: list[bytes]) -> bytes:
    """The ``OddsDelta`` bytes, with ``markets`` from :meth:`MarketCache.update` (field order as
    the protobuf library writes it: the fields before ``markets``, the markets, the rest)."""
    head = market_pb2.OddsDelta(match_id=d.match_id, version=d.version, previous_version=d.previous_version)
    tail = market_pb2.OddsDelta(cause=d.cause, score=f"{m.home_goals}-{m.away_goals}", minute=int(m.minute))
    tail.published_at.CopyFrom(published)
    if received_ms:
        tail.feed_received_at.FromMilliseconds(received_ms)
    return head.SerializeToString() + _repeated(4, markets) + tail.SerializeToString()


def snapshot(m: LiveMatch, published: Timestamp, cache: MarketCache | None = None) -> bytes:
    """The ``MatchOdds`` bytes of ``m`` with every market as ``cache`` holds it (without a cache:
    every quote at the match's version)."""
    if cache is None:
        cache = MarketCache()
        cache.seed(m)
    head = market_pb2.MatchOdds(match_id=m.match_id, version=m.version)
    tail = market_pb2.MatchOdds(
        home_team=m.home,
        away_team=m.away,
        score=f"{m.home_goals}-{m.away_goals}",
        minute=int(m.minute),
        source=market_pb2.PRICE_SOURCE_PROVIDER if m.mode == "provider" else market_pb2.PRICE_SOURCE_MODEL,
        in_play=m.live and not m.ended,
        sport=m.sport or common_pb2.SPORT_FOOTBALL,  # type: ignore[arg-type]
    )
    tail.published_at.CopyFrom(published)
    if m.mode == "model":
        _set_model(tail.model, m)
    return head.SerializeToString() + _repeated(3, cache.markets(m.match_id)) + tail.SerializeToString()


def _set_model(out: market_pb2.MatchModel, m: LiveMatch) -> None:
    """The model inputs of ``m`` as the engine prices it now (``LiveMatch.model_state``)."""
    s = m.model_state()
    out.home_expected_goals, out.away_expected_goals, out.minute = m.home_xg, m.away_xg, s.minute
    out.period = _PERIODS.index(s.period)  # type: ignore[assignment]
    out.home_goals, out.away_goals = s.home_goals, s.away_goals
    out.home_red_cards, out.away_red_cards = s.home_red_cards, s.away_red_cards
    if s.stoppage_announced is not None:
        out.stoppage_announced = s.stoppage_announced


def model_inputs(snap: market_pb2.MatchOdds) -> ModelInputs | None:
    """What the engine priced this snapshot from (None: not priced by the own model)."""
    if snap.source != market_pb2.PRICE_SOURCE_MODEL or not snap.HasField("model"):
        return None
    x = snap.model
    if not all(0 < g < 20 for g in (x.home_expected_goals, x.away_expected_goals)):  # NaN fails too
        return None
    try:
        state = _state_of(x)
    except ValueError:  # not a state the model prices (a writer's mistake): no bet builder on it
        return None
    return ModelInputs(x.home_expected_goals, x.away_expected_goals, state)


def _state_of(x: market_pb2.MatchModel) -> MatchState:
    return MatchState(
        minute=x.minute,
        home_goals=x.home_goals,
        away_goals=x.away_goals,
        home_red_cards=x.home_red_cards,
        away_red_cards=x.away_red_cards,
        period=_PERIODS[x.period] if 0 <= x.period < len(_PERIODS) else None,
        stoppage_announced=x.stoppage_announced if x.HasField("stoppage_announced") else None,
    )
