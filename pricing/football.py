"""In-play football model: the distribution of the final score from the pre-match expected goals
and the live match state.

Goals still to come are Poisson with a mean ``xg * share_of_intensity_remaining * multipliers``
for each side, independent (the ``poisson`` configuration) or with a Dixon-Coles correction of the
low-score cells (``inplay``). Everything a market needs comes from one grid of remaining goals
``G[i, j] = P(home scores i more, away scores j more)``.

Time profile (``inplay``)
    Scoring intensity grows linearly through a match, ``w(c) = 1 + beta (c/90 - 1/2)`` at match
    clock minute ``c``: Dixon & Robinson (1998), "A birth process model for association football
    matches", The Statistician 47(3), found the scoring rate rising through the match. Stoppage
    minutes score at the rate of the end of their half; about 3 are expected in the first half and
    7 in the second (the Premier League's added time since the stricter timekeeping of 2023-24;
    announced stoppage replaces them live). ``beta`` is fitted so that the model's first-half share
    of goals matches the shipped Premier League data (football-data.co.uk, HTHG+HTAG over FTHG+FTAG,
    the 632 matches of 2023-24 and 2024-25 with closing odds: 871 of 2002 goals, 0.4351), giving
    ``beta = 0.352``; ``python -m pricing calibrate --profile FILES`` recomputes it.

Red cards (``inplay``)
    Each dismissal multiplies the penalised side's remaining intensity by 0.67 and the opponent's by
    1.25: Vecer, Kopriva & Ichiba (2009), "Estimating the effect of the red card in soccer: when to
    commit an offense in exchange for preventing a goal opportunity", Journal of Quantitative
    Analysis in Sports 5(1), report roughly a third less scoring for the ten men and a quarter more
    for their opponents.

Score effects
    Optional (``leading_factor``/``trailing_factor``, off in both shipped configurations): the side
    ahead scores at ``leading_factor`` times its rate and the side behind at ``trailing_factor`` for
    the rest of the match, from the current score only (not re-evaluated after each future goal).

Dixon-Coles (``inplay``)
    ``tau`` scales the remaining-goals cells 0-0, 1-0, 0-1 and 1-1 with ``rho`` (Dixon & Coles 1997,
    "Modelling association football scores and inefficiencies in the football betting market",
    Applied Statistics 46(2)), which lets the model reproduce the market's draw price. ``rho = -0.075``
    is the value that minimises the model's distance to Pinnacle's de-margined closing odds over the
    Premier League 2023-24 (``python -m pricing calibrate --fit-rho``); without it (rho = 0) the
    pre-match fit misses the market by 0.0067 on average instead of 0.0024.

The ``poisson`` configuration (uniform intensity over 90 minutes, no stoppage, no red-card or score
effects, rho = 0) reduces exactly to independent Poisson on the remaining fraction of 90 minutes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares

from pricing.margin import remove_margin

FloatArray = NDArray[np.float64]

#: Remaining goals per side covered by the grid; the tail P(X >= MAX_GOALS) is folded into the last
#: cell, so the grid always sums to 1.
MAX_GOALS = 15


class Period(Enum):
    """Where the match is."""

    NOT_STARTED = "not_started"
    FIRST_HALF = "first_half"
    HALF_TIME = "half_time"
    SECOND_HALF = "second_half"
    FULL_TIME = "full_time"


@dataclass(frozen=True)
class ModelConfig:
    """A configuration of the model (see the module docstring for the sources)."""

    name: str
    profile_slope: float = 0.0  # beta of w(c) = 1 + beta (c/90 - 1/2); 0 = uniform
    first_half_stoppage: float = 0.0  # expected minutes
    second_half_stoppage: float = 0.0
    red_card_own: float = 1.0  # multiplier per own dismissal
    red_card_opponent: float = 1.0  # multiplier per opponent dismissal
    leading_factor: float = 1.0
    trailing_factor: float = 1.0
    rho: float = 0.0  # Dixon-Coles dependence of low scores

    def __post_init__(self) -> None:
        if not -2.0 < self.profile_slope < 2.0:
            raise ValueError("profile_slope must be in (-2, 2) so that the intensity stays positive")
        if self.first_half_stoppage < 0 or self.second_half_stoppage < 0:
            raise ValueError("stoppage minutes cannot be negative")
        if min(self.red_card_own, self.red_card_opponent, self.leading_factor, self.trailing_factor) <= 0:
            raise ValueError("multipliers must be positive")


POISSON = ModelConfig(name="poisson")
INPLAY = ModelConfig(
    name="inplay",
    profile_slope=0.352,
    first_half_stoppage=3.0,
    second_half_stoppage=7.0,
    red_card_own=0.67,
    red_card_opponent=1.25,
    rho=-0.075,
)
MODELS = {m.name: m for m in (POISSON, INPLAY)}
DEFAULT_MODEL = INPLAY


@dataclass(frozen=True)
class MatchState:
    """The live state the model needs. ``minute`` is the match clock (0-90); during stoppage time
    it stays at 45 or 90 and ``stoppage_played`` counts the added minutes played so far."""

    minute: float = 0.0
    home_goals: int = 0
    away_goals: int = 0
    home_red_cards: int = 0
    away_red_cards: int = 0
    period: Period | None = None  # derived from the minute when not given
    stoppage_played: float = 0.0
    stoppage_announced: float | None = None  # for the current half, once the board is up
    half_time_score: tuple[int, int] | None = None  # known after the first half

    def __post_init__(self) -> None:
        if not 0 <= self.minute <= 90:
            raise ValueError(f"minute must be between 0 and 90 (stoppage goes in stoppage_played), got {self.minute}")
        if min(self.home_goals, self.away_goals, self.home_red_cards, self.away_red_cards) < 0:
            raise ValueError("goals and red cards cannot be negative")
        if self.home_red_cards > 5 or self.away_red_cards > 5:
            raise ValueError("a side with more than 5 dismissals is abandoned, not priced")

    @property
    def phase(self) -> Period:
        if self.period is not None:
            return self.period
        if self.minute <= 0 and self.stoppage_played <= 0:
            return Period.NOT_STARTED
        return Period.FIRST_HALF if self.minute < 45 else Period.SECOND_HALF

    @property
    def score(self) -> tuple[int, int]:
        return self.home_goals, self.away_goals


def _w_integral(slope: float, a: float, b: float) -> float:
    """Integral of w(c) = 1 + slope (c/90 - 1/2) over [a, b] (clock minutes)."""
    if b <= a:
        return 0.0
    return (b - a) * (1 - slope / 2) + slope * (b * b - a * a) / 180.0


@dataclass(frozen=True)
class Remaining:
    """Share of the match's scoring intensity still to come, for the whole match and for the
    first half alone."""

    match: float
    first_half: float


def remaining_share(state: MatchState, model: ModelConfig) -> Remaining:
    """Fraction of the full match's scoring intensity (stoppage included) still ahead."""
    s = model.profile_slope
    w45, w90 = 1.0, 1 + s / 2
    s1, s2 = model.first_half_stoppage, model.second_half_stoppage
    total = _w_integral(s, 0, 90) + s1 * w45 + s2 * w90
    phase = state.phase
    if phase is Period.FULL_TIME:
        return Remaining(0.0, 0.0)
    if phase is Period.NOT_STARTED:
        first = _w_integral(s, 0, 45) + s1 * w45
        return Remaining(1.0, first / total)
    if phase is Period.HALF_TIME:
        return Remaining((_w_integral(s, 45, 90) + s2 * w90) / total, 0.0)
    second_half_full = _w_integral(s, 45, 90) + s2 * w90
    if phase is Period.FIRST_HALF:
        clock = min(state.minute, 45.0)
        stoppage = s1 if state.stoppage_announced is None else state.stoppage_announced
        left_stoppage = max(stoppage - state.stoppage_played, 0.0) if clock >= 45 else stoppage
        first = _w_integral(s, clock, 45) + left_stoppage * w45
        return Remaining((first + second_half_full) / total, first / total)
    clock = max(min(state.minute, 90.0), 45.0)
    stoppage = s2 if state.stoppage_announced is None else state.stoppage_announced
    left_stoppage = max(stoppage - state.stoppage_played, 0.0) if clock >= 90 else stoppage
    return Remaining((_w_integral(s, clock, 90) + left_stoppage * w90) / total, 0.0)


