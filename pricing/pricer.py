"""A whole match priced in one pass: model → every market's fair probabilities → margin → odds
rounded down to the ladder. This is what the pricing engine runs on every feed event.

Per open market: outcomes below ``MIN_PROBABILITY`` are inactive (not offered), and a market with
fewer than two active outcomes is not offered either; the margin is applied over the active
outcomes (double chance: each outcome against its complement) so that their inverse odds sum to
``1 + margin``; an outcome that would go below 1.01 is held at 1.01 and its excess inverse
probability moves to the others; rounding down to the ladder can then only raise the book:
**the rounded book is never below the target margin** (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pricing import ladder
from pricing.fast_margin import METHOD_CODES, price_rows
from pricing.football import DEFAULT_MODEL, MatchState, ModelConfig, score_model
from pricing.margin import METHODS, MarginError
from pricing.markets import (
    CATALOGUE,
    R_HT,
    ROW_SIZES,
    ROW_START,
    ROWS,
    FairBook,
    fair_book,
    market_identity,
    row_values,
)

MIN_PROBABILITY = 1e-4
DEFAULT_MARGIN = 0.05
DEFAULT_METHOD = "shin"


@dataclass(frozen=True)
class PricedMarket:
    key: str
    market_type: str
    specifiers: tuple[tuple[str, str], ...]
    outcomes: tuple[str, ...]
    probabilities: tuple[float, ...]  # fair
    odds_cents: tuple[int, ...]  # 0 where the outcome is not offered
    closed: bool  # decided: not priced

    @property
    def offered(self) -> bool:
        return not self.closed and any(self.odds_cents)

    def odds_text(self) -> dict[str, str]:
        return {o: ladder.to_text(c) for o, c in zip(self.outcomes, self.odds_cents, strict=True) if c}


@dataclass
class PricedBook:
    """A priced match as flat arrays in catalogue layout (what the engine diffs and publishes)."""

    fair: FairBook
    odds_cents: NDArray[np.int64]  # (SIZE,), 0 = not offered

    def markets(self) -> list[PricedMarket]:
        out = []
        for spec in CATALOGUE:
            if spec.market_type == "halftime_1x2" and not self.fair.has_halftime:
                continue
            key, specifiers = market_identity(spec, self.fair)
            probs = tuple(float(x) for x in row_values(spec, self.fair.p))
            cents = tuple(int(x) for x in row_values(spec, self.odds_cents))
            out.append(
                PricedMarket(
                    key, spec.market_type, specifiers, spec.outcomes, probs, cents, bool(self.fair.closed[spec.rows[0]])
                )
            )
        return out


_ROW_TYPE = np.array([spec.market_type for spec in CATALOGUE for _ in spec.rows])


def row_booksums(margin: float, by_type: Mapping[str, float] | None = None) -> NDArray[np.float64]:
    """Each pricing row's target booksum: ``1 + margin``, or the margin of its market type."""
    for m in [margin, *(by_type or {}).values()]:
        if not 0 <= m < 1:
            raise MarginError(f"margin must be in [0, 1), got {m}")
    out = np.full(ROWS, 1.0 + margin)
    for market_type, m in (by_type or {}).items():
        out[market_type == _ROW_TYPE] = 1.0 + m
    return out


def price_book(
    book: FairBook,
    margin: float = DEFAULT_MARGIN,
    method: str = DEFAULT_METHOD,
    max_odds_cents: int = ladder.MAX_ODDS_CENTS,
    margins_by_type: Mapping[str, float] | None = None,
) -> PricedBook:
    """Odds for every open market of ``book`` (flat, in catalogue layout); ``margins_by_type``
    overrides the margin of some market types (``{"correct_score": 0.15}``)."""
    if method not in METHODS:
        raise MarginError(f"unknown margin method {method!r}; use one of {', '.join(METHODS)}")
    booksums = row_booksums(margin, margins_by_type)
    live = ~book.closed
    if not book.has_halftime:
        live[R_HT] = False
    odds_cents = np.zeros(len(book.p), dtype=np.int64)
    price_rows(
        METHOD_CODES[method],
        book.p,
        ROW_START,
        ROW_SIZES,
        live,
        booksums,
        MIN_PROBABILITY,
        ladder.LADDER,
        max_odds_cents,
        odds_cents,
    )
    return PricedBook(book, odds_cents)


def price_match(
    home_xg: float,
    away_xg: float,
    state: MatchState,
    margin: float = DEFAULT_MARGIN,
    method: str = DEFAULT_METHOD,
    model: ModelConfig = DEFAULT_MODEL,
    max_odds_cents: int = ladder.MAX_ODDS_CENTS,
    margins_by_type: Mapping[str, float] | None = None,
) -> PricedBook:
    """Every market of a match at ``state``, priced with ``margin`` by ``method``."""
    book = fair_book(score_model(home_xg, away_xg, state, model))
    return price_book(book, margin, method, max_odds_cents, margins_by_type)


__all__ = ["ROWS", "PricedBook", "PricedMarket", "price_book", "price_match"]
