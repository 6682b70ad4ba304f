"""Bet builder pricing (pure: no I/O): the probability that several outcomes of one match all win,
and the odds offered for it.

Outcomes of one match are not independent: a home win and over 2.5 goals win together more often
than the product of their probabilities says, a home win and "both teams to score: no" less often.
The own model (:mod:`pricing.football`) gives the distribution of the goals still to come as a grid;
every market that is decided by the final score alone is a yes/no function of that score. So the
joint probability is the grid summed over the final scores at which **every** outcome wins. Which
outcome wins at which score is decided by :func:`pricing.settlement.settle`, the same function the
settlement service settles with, so the price and the settlement cannot disagree.

Combinable: ``1x2``, ``double_chance``, ``btts``, ``odd_even``, ``exact_goals``, ``correct_score``,
and ``total``, ``team_total`` and ``asian_handicap`` on half lines (2.5, -0.5): markets that end in a
plain win or loss. Not combinable: lines that can push (whole and quarter lines, draw no bet), the
next goal (it depends on the order of goals) and the half-time result (a different score).

The odds are ``1 / (p x (1 + margin))`` rounded down to the ladder (:mod:`pricing.ladder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from pricing import ladder
from pricing.football import MAX_GOALS, MatchState, ScoreModel, score_model
from pricing.settlement import Result, SettlementError, settle

#: market types a bet builder can hold (and, for the line markets, only on half lines)
COMBINABLE = frozenset(
    [
        *("1x2", "double_chance", "btts", "odd_even", "exact_goals", "correct_score"),
        *("total", "team_total", "asian_handicap"),
    ]
)
_LINE_SPECIFIER = {"total": "total", "team_total": "total", "asian_handicap": "hcp"}
MIN_LEGS, MAX_LEGS = 2, 10
#: a combination less likely than this is not offered (odds would pass any sane maximum)
MIN_PROBABILITY = 1e-4
DEFAULT_MARGIN = Decimal("0.10")


class NotCombinable(ValueError):
    """The selection cannot be in a bet builder (the message says why)."""


class NotOffered(ValueError):
    """The combination is not offered: its outcomes cannot all win, or it is too unlikely or too
    likely to be priced."""


@dataclass(frozen=True)
class Pick:
    market_key: str  # canonical: type|spec=value|...
    outcome_id: str


def _parse(key: str) -> tuple[str, dict[str, str]]:
    market_type, *parts = key.split("|")
    return market_type, dict(p.split("=", 1) for p in parts if "=" in p)


def check_combinable(pick: Pick) -> None:
    """Raise :class:`NotCombinable` unless the pick's market may be in a bet builder."""
    market_type, specifiers = _parse(pick.market_key)
    if market_type not in COMBINABLE:
        raise NotCombinable(
            f"{market_type} cannot be in a bet builder (only markets decided by the final score "
            f"without a push: {', '.join(sorted(COMBINABLE))})"
        )
    name = _LINE_SPECIFIER.get(market_type)
    if name is not None:
        line = specifiers.get(name, "")
        try:
            quarters = Decimal(line) * 4
        except ArithmeticError:
            raise NotCombinable(f"{pick.market_key} has no valid {name} line") from None
        if abs(quarters) % 4 != 2:
            raise NotCombinable(f"{pick.market_key}: only half lines (such as 2.5) can be in a bet builder")
    _mask(pick.market_key, pick.outcome_id, 0, 0)  # an unknown outcome raises here


@lru_cache(maxsize=8192)
def _mask(market_key: str, outcome_id: str, home: int, away: int) -> NDArray[np.bool_]:
    """Where on the remaining-goal grid (home goals still to come x away goals) the outcome wins,
    the score being ``home``-``away`` now. Read-only."""
    market_type, specifiers = _parse(market_key)
    n = MAX_GOALS + 1
    out = np.zeros((n, n), dtype=bool)
    try:
        for i in range(n):
            for j in range(n):
                result = settle(market_type, specifiers, outcome_id, home + i, away + j)
                if result not in (Result.WIN, Result.LOSE):
                    raise NotCombinable(f"{market_key} can end in a push: it cannot be in a bet builder")
                out[i, j] = result is Result.WIN
    except SettlementError as err:
        raise NotCombinable(f"{market_key} {outcome_id}: {err}") from None
    out.setflags(write=False)
    return out


def joint_probability(model: ScoreModel, picks: Sequence[Pick]) -> float:
    """The probability, under ``model``, that every pick wins (each checked with
    :func:`check_combinable` first)."""
    home, away = model.state.score
    wins = np.ones(model.grid.shape, dtype=bool)
    for pick in picks:
        check_combinable(pick)
        wins &= _mask(pick.market_key, pick.outcome_id, home, away)
    return float(model.grid[wins].sum())


def builder_odds(probability: float, margin: Decimal = DEFAULT_MARGIN) -> Decimal:
    """The odds offered for a combination of this probability: ``1 / (p x (1 + margin))`` rounded
    down to the ladder; :class:`NotOffered` when it is below 1.01 or above the ladder (or ``p`` is
    under :data:`MIN_PROBABILITY`). The betting service's odds limit applies on top."""
    if not 0 <= margin < 1:
        raise ValueError(f"bet builder margin must be in [0, 1), got {margin}")
    if not probability >= MIN_PROBABILITY:  # NaN too
        raise NotOffered("these selections cannot all win together (or almost never do): not offered")
    fair_with_margin = 1.0 / (probability * (1.0 + float(margin)))
    if fair_with_margin * 100 < ladder.MIN_ODDS_CENTS:
        raise NotOffered("these selections are all but certain to win together: not offered")
    cents = int(ladder.round_down(np.array([fair_with_margin]))[0])
    if fair_with_margin * 100 > ladder.MAX_ODDS_CENTS:
        raise NotOffered(f"the combination's odds are above the ladder's {ladder.to_text(ladder.MAX_ODDS_CENTS)}")
    return (Decimal(cents) / 100).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class ModelInputs:
    """What the engine priced a match version from (``MatchOdds.model``)."""

    home_xg: float
    away_xg: float
    state: MatchState

    def score_model(self) -> ScoreModel:
        return score_model(self.home_xg, self.away_xg, self.state)


def price(inputs: ModelInputs, picks: Sequence[Pick], margin: Decimal = DEFAULT_MARGIN) -> tuple[Decimal, float]:
    """The bet builder's odds and its fair probability (NotCombinable, NotOffered)."""
    if not MIN_LEGS <= len(picks) <= MAX_LEGS:
        raise NotCombinable(f"a bet builder has {MIN_LEGS}-{MAX_LEGS} selections, got {len(picks)}")
    markets = [p.market_key for p in picks]
    if len(set(markets)) != len(markets):
        raise NotCombinable("a bet builder takes at most one outcome of each market")
    p = joint_probability(inputs.score_model(), picks)
    return builder_odds(p, margin), p