def remaining_means(
    home_xg: float, away_xg: float, state: MatchState, model: ModelConfig, share: float | None = None
) -> tuple[float, float]:
    """Expected goals still to come for each side."""
    if home_xg <= 0 or away_xg <= 0 or not math.isfinite(home_xg + away_xg):
        raise ValueError(f"expected goals must be positive and finite, got {home_xg}, {away_xg}")
    f = remaining_share(state, model).match if share is None else share
    home = home_xg * f * model.red_card_own**state.home_red_cards * model.red_card_opponent**state.away_red_cards
    away = away_xg * f * model.red_card_own**state.away_red_cards * model.red_card_opponent**state.home_red_cards
    lead = state.home_goals - state.away_goals
    if lead > 0:
        home, away = home * model.leading_factor, away * model.trailing_factor
    elif lead < 0:
        home, away = home * model.trailing_factor, away * model.leading_factor
    return home, away


_K = np.arange(MAX_GOALS + 1, dtype=np.float64)
_LOG_FACT = np.array([math.lgamma(k + 1) for k in range(MAX_GOALS + 1)])


def poisson_pmf(mean: float) -> FloatArray:
    """P(X = 0..MAX_GOALS-1) and P(X >= MAX_GOALS) in the last cell."""
    if mean <= 0:
        pmf = np.zeros(MAX_GOALS + 1)
        pmf[0] = 1.0
        return pmf
    pmf = np.exp(_K * math.log(mean) - mean - _LOG_FACT)
    pmf[-1] = max(0.0, 1.0 - pmf[:-1].sum())
    return pmf


