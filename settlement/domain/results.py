"""From a match's result to each open outcome's result and return per unit stake (pure).

The rules themselves are :mod:`pricing.settlement` (one implementation for the whole platform);
this module applies them to the legs that are open on a match, grouped by market, in the shape
``betting.settle_market`` takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from livebet.betting.v1 import bet_pb2

from pricing.settlement import Result, Settled, SettlementError, settle

BET_RESULT = {
    Result.WIN: bet_pb2.BET_RESULT_WON,
    Result.LOSE: bet_pb2.BET_RESULT_LOST,
    Result.VOID: bet_pb2.BET_RESULT_VOID,
    Result.HALF_WIN: bet_pb2.BET_RESULT_HALF_WON,
    Result.HALF_LOSE: bet_pb2.BET_RESULT_HALF_LOST,
}


@dataclass(frozen=True)
class MatchResult:
    """What is known of a match's result."""

    home: int
    away: int
    ended: bool
    halftime: tuple[int, int] | None = None
    goal_sides: tuple[str, ...] = field(default_factory=tuple)  # "home"/"away" in the order scored


@dataclass(frozen=True)
class OpenLeg:
    market_key: str  # canonical: type|spec=value|...
    outcome_id: str
    odds: Decimal


def parse_market_key(key: str) -> tuple[str, dict[str, str]]:
    market_type, *parts = key.split("|")
    return market_type, dict(p.split("=", 1) for p in parts if "=" in p)


def decidable(market_type: str, specifiers: dict[str, str], r: MatchResult) -> bool:
    """Whether this market's result is known from ``r`` (full time; half time for halftime_1x2;
    next_goal once that goal was scored or the match ended)."""
    if market_type == "halftime_1x2":
        return r.halftime is not None
    if market_type == "next_goal":
        n = int(specifiers.get("goalnr", "0") or 0)
        return n > 0 and (len(r.goal_sides) >= n or r.ended)
    return r.ended


def results_by_market(result: MatchResult, legs: Iterable[OpenLeg]) -> dict[str, list[dict[str, object]]]:
    """For each decidable market with open legs: one entry per (outcome, odds) with the result and
    the return per unit stake, ready for ``betting.settle_market``. Markets this result cannot
    decide are left out; a leg the rules refuse (an unknown outcome) is voided (return 1)."""
    out: dict[str, list[dict[str, object]]] = {}
    for leg in sorted(set(legs), key=lambda x: (x.market_key, x.outcome_id, x.odds)):
        market_type, specs = parse_market_key(leg.market_key)
        try:
            if not decidable(market_type, specs, result):
                continue
        except ValueError:
            continue
        home, away = (result.home, result.away)
        if market_type == "halftime_1x2" and result.halftime:
            home, away = result.halftime
        try:
            outcome = settle(market_type, specs, leg.outcome_id, home, away, goal_sides=list(result.goal_sides))
        except SettlementError:
            outcome = Result.VOID
        rpu = Settled(outcome).return_per_unit(leg.odds)
        out.setdefault(leg.market_key, []).append(
            {"outcome_id": leg.outcome_id, "odds": str(leg.odds), "result": BET_RESULT[outcome], "rpu": str(rpu)}
        )
    return out


_PROVIDER_RESULT = {1: Result.WIN, 2: Result.LOSE, 3: Result.VOID, 4: Result.HALF_WIN, 5: Result.HALF_LOSE}


def _factor(text: str, default: Decimal) -> Decimal:
    try:
        value = Decimal(text) if text else default
    except ArithmeticError:
        return default
    return value if value.is_finite() else default


def provider_results(
    outcomes: Iterable[tuple[str, int, str, str]], legs: Iterable[OpenLeg], market_key: str
) -> list[dict[str, object]]:
    """A provider's settlement of one market (per outcome: id, OutcomeResult, void_factor,
    dead_heat_factor) applied to the open legs on that market: the same shape as
    :func:`results_by_market`. Legs on outcomes the provider did not settle are left open."""
    given = {o: (_PROVIDER_RESULT.get(r), _factor(v, Decimal(0)), _factor(d, Decimal(1))) for o, r, v, d in outcomes}
    out: list[dict[str, object]] = []
    for leg in sorted({x for x in legs if x.market_key == market_key}, key=lambda x: (x.outcome_id, x.odds)):
        result, void, dead_heat = given.get(leg.outcome_id, (None, Decimal(0), Decimal(1)))
        if result is None:
            continue
        try:
            rpu = Settled(result, void, dead_heat).return_per_unit(leg.odds)
        except SettlementError:
            continue  # factors out of range: leave it for a trader
        out.append({"outcome_id": leg.outcome_id, "odds": str(leg.odds), "result": BET_RESULT[result], "rpu": str(rpu)})
    return out
