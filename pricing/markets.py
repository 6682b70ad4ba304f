"""Every market of a match from one score model: fair probabilities, and whether it is decided.

Keys (also the CLI's): ``1x2``, ``double_chance``, ``draw_no_bet``, ``total:<line>`` (0.5-6.5 in
quarter steps), ``asian_handicap:<home hcp>`` (-3 ... +3 in quarter steps, whole match),
``btts``, ``correct_score`` (0-0 ... 6-6 and ``other``), ``next_goal:<n>`` (home/none/away for the
n-th goal), ``team_total:<home|away>:<line>`` (0.5-3.5), ``exact_goals`` (0-6, ``7+``),
``odd_even`` and ``halftime_1x2`` (first half only).

Probabilities of a market's outcomes sum to 1, except ``double_chance`` (each outcome is the
complement of one 1X2 outcome: they sum to 2). For lines with a push (whole and quarter lines,
draw no bet) the probability is *push-adjusted*: ``P(win) / (P(win) + P(lose))`` counting half
stakes for quarter lines, i.e. the inverse of the fair odds at which the bet has zero expectation.

A market whose result can no longer change is *closed* and is not priced; at full time every
market is closed at its result (probabilities 0 and 1).

For speed the whole book is computed as arrays with a fixed layout (:class:`FairBook`): one row of
width 8 per *pricing row* (double chance gives three two-way rows: an outcome and its complement)
plus the 50 correct-score outcomes; :func:`match_markets` turns it into one object per market.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pricing.football import MAX_GOALS, ScoreModel
from pricing.lines import format_line

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

TOTAL_LINES = tuple(Decimal("0.5") + Decimal("0.25") * k for k in range(25))  # 0.5 .. 6.5
HANDICAP_LINES = tuple(Decimal("-3") + Decimal("0.25") * k for k in range(25))  # -3 .. +3
TEAM_TOTAL_LINES = tuple(Decimal("0.5") + k for k in range(4))  # 0.5 .. 3.5
CORRECT_SCORES = (*(f"{h}-{a}" for h in range(7) for a in range(7)), "other")
EXACT_GOALS = ("0", "1", "2", "3", "4", "5", "6", "7+")
DECIDED = 1 - 1e-12


@dataclass(frozen=True)
class MarketSpec:
    """Static description of one market of the catalogue."""

    key: str  # for next_goal, the key of goal n is f"next_goal:{n}"
    market_type: str
    specifiers: tuple[tuple[str, str], ...]
    outcomes: tuple[str, ...]
    rows: tuple[int, ...]  # pricing rows: one, or three for double chance (outcome vs complement)
    complement: bool = False


def _catalogue() -> tuple[MarketSpec, ...]:
    specs: list[MarketSpec] = []
    row = 0

    def add(
        key: str,
        mtype: str,
        spec: tuple[tuple[str, str], ...],
        outcomes: tuple[str, ...],
        n_rows: int = 1,
        complement: bool = False,
    ) -> None:
        nonlocal row
        specs.append(MarketSpec(key, mtype, spec, outcomes, tuple(range(row, row + n_rows)), complement))
        row += n_rows

    add("1x2", "1x2", (), ("home", "draw", "away"))
    add("double_chance", "double_chance", (), ("1x", "12", "x2"), 3, True)
    add("draw_no_bet", "draw_no_bet", (), ("home", "away"))
    # the line families are consecutive rows: one vectorised pass fills them all
    for line in TOTAL_LINES:
        t = format_line(line)
        add(f"total:{t}", "total", (("total", t),), ("over", "under"))
    for line in HANDICAP_LINES:
        t = format_line(line)
        add(f"asian_handicap:{t}", "asian_handicap", (("hcp", t),), ("home", "away"))
    for side in ("home", "away"):
        for line in TEAM_TOTAL_LINES:
            t = format_line(line)
            add(f"team_total:{side}:{t}", "team_total", (("team", side), ("total", t)), ("over", "under"))
    add("btts", "btts", (), ("yes", "no"))
    add("next_goal", "next_goal", (), ("home", "none", "away"))
    add("exact_goals", "exact_goals", (), EXACT_GOALS)
    add("odd_even", "odd_even", (), ("odd", "even"))
    add("halftime_1x2", "halftime_1x2", (), ("home", "draw", "away"))
    add("correct_score", "correct_score", (), CORRECT_SCORES)
    return tuple(specs)


CATALOGUE = _catalogue()
_BY_KEY = {s.key: s for s in CATALOGUE}
#: outcomes per pricing row, and each row's first position in the flat outcome vector
ROW_SIZES = np.array([2 if s.complement else len(s.outcomes) for s in CATALOGUE for _ in s.rows], dtype=np.int64)
ROWS = len(ROW_SIZES)
ROW_START = np.concatenate(([0], np.cumsum(ROW_SIZES)[:-1])).astype(np.int64)
SIZE = int(ROW_SIZES.sum())
ROW_OF = np.repeat(np.arange(ROWS), ROW_SIZES)  # row of each flat position


def _at(key: str) -> tuple[int, int]:
    r = _BY_KEY[key].rows[0]
    return r, int(ROW_START[r])


R_1X2, O_1X2 = _at("1x2")
R_DC, O_DC = _at("double_chance")
R_DNB, O_DNB = _at("draw_no_bet")
R_LINES, O_LINES = _at("total:0.5")
N_LINES = len(TOTAL_LINES) + len(HANDICAP_LINES) + 2 * len(TEAM_TOTAL_LINES)
R_BTTS, O_BTTS = _at("btts")
R_NEXT, O_NEXT = _at("next_goal")
R_EXACT, O_EXACT = _at("exact_goals")
R_ODD, O_ODD = _at("odd_even")
R_HT, O_HT = _at("halftime_1x2")
R_CS, O_CS = _at("correct_score")

# Index helpers over the (N+1)x(N+1) remaining-goal grid.
_N = MAX_GOALS + 1
_I, _J = np.indices((_N, _N))
_DIFF_IDX = (_I - _J + MAX_GOALS).ravel()
_TOT_IDX = (_I + _J).ravel()
_SPAN = 2 * MAX_GOALS + 1  # values a remaining total or difference can take
_PAD = 48  # cdf padding on both sides: indices never need clipping for sane scores
_W = _SPAN + 1 + 2 * _PAD


def _line_indices() -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """For the N_LINES lines (totals, handicaps, home and away team totals, in row order): the
    cdf segment each reads (0 total, 1 difference, 2 home goals, 3 away goals) and, per sub-line,
    the constant part of the flat cdf index for P(value > sub) and P(value < sub)."""
    fams = [(TOTAL_LINES, 1, 0), (HANDICAP_LINES, -1, 1), (TEAM_TOTAL_LINES, 1, 2), (TEAM_TOTAL_LINES, 1, 3)]
    seg, gt, lt = [], [], []
    for lines, sign, s in fams:
        for line in lines:
            v = float(line) * sign  # home covers handicap h when diff > -h
            subs = (v - 0.25, v + 0.25) if abs(line * 4) % 2 == 1 else (v, v)
            seg.append(s)
            gt.append([int(np.floor(x)) + 1 + _PAD + 1 + s * _W for x in subs])
            lt.append([int(np.ceil(x)) + _PAD + 1 + s * _W for x in subs])
    segs = np.array(seg, dtype=np.int64)
    return segs, np.array(gt, dtype=np.int64).T, np.array(lt, dtype=np.int64).T, segs * _W


_SEG, _GT, _LT, _SEG_LO = _line_indices()


@dataclass
class FairBook:
    """Fair probabilities of the whole catalogue for one match state, as one flat vector."""

    p: FloatArray  # (SIZE,) every outcome of every pricing row
    closed: BoolArray  # (ROWS,)
    next_goal: int  # n of the next-goal market
    has_halftime: bool


def fair_book(sm: ScoreModel) -> FairBook:
    g = sm.grid
    flat = g.ravel()
    h0, a0 = sm.state.score
    d0, t0 = h0 - a0, h0 + a0
    p = np.zeros(SIZE)
    closed = np.zeros(ROWS, dtype=bool)

    # Distributions of the remaining total, difference, home and away goals, and their cdfs:
    # cdf[s, _PAD + 1 + k] = P(value_s < base_s + k), with base = t0, d0 - N, h0, a0.
    dist = np.zeros((4, _SPAN))
    dist[0] = np.bincount(_TOT_IDX, weights=flat, minlength=_SPAN)
    dist[1] = np.bincount(_DIFF_IDX, weights=flat, minlength=_SPAN)
    dist[2, :_N] = g.sum(axis=1)
    dist[3, :_N] = g.sum(axis=0)
    cdf = np.zeros((4, _W))
    cdf[:, _PAD + 2 : _PAD + 2 + _SPAN] = np.cumsum(dist, axis=1)
    cdf[:, _PAD + 2 + _SPAN :] = cdf[:, _PAD + 1 + _SPAN : _PAD + 2 + _SPAN]
    tot, diff = dist[0], dist[1]

    # every total / handicap / team-total line in one pass
    base = np.array([t0, d0 - MAX_GOALS, h0, a0], dtype=np.int64)[_SEG]
    cflat = cdf.ravel()
    lo, hi = _SEG_LO, _SEG_LO + _W - 1
    win = 2.0 - np.take(cflat, np.clip(_GT - base, lo, hi)).sum(axis=0)
    lose = np.take(cflat, np.clip(_LT - base, lo, hi)).sum(axis=0)
    denom = win + lose
    live = denom > 1e-12
    over = win / np.maximum(denom, 1e-300)
    over[~live] = 0.5
    lines = p[O_LINES : O_LINES + 2 * N_LINES].reshape(N_LINES, 2)
    lines[:, 0] = over
    lines[:, 1] = 1.0 - over
    closed[R_LINES : R_LINES + N_LINES] = ~live | (np.abs(over - 0.5) >= DECIDED - 0.5)

    # 1X2, double chance, draw no bet: final difference = d0 + (index - N)
    k0 = MAX_GOALS - d0  # index of a final draw
    lose1 = float(cdf[1, _PAD + 1 + min(max(k0, 0), _SPAN)])
    draw = float(diff[k0]) if 0 <= k0 < _SPAN else 0.0
    win1 = max(0.0, 1.0 - lose1 - draw)
    p[O_1X2 : O_1X2 + 3] = (win1, draw, lose1)
    decided = max(win1, draw, lose1) >= DECIDED
    closed[R_1X2] = decided
    for i, v in enumerate((win1 + draw, win1 + lose1, draw + lose1)):
        p[O_DC + 2 * i : O_DC + 2 * i + 2] = (v, 1.0 - v)
        closed[R_DC + i] = decided
    den = win1 + lose1
    if den > 1e-12:
        p[O_DNB : O_DNB + 2] = (win1 / den, lose1 / den)
        closed[R_DNB] = max(win1, lose1) / den >= DECIDED
    else:
        p[O_DNB : O_DNB + 2] = (0.5, 0.5)
        closed[R_DNB] = True

    both = float(g[max(0, 1 - h0) :, max(0, 1 - a0) :].sum())
    p[O_BTTS : O_BTTS + 2] = (both, 1.0 - both)
    closed[R_BTTS] = max(both, 1.0 - both) >= DECIDED

    none = float(g[0, 0])
    lam = sm.home_mean + sm.away_mean
    share = sm.home_mean / lam if lam > 0 else 0.5
    p[O_NEXT : O_NEXT + 3] = ((1 - none) * share, none, (1 - none) * (1 - share))
    closed[R_NEXT] = none >= DECIDED

    exact = p[O_EXACT : O_EXACT + 8]
    upto = max(0, 7 - t0)  # remaining totals 0..upto-1 land on exact 0..6
    if upto:
        exact[t0:7] = tot[:upto]
    exact[7] = max(0.0, 1.0 - exact[:7].sum())
    closed[R_EXACT] = exact.max() >= DECIDED

    odd = float(tot[(1 - t0 % 2) :: 2].sum())
    p[O_ODD : O_ODD + 2] = (odd, 1.0 - odd)
    closed[R_ODD] = max(odd, 1.0 - odd) >= DECIDED

    has_ht = sm.first_half_grid is not None
    if sm.first_half_grid is not None:
        fdiff = np.bincount(_DIFF_IDX, weights=sm.first_half_grid.ravel(), minlength=_SPAN)
        hl = float(fdiff[: max(0, min(k0, _SPAN))].sum())
        hd = float(fdiff[k0]) if 0 <= k0 < _SPAN else 0.0
        hw = max(0.0, 1.0 - hl - hd)
        p[O_HT : O_HT + 3] = (hw, hd, hl)
        closed[R_HT] = max(hw, hd, hl) >= DECIDED
    else:
        closed[R_HT] = True

    cs = p[O_CS : O_CS + 50]
    if h0 < 7 and a0 < 7:
        cs[:49].reshape(7, 7)[h0:, a0:] = g[: 7 - h0, : 7 - a0]
    cs[49] = max(0.0, 1.0 - cs[:49].sum())
    closed[R_CS] = cs.max() >= DECIDED
    return FairBook(p, closed, t0 + 1, has_ht)


@dataclass(frozen=True)
class MarketProbabilities:
    key: str
    market_type: str
    specifiers: tuple[tuple[str, str], ...]
    outcomes: tuple[str, ...]
    probabilities: FloatArray
    closed: bool
    complement: bool = False

    def as_dict(self) -> dict[str, float]:
        return {o: float(p) for o, p in zip(self.outcomes, self.probabilities, strict=True)}


def market_identity(spec: MarketSpec, book: FairBook) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Key and specifiers of a catalogue market in this book (next_goal carries its goal number)."""
    if spec.market_type == "next_goal":
        return f"next_goal:{book.next_goal}", (("goalnr", str(book.next_goal)),)
    return spec.key, spec.specifiers


def row_values(spec: MarketSpec, values: NDArray[Any]) -> NDArray[Any]:
    """A market's per-outcome values out of a flat vector (double chance: first of each row)."""
    if spec.complement:
        return values[ROW_START[list(spec.rows)]]
    start = ROW_START[spec.rows[0]]
    return values[start : start + len(spec.outcomes)]


def match_markets(sm: ScoreModel, book: FairBook | None = None) -> list[MarketProbabilities]:
    """Every market of the match (``halftime_1x2`` only until half time), in catalogue order."""
    b = fair_book(sm) if book is None else book
    out = []
    for spec in CATALOGUE:
        if spec.market_type == "halftime_1x2" and not b.has_halftime:
            continue
        key, specifiers = market_identity(spec, b)
        out.append(
            MarketProbabilities(
                key,
                spec.market_type,
                specifiers,
                spec.outcomes,
                row_values(spec, b.p).copy(),
                bool(b.closed[spec.rows[0]]),
                spec.complement,
            )
        )
    return out


def fair_probabilities(sm: ScoreModel) -> dict[str, dict[str, float]]:
    """``{market key: {outcome: probability}}`` for every market (closed ones at their result)."""
    return {m.key: m.as_dict() for m in match_markets(sm)}