def _pmf_pair(home_mean: float, away_mean: float) -> FloatArray:
    """Both sides' pmfs in one pass (rows: home, away), tails folded into the last cell."""
    if home_mean <= 0 or away_mean <= 0:
        return np.stack([poisson_pmf(home_mean), poisson_pmf(away_mean)])
    means = np.array([[home_mean], [away_mean]])
    pmf = np.exp(_K * np.log(means) - means - _LOG_FACT)
    pmf[:, -1] = np.maximum(0.0, 1.0 - pmf[:, :-1].sum(axis=1))
    return pmf


def goal_grid(home_mean: float, away_mean: float, rho: float = 0.0) -> FloatArray:
    """``G[i, j]``: probability that home scores i and away j more goals (sums to 1)."""
    pair = _pmf_pair(home_mean, away_mean)
    grid = np.outer(pair[0], pair[1])
    if rho and home_mean > 0 and away_mean > 0:
        # Dixon-Coles tau on the low-score cells; keep every cell non-negative, then renormalise.
        lh, la = home_mean, away_mean
        grid[0, 0] *= max(0.0, 1 - lh * la * rho)
        grid[0, 1] *= max(0.0, 1 + lh * rho)
        grid[1, 0] *= max(0.0, 1 + la * rho)
        grid[1, 1] *= max(0.0, 1 - rho)
        grid /= grid.sum()
    return grid


@dataclass(frozen=True)
class ScoreModel:
    """Everything the markets need: remaining-goal grids for the match and the first half."""

    state: MatchState
    home_mean: float
    away_mean: float
    grid: FloatArray
    first_half_grid: FloatArray | None  # None once the first half is over
    model: ModelConfig = field(default=DEFAULT_MODEL)


