"""Unified Odds Feed (UOF) XML → normalised ``livebet.feed.v1.FeedEvent`` messages.

One UOF message becomes zero or more events, each with a stable ``event_id`` derived from the
message's identity (producer, type, event id, timestamp and a hash of its bytes), so a redelivered
or replayed message publishes the same ids and JetStream stores it once.

Supported messages: ``odds_change`` (match status, clock, score, period scores, cards; markets),
``bet_stop``, ``bet_settlement``, ``bet_cancel``, ``rollback_bet_settlement``,
``rollback_bet_cancel``, ``fixture_change``, ``alive``, ``snapshot_complete``. Any other message
type is counted and skipped; so is a market livebet does not trade (see ``MARKETS``). A settlement,
cancel or rollback whose markets are all unknown is skipped whole: it must never turn into "every
market of the match".

The provider of an event is ``<provider>:<product>`` (UOF's ``product`` is the producer, e.g. 1 for
live odds, 3 for pre-match), because liveness is tracked per producer.

Bad input raises :class:`UofError` with what was wrong: XML that does not parse, entity tricks
(defusedxml), a message over ``MAX_MESSAGE_BYTES``, a missing or malformed required attribute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException
from google.protobuf.timestamp_pb2 import Timestamp
from livebet.common.v1 import common_pb2
from livebet.feed.v1 import event_pb2 as ev

MAX_MESSAGE_BYTES = 1 << 20


class UofError(ValueError):
    """The message is not valid UOF; the text says what is wrong."""


@dataclass(frozen=True)
class MarketMapping:
    market_type: str
    outcomes: dict[str, str]  # UOF outcome id -> livebet outcome id
    specifiers: tuple[str, ...] = ()  # specifier names carried over


#: UOF market id → livebet market (ids and outcome ids as in the UOF market descriptions,
#: ``../shared/data/uof/markets-1.xml`` for 1, 10, 16 and 18).
MARKETS: dict[str, MarketMapping] = {
    "1": MarketMapping("1x2", {"1": "home", "2": "draw", "3": "away"}),
    "8": MarketMapping("next_goal", {"6": "home", "7": "none", "8": "away"}, ("goalnr",)),
    "10": MarketMapping("double_chance", {"9": "1x", "10": "12", "11": "x2"}),
    "11": MarketMapping("draw_no_bet", {"4": "home", "5": "away"}),
    "16": MarketMapping("asian_handicap", {"1714": "home", "1715": "away"}, ("hcp",)),
    "18": MarketMapping("total", {"12": "over", "13": "under"}, ("total",)),
    "26": MarketMapping("odd_even", {"70": "odd", "72": "even"}),
    "29": MarketMapping("btts", {"74": "yes", "76": "no"}),
    "60": MarketMapping("halftime_1x2", {"1": "home", "2": "draw", "3": "away"}),
}

_MARKET_STATUS = {
    "1": ev.PROVIDER_MARKET_STATUS_ACTIVE,
    "0": ev.PROVIDER_MARKET_STATUS_DEACTIVATED,
    "-1": ev.PROVIDER_MARKET_STATUS_SUSPENDED,
    "-2": ev.PROVIDER_MARKET_STATUS_DEACTIVATED,  # handed over to another producer
    "-3": ev.PROVIDER_MARKET_STATUS_SETTLED,
    "-4": ev.PROVIDER_MARKET_STATUS_CANCELLED,
}
# sport_event_status/@status
_EVENT_STATUS = {
    "0": ev.MATCH_STATUS_NOT_STARTED,
    "1": ev.MATCH_STATUS_LIVE,
    "2": ev.MATCH_STATUS_INTERRUPTED,
    "3": ev.MATCH_STATUS_ENDED,
    "4": ev.MATCH_STATUS_CLOSED,
    "5": ev.MATCH_STATUS_CANCELLED,
    "6": ev.MATCH_STATUS_POSTPONED,
    "7": ev.MATCH_STATUS_INTERRUPTED,
    "8": ev.MATCH_STATUS_POSTPONED,
    "9": ev.MATCH_STATUS_ABANDONED,
}
# sport_event_status/@match_status for football
_PERIOD = {
    "0": ev.PERIOD_UNSPECIFIED,
    "6": ev.PERIOD_FIRST_HALF,
    "7": ev.PERIOD_SECOND_HALF,
    "31": ev.PERIOD_HALFTIME,
    "32": ev.PERIOD_AWAITING_EXTRA_TIME,
    "41": ev.PERIOD_EXTRA_TIME_FIRST_HALF,
    "33": ev.PERIOD_EXTRA_TIME_HALFTIME,
    "42": ev.PERIOD_EXTRA_TIME_SECOND_HALF,
    "50": ev.PERIOD_PENALTIES,
    "100": ev.PERIOD_FULL_TIME,
    "110": ev.PERIOD_FULL_TIME,
    "120": ev.PERIOD_FULL_TIME,
}


@dataclass
class Parsed:
    """What one UOF message became."""

    message_type: str
    events: list[ev.FeedEvent] = field(default_factory=list)
    skipped_markets: int = 0
    skipped_message: bool = False  # unknown type, or nothing livebet trades


def _attr(el: Element, name: str) -> str:
    value = el.get(name)
    if value is None or value == "":
        raise UofError(f"<{el.tag}> lacks the required attribute {name!r}")
    return value


def _int(el: Element, name: str, default: int | None = None) -> int:
    raw = el.get(name)
    if raw is None or raw == "":
        if default is None:
            raise UofError(f"<{el.tag}> lacks the required attribute {name!r}")
        return default
    try:
        return int(raw)
    except ValueError:
        raise UofError(f"<{el.tag}> attribute {name!r} must be an integer, got {raw!r}") from None


def _decimal_text(el: Element, name: str, default: str) -> str:
    raw = el.get(name)
    if raw is None or raw == "":
        return default
    try:
        float(raw)
    except ValueError:
        raise UofError(f"<{el.tag}> attribute {name!r} must be a number, got {raw!r}") from None
    return raw


def _ms(el: Element, name: str) -> Timestamp | None:
    raw = el.get(name)
    if raw is None or raw == "":
        return None
    try:
        ms = int(raw)
    except ValueError:
        raise UofError(f"<{el.tag}> attribute {name!r} must be milliseconds since the epoch, got {raw!r}") from None
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _specifiers(raw: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if not raw:
        return out
    for part in raw.split("|"):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise UofError(f"malformed specifiers {raw!r}")
        out[key] = value
    return out


def _market_ref(el: Element, match_id: str) -> tuple[common_pb2.MarketRef, MarketMapping] | None:
    mapping = MARKETS.get(_attr(el, "id"))
    if mapping is None:
        return None
    spec = _specifiers(el.get("specifiers"))
    kept = sorted((k, spec[k]) for k in mapping.specifiers if k in spec)
    if len(kept) != len(mapping.specifiers):
        raise UofError(f"market {el.get('id')} needs specifiers {mapping.specifiers}, got {el.get('specifiers')!r}")
    key = mapping.market_type + "".join(f"|{k}={v}" for k, v in kept)
    ref = common_pb2.MarketRef(
        match_id=match_id,
        market_type=mapping.market_type,
        market_key=key,
        specifiers=[common_pb2.Specifier(key=k, value=v) for k, v in kept],
    )
    return ref, mapping


def _markets(root: Element, match_id: str, parsed: Parsed) -> list[tuple[Element, common_pb2.MarketRef, MarketMapping]]:
    out = []
    for m in root.iter("market"):
        found = _market_ref(m, match_id)
        if found is None:
            parsed.skipped_markets += 1
            continue
        out.append((m, *found))
    return out


def _match_state(status: Element, match_id: str) -> ev.MatchState:
    state = ev.MatchState(
        match_id=match_id,
        status=_EVENT_STATUS.get(status.get("status", ""), ev.MATCH_STATUS_UNSPECIFIED),
        period=_PERIOD.get(status.get("match_status", ""), ev.PERIOD_UNSPECIFIED),
        score=ev.Score(home=_int(status, "home_score", 0), away=_int(status, "away_score", 0)),
        betting_open=status.get("status") == "1",
    )
    clock = status.find("clock")
    if clock is not None and clock.get("match_time"):
        text = clock.get("match_time", "")
        minute, _, second = text.partition(":")
        try:
            state.clock.minute, state.clock.second = int(minute), int(second or 0)
        except ValueError:
            raise UofError(f"<clock> match_time must look like 75:02, got {text!r}") from None
        state.clock.running = state.status == ev.MATCH_STATUS_LIVE
        stoppage = clock.get("stoppage_time")
        if stoppage:
            state.clock.stoppage_played = int(stoppage.partition(":")[0] or 0)
        announced = clock.get("stoppage_time_announced")
        if announced:
            state.clock.stoppage_announced = int(announced.partition(":")[0] or 0)
    scores = status.find("period_scores")
    if scores is not None:
        for ps in sorted(scores.iter("period_score"), key=lambda p: _int(p, "number", 0)):
            state.period_scores.append(ev.Score(home=_int(ps, "home_score", 0), away=_int(ps, "away_score", 0)))
    stats = status.find("statistics")
    if stats is not None:

        def count(tag: str, side: str) -> int:
            el = stats.find(tag)
            return _int(el, side, 0) if el is not None else 0

        state.home_cards.yellow = count("yellow_cards", "home")
        state.away_cards.yellow = count("yellow_cards", "away")
        state.home_cards.red = count("red_cards", "home") + count("yellow_red_cards", "home")
        state.away_cards.red = count("red_cards", "away") + count("yellow_red_cards", "away")
    return state


def _result(outcome: Element) -> ev.OutcomeSettlement:
    result = _int(outcome, "result")
    if result not in (0, 1):
        raise UofError(f"outcome result must be 0 or 1, got {result}")
    void = _decimal_text(outcome, "void_factor", "0")
    dead_heat = _decimal_text(outcome, "dead_heat_factor", "1")
    if float(void) >= 1.0:
        kind = ev.OUTCOME_RESULT_VOID
    elif float(void) > 0.0:
        kind = ev.OUTCOME_RESULT_HALF_WIN if result == 1 else ev.OUTCOME_RESULT_HALF_LOSE
    else:
        kind = ev.OUTCOME_RESULT_WIN if result == 1 else ev.OUTCOME_RESULT_LOSE
    return ev.OutcomeSettlement(result=kind, void_factor=void, dead_heat_factor=dead_heat)


def parse(raw: bytes, provider: str = "uof") -> Parsed:
    """Parse one UOF message; raises :class:`UofError` on bad input."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise UofError(f"message of {len(raw)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        root = SafeET.fromstring(raw)
    except DefusedXmlException as exc:
        raise UofError(f"refused XML construct: {exc.__class__.__name__}") from None
    except SafeET.ParseError as exc:
        raise UofError(f"not well-formed XML: {exc}") from None
    tag = root.tag.rsplit("}", 1)[-1]
    parsed = Parsed(tag)
    product = root.get("product", "")
    source = f"{provider}:{product}" if product else provider
    produced = _ms(root, "timestamp")
    digest = hashlib.sha256(raw).hexdigest()[:16]
    base_id = f"{source}:{tag}:{root.get('event_id', '')}:{root.get('timestamp', '')}:{digest}"

    def event(match_id: str, index: int) -> ev.FeedEvent:
        e = ev.FeedEvent(event_id=f"{base_id}:{index}", provider=source, match_id=match_id)
        if produced is not None:
            e.produced_at.CopyFrom(produced)
        return e

    if tag == "alive":
        _int(root, "timestamp")
        e = event("", 0)
        e.provider_alive.subscribed = root.get("subscribed", "1") == "1"
        parsed.events.append(e)
        return parsed
    if tag == "snapshot_complete":
        e = event("", 0)
        e.snapshot_complete.request_id = root.get("request_id", "")
        parsed.events.append(e)
        return parsed
    if tag == "fixtures_fixture":  # the fixture endpoint's document: teams, start, competition
        return _fixture(root, source, parsed, base_id, produced)
    if tag not in (
        "odds_change",
        "bet_stop",
        "bet_settlement",
        "bet_cancel",
        "rollback_bet_settlement",
        "rollback_bet_cancel",
        "fixture_change",
    ):
        parsed.skipped_message = True
        return parsed
    match_id = _attr(root, "event_id")
    _int(root, "timestamp")

    if tag == "odds_change":
        n = 0
        status = root.find("sport_event_status")
        if status is not None:
            e = event(match_id, n)
            e.match_state.state.CopyFrom(_match_state(status, match_id))
            parsed.events.append(e)
            n += 1
        odds = root.find("odds")
        if odds is not None:
            offered: list[ev.ProviderMarket] = []
            for m, ref, mapping in _markets(odds, match_id, parsed):
                pm = ev.ProviderMarket(
                    market=ref, status=_MARKET_STATUS.get(m.get("status", "1"), ev.PROVIDER_MARKET_STATUS_ACTIVE)
                )
                for o in m.iter("outcome"):
                    oid = mapping.outcomes.get(_attr(o, "id"))
                    if oid is None:
                        continue
                    po = ev.ProviderOutcome(outcome_id=oid, active=o.get("active", "1") == "1")
                    if o.get("odds"):
                        po.odds.decimal = _decimal_text(o, "odds", "")
                    if o.get("probabilities"):
                        po.probability.decimal = _decimal_text(o, "probabilities", "")
                    pm.outcomes.append(po)
                offered.append(pm)
            if offered:
                e = event(match_id, n)
                e.provider_odds.markets.extend(offered)
                parsed.events.append(e)
        parsed.skipped_message = not parsed.events
        return parsed

    if tag == "bet_stop":
        e = event(match_id, 0)
        groups = root.get("groups", "all")
        e.bet_stop.market_groups.extend(g for g in groups.split("|") if g)
        e.bet_stop.reason = root.get("market_status", "")
        parsed.events.append(e)
        return parsed

    if tag == "fixture_change":
        e = event(match_id, 0)
        e.fixture_change.fixture.match_id = match_id
        start = _ms(root, "start_time")
        if start is not None:
            e.fixture_change.fixture.start_time.CopyFrom(start)
        parsed.events.append(e)
        return parsed

    markets = _markets(root, match_id, parsed)
    had_markets = any(True for _ in root.iter("market"))
    if had_markets and not markets:
        parsed.skipped_message = True  # only markets we do not trade: never "all markets"
        return parsed
    e = event(match_id, 0)
    if tag == "bet_settlement":
        certainty = root.get("certainty", "1")
        e.bet_settlement.certainty = (
            ev.SETTLEMENT_CERTAINTY_CONFIRMED if certainty == "2" else ev.SETTLEMENT_CERTAINTY_LIVE
        )
        for m, ref, mapping in markets:
            ms = ev.MarketSettlement(market=ref)
            for o in m.iter("outcome"):
                oid = mapping.outcomes.get(_attr(o, "id"))
                if oid is None:
                    continue
                settled = _result(o)
                settled.outcome_id = oid
                ms.outcomes.append(settled)
            e.bet_settlement.markets.append(ms)
    elif tag == "bet_cancel":
        e.bet_cancel.markets.extend(ref for _, ref, _ in markets)
        _copy_window(root, e.bet_cancel)
        reasons = {m.get("void_reason", "") for m, _, _ in markets} - {""}
        e.bet_cancel.void_reason = ",".join(sorted(reasons))
        e.bet_cancel.superseded_event_id = root.get("superceded_by", root.get("superseded_by", ""))
    elif tag == "rollback_bet_settlement":
        e.rollback_bet_settlement.markets.extend(ref for _, ref, _ in markets)
    else:
        e.rollback_bet_cancel.markets.extend(ref for _, ref, _ in markets)
        _copy_window(root, e.rollback_bet_cancel)
    parsed.events.append(e)
    return parsed


def _local(el: Element, name: str) -> Element | None:
    """First descendant named ``name`` whatever its XML namespace."""
    for child in el.iter():
        if child.tag.rsplit("}", 1)[-1] == name:
            return child
    return None


def _fixture(root: Element, source: str, parsed: Parsed, base_id: str, produced: Timestamp | None) -> Parsed:
    fx = _local(root, "fixture")
    if fx is None:
        raise UofError("<fixtures_fixture> has no <fixture>")
    match_id = _attr(fx, "id")
    e = ev.FeedEvent(event_id=f"{base_id}:0", provider=source, match_id=match_id)
    if produced is not None:
        e.produced_at.CopyFrom(produced)
    f = e.fixture_change.fixture
    f.match_id = match_id
    sport = _local(fx, "sport")
    if sport is not None and sport.get("id") == "sr:sport:1":
        f.sport = common_pb2.SPORT_FOOTBALL
    tournament = _local(fx, "tournament")
    if tournament is not None:
        f.competition = tournament.get("name", "")
    start = fx.get("start_time") or fx.get("scheduled")
    if start:
        try:
            f.start_time.FromJsonString(start.replace("+00:00", "Z"))
        except ValueError:
            raise UofError(f"<fixture> start_time must be an ISO 8601 instant, got {start!r}") from None
    for comp in fx.iter():
        if comp.tag.rsplit("}", 1)[-1] != "competitor":
            continue
        team = common_pb2.Team(team_id=_attr(comp, "id"), name=comp.get("name", ""))
        if comp.get("qualifier") == "home":
            f.home.CopyFrom(team)
        elif comp.get("qualifier") == "away":
            f.away.CopyFrom(team)
    if not f.home.team_id or not f.away.team_id:
        raise UofError(f"fixture {match_id} needs a home and an away competitor")
    parsed.events.append(e)
    return parsed


def _copy_window(root: Element, target: ev.BetCancel | ev.RollbackBetCancel) -> None:
    start, end = _ms(root, "start_time"), _ms(root, "end_time")
    if start is not None:
        target.start_time.CopyFrom(start)
    if end is not None:
        target.end_time.CopyFrom(end)


def parse_many(messages: Iterable[bytes], provider: str = "uof") -> list[Parsed]:
    return [parse(m, provider) for m in messages]
