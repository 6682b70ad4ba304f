"""Bet acceptance rules (pure: no I/O).

- :func:`parse_request` turns a ``PlaceBetRequest`` into a :class:`Ticket` or raises
  :class:`BadRequest` with one field violation per problem (INVALID_ARGUMENT).
- :func:`price_leg` checks one leg against the market as it is now under the bettor's odds-change
  policy; :func:`check_ticket` combines the legs and applies the limits. Both raise
  :class:`Refusal` (NOT_FOUND or FAILED_PRECONDITION with a ``RejectReason``).
- :class:`Config` holds every limit and the in-play delays; ``Config.from_env`` reads them.

Prices are ``Decimal`` with two places; money is integer minor units.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from enum import Enum
from typing import Any

from livebet.betting.v1 import bet_pb2
from livebet.betting.v1 import betting_service_pb2 as bs
from livebet.common.v1 import common_pb2

from betting.domain.money import MoneyError, major_to_minor, to_minor
from pricing import builder as bb

MAX_LEGS = 20
MAX_ID = 128
TWO_PLACES = Decimal("0.01")
_ODDS = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,2})?$")
_POLICIES = {
    bet_pb2.ODDS_CHANGE_POLICY_UNSPECIFIED: bet_pb2.ODDS_CHANGE_POLICY_NONE,
    bet_pb2.ODDS_CHANGE_POLICY_NONE: bet_pb2.ODDS_CHANGE_POLICY_NONE,
    bet_pb2.ODDS_CHANGE_POLICY_HIGHER: bet_pb2.ODDS_CHANGE_POLICY_HIGHER,
    bet_pb2.ODDS_CHANGE_POLICY_ANY: bet_pb2.ODDS_CHANGE_POLICY_ANY,
}


# --- configuration ----------------------------------------------------------------------------
_LIMITS = (
    "min_stake",
    "max_stake",
    "max_payout",
    "min_odds",
    "max_odds",
    "max_liability",
    "max_daily_stake",
    "limit_cooling_off",
)


@dataclass(frozen=True)
class Config:
    """Limits in major units of the stake's currency; delays in seconds."""

    min_stake: Decimal = Decimal("0.10")
    max_stake: Decimal = Decimal("10000")
    max_payout: Decimal = Decimal("250000")
    min_odds: Decimal = Decimal("1.01")
    max_odds: Decimal = Decimal("1000")  # per leg, and for the combined odds of an accumulator
    max_liability: Decimal = Decimal("100000")  # worst-case payout per outcome over accepted bets
    max_daily_stake: Decimal = Decimal("50000")  # per account, over 24 hours (per-account rows override)
    # in-play delay by sport name and market type ("" = any market type of the sport)
    in_play_delay: Mapping[tuple[str, str], float] = field(default_factory=lambda: {("football", ""): 5.0})
    pre_match_delay: Mapping[tuple[str, str], float] = field(default_factory=lambda: {("football", ""): 0.0})
    cash_out_margin: Decimal = Decimal("0.05")  # taken off a cash-out's value (betting.domain.cashout)
    builder_margin: Decimal = Decimal("0.10")  # on a bet builder's fair odds (pricing.builder)
    # seconds before a player's own limit that they loosened takes over (betting.domain.protection)
    limit_cooling_off: Decimal = Decimal("86400")

    def delay(self, sport: str, market_type: str, in_play: bool) -> float:
        table = self.in_play_delay if in_play else self.pre_match_delay
        return float(table.get((sport, market_type), table.get((sport, ""), 0.0)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """``LIVEBET_BETTING_<LIMIT>`` (e.g. ``LIVEBET_BETTING_MAX_STAKE=500``) and
        ``LIVEBET_BETTING_IN_PLAY_DELAY`` / ``..._PRE_MATCH_DELAY`` as ``football=5,football/next_goal=8``,
        ``LIVEBET_BETTING_CASH_OUT_MARGIN`` (e.g. ``0.05``), ``LIVEBET_BETTING_BUILDER_MARGIN`` (e.g.
        ``0.10``, on a bet builder's fair odds), ``LIVEBET_BETTING_LIMIT_COOLING_OFF``
        (seconds, default 86400)."""
        e = os.environ if env is None else env
        values: dict[str, object] = {}
        for name in _LIMITS:
            raw = e.get(f"LIVEBET_BETTING_{name.upper()}")
            if raw:
                try:
                    value = Decimal(raw)
                except ArithmeticError:
                    raise ValueError(f"LIVEBET_BETTING_{name.upper()} must be a decimal, got {raw!r}") from None
                if not value.is_finite() or value <= 0:
                    raise ValueError(f"LIVEBET_BETTING_{name.upper()} must be positive, got {raw!r}")
                values[name] = value
        for name in ("cash_out_margin", "builder_margin"):
            raw = e.get(f"LIVEBET_BETTING_{name.upper()}")
            if raw:
                try:
                    margin = Decimal(raw)
                except ArithmeticError:
                    margin = Decimal(-1)
                if not margin.is_finite() or not 0 <= margin <= Decimal("0.5"):
                    raise ValueError(f"LIVEBET_BETTING_{name.upper()} must be a decimal in [0, 0.5], got {raw!r}")
                values[name] = margin
        for name in ("in_play_delay", "pre_match_delay"):
            raw = e.get(f"LIVEBET_BETTING_{name.upper()}")
            if raw:
                values[name] = _delays(raw, f"LIVEBET_BETTING_{name.upper()}")
        return cls(**values)  # type: ignore[arg-type]


def _delays(text: str, what: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, _, seconds = item.partition("=")
        sport, _, market_type = key.partition("/")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if not sport or not 0 <= value <= 60:
            raise ValueError(f"{what}: expected sport[/market_type]=seconds (0-60), got {item!r}")
        out[(sport, market_type)] = value
    return out


# --- errors -----------------------------------------------------------------------------------
class BadRequest(Exception):
    """The request is malformed: INVALID_ARGUMENT with these (field, description) violations."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
        self.violations = violations


class Kind(Enum):
    NOT_FOUND = "not_found"
    FAILED_PRECONDITION = "failed_precondition"


class Refusal(Exception):
    """The bet cannot be taken as asked: NOT_FOUND (unknown match, market, outcome) or
    FAILED_PRECONDITION with a reject reason (market not open, odds changed, a limit)."""

    def __init__(self, kind: Kind, reason: int, message: str) -> None:
        super().__init__(message)
        self.kind, self.reason, self.message = kind, reason, message


def _refuse(reason: int, message: str) -> Refusal:
    return Refusal(Kind.FAILED_PRECONDITION, reason, message)


# --- the request ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leg:
    match_id: str
    market_key: str  # canonical: type|spec=value|...
    market_type: str
    outcome_id: str
    requested_odds: Decimal
    market_version: int


@dataclass(frozen=True)
class Ticket:
    request_id: str
    legs: tuple[Leg, ...]
    currency: str
    stake: int  # minor units
    policy: int  # OddsChangePolicy (UNSPECIFIED made NONE)
    builder: Decimal | None = None  # a bet builder's requested odds (its legs carry them too)


def is_builder(legs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether stored legs are a bet builder's: more than one, all on one match (an accumulator's
    legs are on different matches)."""
    return len(legs) > 1 and len({g["match_id"] for g in legs}) == 1


def parse_odds(text: str) -> Decimal | None:
    """Decimal odds with at most two places, or None when malformed."""
    if not _ODDS.match(text):
        return None
    return Decimal(text).quantize(TWO_PLACES)


def market_key(market_type: str, specifiers: list[tuple[str, str]], given: str) -> str:
    """The canonical key of a market reference (as ``Market.ref.market_key``)."""
    if given:
        return given
    return market_type + "".join(f"|{k}={v}" for k, v in specifiers)


def specifiers_of(key: str) -> list[tuple[str, str]]:
    """The specifiers in a canonical market key (the inverse of :func:`market_key`'s)."""
    return [(k, v) for k, _, v in (part.partition("=") for part in key.split("|")[1:])]


def ref_key(ref: common_pb2.MarketRef) -> str:
    """The canonical key of a ``MarketRef`` (its ``market_key``, or type and specifiers)."""
    return market_key(ref.market_type, [(x.key, x.value) for x in ref.specifiers], ref.market_key)


def parse_request(req: bs.PlaceBetRequest, config: Config) -> Ticket:
    bad: list[tuple[str, str]] = []
    if not req.request_id:
        bad.append(("request_id", "is required (an idempotency key chosen by the client)"))
    elif len(req.request_id) > MAX_ID:
        bad.append(("request_id", f"is longer than {MAX_ID} characters"))
    n = len(req.selections)
    if n == 0:
        bad.append(("selections", "at least one selection is required"))
    elif n > MAX_LEGS:
        bad.append(("selections", f"at most {MAX_LEGS} selections, got {n}"))
    if req.odds_change_policy not in _POLICIES:
        bad.append(("odds_change_policy", f"unknown policy {req.odds_change_policy}"))
    builder: Decimal | None = None
    is_builder_slip = req.HasField("bet_builder_odds")
    if is_builder_slip:
        builder = parse_odds(req.bet_builder_odds.decimal)
        if builder is None:
            bad.append(("bet_builder_odds", f"{req.bet_builder_odds.decimal!r} is not decimal odds like 3.10"))
        elif builder < config.min_odds:
            bad.append(("bet_builder_odds", f"odds {builder} are below the minimum {config.min_odds}"))
        if not bb.MIN_LEGS <= n <= bb.MAX_LEGS:
            bad.append(("selections", f"a bet builder has {bb.MIN_LEGS}-{bb.MAX_LEGS} selections, got {n}"))
    legs: list[Leg] = []
    for i, s in enumerate(req.selections[:MAX_LEGS]):
        where = f"selections[{i}]"
        key, market_type = _parse_outcome(s.outcome, where, "outcome.", is_builder_slip, bad)
        if is_builder_slip:  # the legs are priced together: they carry its odds
            odds = builder
        else:
            odds = parse_odds(s.requested_odds.decimal)
            if odds is None:
                bad.append((f"{where}.requested_odds", f"{s.requested_odds.decimal!r} is not decimal odds like 2.10"))
            elif odds < config.min_odds:
                bad.append((f"{where}.requested_odds", f"odds {odds} are below the minimum {config.min_odds}"))
        legs.append(
            Leg(s.outcome.market.match_id, key, market_type, s.outcome.outcome_id, odds or Decimal(0), s.market_version)
        )
    bad.extend(_combination_problems(legs, is_builder_slip, "selections"))
    currency = req.stake.currency_code
    stake = 0
    try:
        stake = to_minor(currency, req.stake.minor_units, req.stake.decimal)
    except MoneyError as err:
        bad.append(("stake", str(err)))
    if bad:
        raise BadRequest(bad)
    return Ticket(req.request_id, tuple(legs), currency, stake, _POLICIES[req.odds_change_policy], builder)


def _parse_outcome(
    o: common_pb2.OutcomeRef, where: str, path: str, builder: bool, bad: list[tuple[str, str]]
) -> tuple[str, str]:
    """The canonical market key and the market type of an outcome reference at ``where`` (its
    fields at ``where.path...``); what is wrong with it goes into ``bad`` (a bet builder's outcome
    must also be combinable)."""
    key = ref_key(o.market)
    named = (("market.match_id", o.market.match_id), ("market.market_key", key), ("outcome_id", o.outcome_id))
    for name, value in named:
        if not value:
            bad.append((f"{where}.{path}{name}", "is required"))
        elif len(value) > MAX_ID:
            bad.append((f"{where}.{path}{name}", f"is longer than {MAX_ID} characters"))
    if builder:
        try:
            bb.check_combinable(bb.Pick(key, o.outcome_id))
        except bb.NotCombinable as err:
            bad.append((where, str(err)))
    return key, o.market.market_type or key.split("|", 1)[0]


def _combination_problems(legs: Sequence[Leg], builder: bool, field: str) -> list[tuple[str, str]]:
    """An accumulator's legs are on different matches; a bet builder's all on one, one per market
    (``field``: the request's list of them)."""
    bad: list[tuple[str, str]] = []
    seen_outcomes: set[tuple[str, str, str]] = set()
    matches: set[str] = set()
    markets: set[str] = set()
    for i, leg in enumerate(legs):
        if (leg.match_id, leg.market_key, leg.outcome_id) in seen_outcomes:
            bad.append((f"{field}[{i}]", "the same outcome appears twice"))
        elif builder and matches and leg.match_id not in matches:
            bad.append((f"{field}[{i}]", f"a bet builder's {field} are all on one match, not {leg.match_id}"))
        elif builder and leg.market_key in markets:
            bad.append((f"{field}[{i}]", f"a bet builder takes one outcome of each market ({leg.market_key})"))
        elif not builder and len(legs) > 1 and leg.match_id in matches:
            message = f"legs on the same match ({leg.match_id}) cannot be combined, except in a bet builder"
            bad.append((f"{field}[{i}]", message))
        seen_outcomes.add((leg.match_id, leg.market_key, leg.outcome_id))
        matches.add(leg.match_id)
        markets.add(leg.market_key)
    return bad


def apply_policy(where: str, current: Decimal, asked: Decimal, policy: int) -> None:
    """Refuse (ODDS_CHANGED) a price the bettor's odds-change policy does not take."""
    if policy == bet_pb2.ODDS_CHANGE_POLICY_NONE and current != asked:
        raise _refuse(bet_pb2.REJECT_REASON_ODDS_CHANGED, f"{where}: odds are {current}, not {asked}")
    if policy == bet_pb2.ODDS_CHANGE_POLICY_HIGHER and current < asked:
        raise _refuse(bet_pb2.REJECT_REASON_ODDS_CHANGED, f"{where}: odds fell to {current} from {asked}")


# --- pricing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quote:
    """A market's outcome as on offer now."""

    open: bool  # market open and outcome active
    odds: Decimal | None  # None when not offered
    market_version: int
    status_reason: str = ""


def price_leg(leg: Leg, quote: Quote, policy: int, config: Config) -> Decimal:
    """The odds the leg stands at, or a Refusal."""
    where = f"{leg.match_id} {leg.market_key} {leg.outcome_id}"
    if not quote.open or quote.odds is None:
        why = f" ({quote.status_reason})" if quote.status_reason else ""
        raise _refuse(bet_pb2.REJECT_REASON_MARKET_NOT_OPEN, f"{where} is not open for betting{why}")
    if leg.market_version > quote.market_version:
        raise _refuse(
            bet_pb2.REJECT_REASON_ODDS_CHANGED,
            f"{where}: market version {leg.market_version} was never published (current {quote.market_version})",
        )
    current = quote.odds
    apply_policy(where, current, leg.requested_odds, policy)
    if current > config.max_odds:
        message = f"{where}: odds {current} are above the maximum {config.max_odds}"
        raise _refuse(bet_pb2.REJECT_REASON_ODDS_LIMIT, message)
    return current


def combined_odds(odds: list[Decimal]) -> Decimal:
    """The accumulator's odds: the product, rounded down to two places."""
    product = Decimal(1)
    for o in odds:
        product *= o
    return product.quantize(TWO_PLACES, rounding=ROUND_DOWN)


def payout(stake: int, odds: Decimal) -> int:
    """Potential payout in minor units, rounded down."""
    return int((Decimal(stake) * odds).to_integral_value(rounding=ROUND_DOWN))


def check_ticket(ticket: Ticket, odds: list[Decimal], config: Config) -> tuple[Decimal, int]:
    """Combined odds and potential payout, or a Refusal for a stake, odds or payout limit."""
    cur = ticket.currency
    total = combined_odds(odds)
    if total > config.max_odds:
        message = f"combined odds {total} are above the maximum {config.max_odds}"
        raise _refuse(bet_pb2.REJECT_REASON_ODDS_LIMIT, message)
    lo, hi = major_to_minor(config.min_stake, cur), major_to_minor(config.max_stake, cur)
    if ticket.stake < lo:
        raise _refuse(bet_pb2.REJECT_REASON_STAKE_LIMIT, f"stake is below the minimum {config.min_stake} {cur}")
    if ticket.stake > hi:
        raise _refuse(bet_pb2.REJECT_REASON_STAKE_LIMIT, f"stake is above the maximum {config.max_stake} {cur}")
    win = payout(ticket.stake, total)
    if win > major_to_minor(config.max_payout, cur):
        message = f"potential payout is above the maximum {config.max_payout} {cur}"
        raise _refuse(bet_pb2.REJECT_REASON_PAYOUT_LIMIT, message)
    return total, win


def price_builder(
    legs: Sequence[Leg],
    quotes: Sequence[Quote],
    inputs: bb.ModelInputs | None,
    asked: Decimal,
    policy: int,
    config: Config,
) -> tuple[list[Decimal], Decimal]:
    """A bet builder now: each leg's own price (its market must be open, its version one that was
    published) and the builder's odds, which the bettor's policy must take against ``asked``; a
    Refusal otherwise (INVALID_COMBINATION: no model prices the match, or the outcomes are not
    offered together)."""
    match = legs[0].match_id
    singles = [price_leg(leg, q, bet_pb2.ODDS_CHANGE_POLICY_ANY, config) for leg, q in zip(legs, quotes, strict=True)]
    if inputs is None:
        message = f"match {match} is priced from a provider's odds: no bet builder on it"
        raise _refuse(bet_pb2.REJECT_REASON_INVALID_COMBINATION, message)
    picks = [bb.Pick(leg.market_key, leg.outcome_id) for leg in legs]
    try:
        odds, _ = bb.price(inputs, picks, config.builder_margin)
    except (bb.NotCombinable, bb.NotOffered) as err:
        raise _refuse(bet_pb2.REJECT_REASON_INVALID_COMBINATION, f"bet builder on {match}: {err}") from None
    apply_policy(f"bet builder on {match}", odds, asked, policy)
    return singles, odds


def parse_quote(outcomes: Sequence[common_pb2.OutcomeRef]) -> list[Leg]:
    """The legs of a ``QuoteBetBuilderRequest``, or BadRequest."""
    bad: list[tuple[str, str]] = []
    if not bb.MIN_LEGS <= len(outcomes) <= bb.MAX_LEGS:
        bad.append(("outcomes", f"a bet builder has {bb.MIN_LEGS}-{bb.MAX_LEGS} outcomes, got {len(outcomes)}"))
    legs: list[Leg] = []
    for i, o in enumerate(outcomes[: bb.MAX_LEGS]):
        key, market_type = _parse_outcome(o, f"outcomes[{i}]", "", True, bad)
        legs.append(Leg(o.market.match_id, key, market_type, o.outcome_id, Decimal(0), 0))
    bad.extend(_combination_problems(legs, True, "outcomes"))
    if bad:
        raise BadRequest(bad)
    return legs
