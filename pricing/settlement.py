"""Settlement rules: given a market, an outcome and the relevant final score, the result and the
return per unit stake. Pure functions over Decimal (money is never a binary float); the settlement
service uses exactly these.

Conventions
- Asian handicap and total lines: see :mod:`pricing.lines` (quarter lines split the stake).
- **Asian handicaps count the whole match**, in play too: the final score decides, including the
  goals scored before the bet (the in-play price is computed the same way, from the current score).
- Dead heat: a winning selection with ``dead_heat_factor`` f returns ``odds * f`` per unit (the
  share f of the stake is paid at full odds, the rest is lost), as in the UOF ``bet_settlement``.
- Void returns the stake (1 per unit); ``void_factor`` v returns ``v`` of the stake and settles the
  rest as the result says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

from pricing.lines import parse_line, sub_lines

ONE, HALF, ZERO = Decimal(1), Decimal("0.5"), Decimal(0)


class Result(Enum):
    WIN = "win"
    LOSE = "lose"
    VOID = "void"
    HALF_WIN = "half_win"
    HALF_LOSE = "half_lose"


class SettlementError(ValueError):
    """The market, outcome or score cannot be settled (the message says which)."""


def return_per_unit(result: Result, odds: Decimal, dead_heat_factor: Decimal = ONE) -> Decimal:
    """What one unit of stake returns (stake included) at decimal ``odds``."""
    if odds < ONE:
        raise SettlementError(f"odds must be at least 1, got {odds}")
    if not ZERO < dead_heat_factor <= ONE:
        raise SettlementError(f"dead_heat_factor must be in (0, 1], got {dead_heat_factor}")
    if result is Result.WIN:
        return odds * dead_heat_factor
    if result is Result.LOSE:
        return ZERO
    if result is Result.VOID:
        return ONE
    if result is Result.HALF_WIN:
        return (odds + ONE) * HALF
    return HALF


def _over(value: int, line: Decimal) -> Result:
    """Result of 'value over line' with quarter-line splitting."""
    halves = []
    for sub in sub_lines(line):
        v = Decimal(value)
        halves.append(Result.WIN if v > sub else Result.LOSE if v < sub else Result.VOID)
    if len(halves) == 1 or halves[0] == halves[1]:
        return halves[0]
    if Result.WIN in halves:
        return Result.HALF_WIN
    return Result.HALF_LOSE


def _flip(result: Result) -> Result:
    return {
        Result.WIN: Result.LOSE,
        Result.LOSE: Result.WIN,
        Result.HALF_WIN: Result.HALF_LOSE,
        Result.HALF_LOSE: Result.HALF_WIN,
        Result.VOID: Result.VOID,
    }[result]


def _binary(won: bool) -> Result:
    return Result.WIN if won else Result.LOSE


def _outcome_error(market_type: str, outcome: str, allowed: Sequence[str]) -> SettlementError:
    return SettlementError(f"{market_type} has no outcome {outcome!r}; outcomes: {', '.join(allowed)}")


def settle(
    market_type: str,
    specifiers: Mapping[str, str],
    outcome: str,
    home: int,
    away: int,
    *,
    goal_sides: Sequence[str] | None = None,
) -> Result:
    """Result of ``outcome`` of a market given the relevant final score ``home``-``away`` (the
    half-time score for ``halftime_1x2``). ``next_goal`` needs ``goal_sides``: who scored each goal
    in order ("home"/"away")."""
    if home < 0 or away < 0:
        raise SettlementError("a score cannot be negative")
    diff, total = home - away, home + away

    def pick(options: Mapping[str, bool]) -> Result:
        if outcome not in options:
            raise _outcome_error(market_type, outcome, list(options))
        return _binary(options[outcome])

    if market_type in ("1x2", "halftime_1x2"):
        return pick({"home": diff > 0, "draw": diff == 0, "away": diff < 0})
    if market_type == "double_chance":
        return pick({"1x": diff >= 0, "12": diff != 0, "x2": diff <= 0})
    if market_type == "draw_no_bet":
        if outcome not in ("home", "away"):
            raise _outcome_error(market_type, outcome, ["home", "away"])
        if diff == 0:
            return Result.VOID
        return _binary((diff > 0) == (outcome == "home"))
    if market_type == "btts":
        return pick({"yes": home > 0 and away > 0, "no": not (home > 0 and away > 0)})
    if market_type == "odd_even":
        return pick({"odd": total % 2 == 1, "even": total % 2 == 0})
    if market_type == "exact_goals":
        options = {str(k): total == k for k in range(7)} | {"7+": total >= 7}
        return pick(options)
    if market_type == "correct_score":
        if outcome == "other":
            return _binary(home > 6 or away > 6)
        try:
            h, a = (int(x) for x in outcome.split("-"))
        except ValueError:
            raise SettlementError(f"correct_score outcome must look like '2-1' or 'other', got {outcome!r}") from None
        return _binary((h, a) == (home, away))
    if market_type == "total":
        line = parse_line(_spec(specifiers, "total"))
        over = _over(total, line)
        return over if _check(outcome, ("over", "under"), market_type) == "over" else _flip(over)
    if market_type == "team_total":
        line = parse_line(_spec(specifiers, "total"))
        team = _spec(specifiers, "team")
        if team not in ("home", "away"):
            raise SettlementError(f"team_total team must be home or away, got {team!r}")
        over = _over(home if team == "home" else away, line)
        return over if _check(outcome, ("over", "under"), market_type) == "over" else _flip(over)
    if market_type == "asian_handicap":
        # hcp is the home side's handicap; the away side gets the opposite.
        hcp = parse_line(_spec(specifiers, "hcp"))
        home_result = _over(diff, -hcp)
        return home_result if _check(outcome, ("home", "away"), market_type) == "home" else _flip(home_result)
    if market_type == "next_goal":
        n = int(_spec(specifiers, "goalnr"))
        if goal_sides is None:
            raise SettlementError("next_goal needs the order of goals (goal_sides)")
        scorer = goal_sides[n - 1] if len(goal_sides) >= n else "none"
        return pick({"home": scorer == "home", "none": scorer == "none", "away": scorer == "away"})
    raise SettlementError(f"unknown market type {market_type!r}")


def _spec(specifiers: Mapping[str, str], key: str) -> str:
    if key not in specifiers:
        raise SettlementError(f"specifier {key!r} is required")
    return specifiers[key]


def _check(outcome: str, allowed: Sequence[str], market_type: str) -> str:
    if outcome not in allowed:
        raise _outcome_error(market_type, outcome, allowed)
    return outcome


@dataclass(frozen=True)
class Settled:
    """A result with the UOF factors applied."""

    result: Result
    void_factor: Decimal = ZERO
    dead_heat_factor: Decimal = ONE

    def return_per_unit(self, odds: Decimal) -> Decimal:
        """Return per unit stake: the void share comes back, the rest settles by ``result``."""
        if not ZERO <= self.void_factor <= ONE:
            raise SettlementError(f"void_factor must be in [0, 1], got {self.void_factor}")
        rest = ONE - self.void_factor
        return self.void_factor + rest * return_per_unit(self.result, odds, self.dead_heat_factor)