def score_model(home_xg: float, away_xg: float, state: MatchState, model: ModelConfig = DEFAULT_MODEL) -> ScoreModel:
    share = remaining_share(state, model)
    hm, am = remaining_means(home_xg, away_xg, state, model, share.match)
    grid = goal_grid(hm, am, model.rho * share.match)
    first = None
    if state.phase in (Period.NOT_STARTED, Period.FIRST_HALF):
        h1, a1 = remaining_means(home_xg, away_xg, state, model, share.first_half)
        first = goal_grid(h1, a1, model.rho * share.first_half)
    return ScoreModel(state, hm, am, grid, first, model)


def fit_profile_slope(first_half_share: float, model: ModelConfig = DEFAULT_MODEL) -> float:
    """The ``beta`` whose first-half share of the match's intensity is ``first_half_share``."""
    from scipy.optimize import brentq

    def share(beta: float) -> float:
        m = ModelConfig(
            name="fit",
            profile_slope=beta,
            first_half_stoppage=model.first_half_stoppage,
            second_half_stoppage=model.second_half_stoppage,
        )
        return remaining_share(MatchState(), m).first_half - first_half_share

    return float(brentq(share, -1.99, 1.99, xtol=1e-12))


# --- fitting ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _prematch_masks(n: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Home-win and over-2.5 cells of an n x n score grid."""
    i, j = np.indices((n, n))
    home_wins, over = i > j, (i + j) >= 3
    home_wins.flags.writeable = over.flags.writeable = False  # shared by every call
    return home_wins, over


def _prematch(home_xg: float, away_xg: float, model: ModelConfig) -> tuple[float, float, float, float]:
    g = goal_grid(home_xg, away_xg, model.rho)
    home_wins, over = _prematch_masks(g.shape[0])
    home = float(g[home_wins].sum())
    draw = float(np.trace(g))
    return home, draw, 1.0 - home - draw, float(g[over].sum())


@functools.lru_cache(maxsize=4096)
def fit_expected_goals(
    home: float,
    draw: float,
    away: float,
    over_2_5: float | None = None,
    under_2_5: float | None = None,
    method: str = "shin",
    model: ModelConfig = DEFAULT_MODEL,
) -> tuple[float, float]:
    """Pre-match expected goals from market odds: the model's 1X2 (and over/under 2.5, when both are
    given) probabilities are fitted to the de-margined market by least squares.

    The fit takes ~5 ms, and a provider re-sends its fixtures with the same odds (every update of a
    fixture, every recovery after a disconnection: hundreds at once), so fits are remembered by
    their inputs: the same odds are not fitted twice while the engine prices live matches."""
    p1x2 = remove_margin([home, draw, away], method)
    target = list(p1x2)
    if (over_2_5 is None) != (under_2_5 is None):
        raise ValueError("give both over_2_5 and under_2_5 odds, or neither")
    if over_2_5 is not None and under_2_5 is not None:
        target.append(remove_margin([over_2_5, under_2_5], method)[0])

    def residuals(x: FloatArray) -> FloatArray:
        h, d, a, o = _prematch(math.exp(x[0]), math.exp(x[1]), model)
        out = [h - target[0], d - target[1], a - target[2]]
        if len(target) == 4:
            out.append(o - target[3])
        return np.array(out)

    # Start from a rough guess: 2.7 goals split by the home/away win ratio.
    ratio = max(min(p1x2[0] / max(p1x2[2], 1e-6), 50.0), 0.02)
    start = np.log([2.7 * ratio / (1 + ratio) + 0.1, 2.7 / (1 + ratio) + 0.1])
    # Levenberg-Marquardt (MINPACK) first: the same fit as the bounded solver in half the time;
    # the bounded one when it fails or leaves the bounds (log expected goals in [-5, 2.5])
    fit = least_squares(residuals, start, xtol=1e-12, ftol=1e-12, gtol=1e-12, method="lm")
    if not fit.success or not all(-5.0 <= v <= 2.5 for v in fit.x):
        fit = least_squares(residuals, start, xtol=1e-12, ftol=1e-12, gtol=1e-12, bounds=([-5, -5], [2.5, 2.5]))
    return float(math.exp(fit.x[0])), float(math.exp(fit.x[1]))
