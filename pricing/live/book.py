"""The live book of one match (pure): state in, versioned price changes out.

Rules
- Every change the engine publishes gets the match's next **version** (only ever increasing).
- **Suspend first**: a dangerous event (goal, possible goal, red card, penalty, VAR check, bet stop,
  provider down) first publishes every open market SUSPENDED at a new version, *then* — once the
  new state is known — the repriced markets at a further version.
- Suspensions are lifted by what resolves them: a goal or a red card reprices at once; a possible
  goal by the next safe signal, goal or clock update; a penalty by its goal or miss; VAR by its
  decision; a bet stop by the next provider state; provider down by its ``snapshot_complete``.
  A trader suspension is lifted only by the trader.
- **Provider mode** (``mode == "provider"``): instead of the model's prices, the provider's latest
  odds for each market (its margin removed, or its probabilities as given) with the operator's
  margin; markets the provider does not quote are not offered, markets it suspends are suspended.
  The model still decides which markets are settled by the score (closed).
- Only what changed is published: a market appears in a delta when its status or any offered price
  changed. Decided markets close and stay closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from pricing import ladder
from pricing.football import MatchState, Period, fit_expected_goals
from pricing.margin import MarginError, apply_margin
from pricing.markets import CATALOGUE, ROW_START, market_identity
from pricing.pricer import DEFAULT_MARGIN, DEFAULT_METHOD, PricedBook, price_match


class Status(Enum):
    OPEN = "open"
    SUSPENDED = "suspended"
    CLOSED = "closed"


# Each catalogue market's outcome positions in the flat book (padded), to compare books as arrays.
_OPEN, _SUSPENDED, _CLOSED = 0, 1, 2
_STATUS = {_OPEN: Status.OPEN, _SUSPENDED: Status.SUSPENDED, _CLOSED: Status.CLOSED}
_N_SPECS = len(CATALOGUE)
_WIDTH = max(len(s.outcomes) for s in CATALOGUE)
_POS = np.zeros((_N_SPECS, _WIDTH), dtype=np.int64)
_MASK = np.zeros((_N_SPECS, _WIDTH), dtype=bool)
for _k, _spec in enumerate(CATALOGUE):
    _p = ROW_START[list(_spec.rows)] if _spec.complement else ROW_START[_spec.rows[0]] + np.arange(len(_spec.outcomes))
    _POS[_k, : len(_p)] = _p
    _MASK[_k, : len(_p)] = True
_FIRST_ROW = np.array([s.rows[0] for s in CATALOGUE])
_INDEX = {s.key: k for k, s in enumerate(CATALOGUE)}
_HT = _INDEX["halftime_1x2"]
_NEXT = _INDEX["next_goal"]


_Probs = dict[int, tuple[float, ...]]


class Hold(Enum):
    """Why a match is suspended (several can hold at once)."""

    POSSIBLE_GOAL = "possible_goal"
    PENALTY = "penalty"
    VAR = "var"
    BET_STOP = "bet_stop"
    PROVIDER_DOWN = "provider_down"
    TRADER = "trader"


class MarketQuote(NamedTuple):
    """One market as published (a tuple: built for every changed market of every reprice)."""

    key: str
    market_type: str
    specifiers: tuple[tuple[str, str], ...]
    status: Status
    outcomes: tuple[str, ...]
    odds_cents: tuple[int, ...]  # 0 = not offered
    probabilities: tuple[float, ...]
    reason: str = ""


@dataclass(frozen=True)
class Delta:
    match_id: str
    version: int
    previous_version: int
    markets: tuple[MarketQuote, ...]
    cause: str


@dataclass
class LiveMatch:
    match_id: str
    home: str = ""
    away: str = ""
    home_xg: float = 1.4
    away_xg: float = 1.1
    minute: float = 0.0
    period: Period | None = None  # None: derived from the minute
    home_goals: int = 0
    away_goals: int = 0
    home_reds: int = 0
    away_reds: int = 0
    stoppage: float | None = None
    live: bool = False
    ended: bool = False
    version: int = 0
    margin: float = DEFAULT_MARGIN
    method: str = DEFAULT_METHOD
    holds: set[Hold] = field(default_factory=set)
    trader_markets: set[str] = field(default_factory=set)  # market keys suspended by a trader
    margins_by_type: dict[str, float] = field(default_factory=dict)
    _status: NDArray[np.int64] | None = field(default=None, repr=False)  # per catalogue market
    _cents: NDArray[np.int64] | None = field(default=None, repr=False)
    _next_n: int = 0
    quotes: dict[str, MarketQuote] = field(default_factory=dict)
    last_event_ms: int = 0
    starts_ms: int = 0  # the fixture's scheduled kick-off (0: not given)
    mode: str = "model"  # or "provider"
    sport: int = 0  # livebet.common.v1.Sport
    # provider mode: market key -> (quoted active, outcome -> fair probability)
    provider_markets: dict[str, tuple[bool, dict[str, float]]] = field(default_factory=dict)

    # --- inputs --------------------------------------------------------------------------------
    def set_fixture(
        self, home: str, away: str, odds_1x2: tuple[float, float, float] | None, odds_ou: tuple[float, float] | None
    ) -> None:
        self.home, self.away = home, away
        if odds_1x2 is not None:
            over, under = odds_ou if odds_ou is not None else (None, None)
            try:
                self.home_xg, self.away_xg = fit_expected_goals(*odds_1x2, over, under)
            except MarginError:
                # odds Shin's method cannot de-margin (a book under 100 %: an arbitrage or a
                # provider's mistake): fitted to the odds made fair proportionally instead
                self.home_xg, self.away_xg = fit_expected_goals(*odds_1x2, over, under, method="multiplicative")

    def model_state(self) -> MatchState:
        minute = min(max(self.minute, 0.0), 90.0)
        period = Period.FULL_TIME if self.ended else self.period
        if period is None and self.live and minute <= 0:
            period = Period.FIRST_HALF
        return MatchState(
            minute=minute,
            home_goals=self.home_goals,
            away_goals=self.away_goals,
            home_red_cards=min(self.home_reds, 5),
            away_red_cards=min(self.away_reds, 5),
            period=period,
            stoppage_announced=self.stoppage,
        )

    # --- outputs -------------------------------------------------------------------------------
    def _next(self, markets: list[MarketQuote], cause: str) -> Delta | None:
        if not markets:
            return None
        previous = self.version
        self.version += 1
        for q in markets:
            self.quotes[q.key] = q
        return Delta(self.match_id, self.version, previous, tuple(markets), cause)

    def suspend_all(self, cause: str) -> Delta | None:
        """Every open market SUSPENDED (the first publication after a dangerous event)."""
        if self._status is not None:
            self._status = np.where(self._status == _OPEN, _SUSPENDED, self._status)
        changed = [
            MarketQuote(
                q.key, q.market_type, q.specifiers, Status.SUSPENDED, q.outcomes, q.odds_cents, q.probabilities, cause
            )
            for q in self.quotes.values()
            if q.status is Status.OPEN
        ]
        return self._next(changed, cause)

    def reprice(self, cause: str) -> Delta | None:
        """Every market at the current state: prices, and OPEN unless something holds the match.
        The new book is compared with the last one as arrays; only changed markets become quotes."""
        book: PricedBook = price_match(
            self.home_xg,
            self.away_xg,
            self.model_state(),
            self.margin,
            self.method,
            margins_by_type=self.margins_by_type,
        )
        f = book.fair
        cents = np.where(_MASK, book.odds_cents[_POS], 0)
        provider_probs: _Probs = {}
        provider_off = np.zeros(_N_SPECS, dtype=bool)
        if self.mode == "provider":
            cents, provider_probs, provider_off = self._provider_rows(f.next_goal)
        closed = f.closed[_FIRST_ROW]
        if not f.has_halftime:
            closed[_HT] = True
        if self.ended:
            closed[:] = True
        offered = cents.any(axis=1)
        trader = np.zeros(_N_SPECS, dtype=bool)
        for key in self.trader_markets:
            k = _INDEX.get(key, _NEXT if key == f"next_goal:{f.next_goal}" else -1)
            if k >= 0:
                trader[k] = True
        held = bool(self.holds) or self.ended
        status = np.where(closed, _CLOSED, np.where(~offered | held | trader | provider_off, _SUSPENDED, _OPEN))
        new_next = f.next_goal != self._next_n
        if self._status is None or self._cents is None:
            changed = np.ones(_N_SPECS, dtype=bool)
            keep = np.zeros(_N_SPECS, dtype=bool)
        else:
            keep = self._status == _CLOSED  # decided markets stay closed
            if new_next:
                keep[_NEXT] = False  # a new next-goal market replaces the old one
            changed = ((status != self._status) | (cents != self._cents).any(axis=1)) & ~keep
            if new_next:
                changed[_NEXT] = True
        hold_reason = ",".join(sorted(h.value for h in self.holds)) or "ended"
        out: list[MarketQuote] = []
        offered_list: list[bool] = np.asarray(offered).tolist()
        changed_at = np.flatnonzero(changed)
        # the changed rows as Python values in one conversion each (not one per market)
        cents_rows: list[list[int]] = cents[changed_at].tolist()
        prob_rows: list[list[float]] = np.round(f.p[_POS[changed_at]], 6).tolist()
        status_list: list[int] = status.tolist()
        for j, k in enumerate(changed_at.tolist()):
            spec = CATALOGUE[k]
            key, specifiers = (spec.key, spec.specifiers) if k == _HT else market_identity(spec, f)
            st = status_list[k]
            if st == _CLOSED:
                reason = "decided"
            elif not offered_list[k]:
                reason = "not_offered"
            elif trader[k]:
                reason = "trader"
            elif provider_off[k] and not held:
                reason = "provider"
            elif st == _SUSPENDED:
                reason = hold_reason
            else:
                reason = ""
            n = len(spec.outcomes)
            pr = provider_probs.get(k) or tuple(prob_rows[j][:n])
            prices = tuple(cents_rows[j][:n])
            out.append(MarketQuote(key, spec.market_type, specifiers, _STATUS[st], spec.outcomes, prices, pr, reason))
        if new_next and self._next_n:  # the previous goal's next-goal market is over
            old = self.quotes.get(f"next_goal:{self._next_n}")
            if old is not None and old.status is not Status.CLOSED:
                out.append(
                    MarketQuote(
                        old.key,
                        old.market_type,
                        old.specifiers,
                        Status.CLOSED,
                        old.outcomes,
                        old.odds_cents,
                        old.probabilities,
                        "decided",
                    )
                )
        self._status = np.where(keep, _CLOSED, status)
        self._cents = np.where(keep[:, None], self._cents if self._cents is not None else cents, cents)
        self._next_n = f.next_goal
        return self._next(out, cause)

    def _provider_rows(self, next_goal: int) -> tuple[NDArray[np.int64], _Probs, NDArray[np.bool_]]:
        """Provider mode: each catalogue market's prices from the provider's fair probabilities
        with our margin (zero where the provider has no usable quote), those probabilities, and
        which markets the provider has suspended."""
        cents = np.zeros((_N_SPECS, _WIDTH), dtype=np.int64)
        probs: _Probs = {}
        off = np.zeros(_N_SPECS, dtype=bool)
        for key, (active, fair) in self.provider_markets.items():
            k = _NEXT if key == f"next_goal:{next_goal}" else _INDEX.get(key, -1)
            if k < 0 or CATALOGUE[k].complement:
                continue  # unknown here, or a market whose outcomes overlap (priced by the model only)
            spec = CATALOGUE[k]
            ps = [fair.get(o, 0.0) for o in spec.outcomes]
            margin = self.margins_by_type.get(spec.market_type, self.margin)
            try:
                odds = apply_margin(ps, margin, self.method)
            except MarginError:
                continue  # a decided or degenerate quote: not offered
            cents[k, : len(ps)] = ladder.round_down(np.asarray(odds, dtype=np.float64))
            probs[k] = tuple(round(x, 6) for x in ps)
            off[k] = not active
        return cents, probs, off

    def set_provider_market(self, key: str, active: bool, fair: dict[str, float]) -> None:
        self.provider_markets[key] = (active, fair)

    # --- trader actions ------------------------------------------------------------------------
    def trader_suspend(self, market_key: str = "") -> Delta | None:
        """Suspend the match, or one market (``market_key`` as in ``MarketQuote.key``)."""
        if market_key:
            self.trader_markets.add(market_key)
            return self.reprice("trader")
        self.holds.add(Hold.TRADER)
        return self.suspend_all("trader")

    def trader_resume(self, market_key: str = "") -> Delta | None:
        if market_key:
            self.trader_markets.discard(market_key)
        else:
            self.holds.discard(Hold.TRADER)
        return self.reprice("trader")

    def set_mode(self, mode: str) -> Delta | None:
        if mode not in ("model", "provider"):
            raise ValueError(f"pricing mode must be model or provider, got {mode!r}")
        self.mode = mode
        return self.reprice("pricing_mode")

    def set_margin(self, margin: float, market_type: str = "") -> Delta | None:
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        if market_type:
            self.margins_by_type[market_type] = margin
        else:
            self.margin = margin
        return self.reprice("margin")

    def snapshot(self) -> list[MarketQuote]:
        return list(self.quotes.values())


def offered_inverse_sum(q: MarketQuote) -> float:
    """Booksum of a quote's offered prices (for checks)."""
    return float(sum(100.0 / c for c in q.odds_cents if c))
