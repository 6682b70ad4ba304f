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
- Only what changed is published: a market appears in a delta when its status or any offered price
  changed. Decided markets close and stay closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from pricing.football import MatchState, Period, fit_expected_goals
from pricing.markets import CATALOGUE, market_identity, row_values
from pricing.pricer import DEFAULT_MARGIN, DEFAULT_METHOD, PricedBook, price_match


class Status(Enum):
    OPEN = "open"
    SUSPENDED = "suspended"
    CLOSED = "closed"


class Hold(Enum):
    """Why a match is suspended (several can hold at once)."""

    POSSIBLE_GOAL = "possible_goal"
    PENALTY = "penalty"
    VAR = "var"
    BET_STOP = "bet_stop"
    PROVIDER_DOWN = "provider_down"
    TRADER = "trader"


@dataclass(frozen=True)
class MarketQuote:
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
    quotes: dict[str, MarketQuote] = field(default_factory=dict)
    last_event_ms: int = 0

    # --- inputs --------------------------------------------------------------------------------
    def set_fixture(
        self, home: str, away: str, odds_1x2: tuple[float, float, float] | None, odds_ou: tuple[float, float] | None
    ) -> None:
        self.home, self.away = home, away
        if odds_1x2 is not None:
            over, under = odds_ou if odds_ou is not None else (None, None)
            self.home_xg, self.away_xg = fit_expected_goals(*odds_1x2, over, under)

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
        changed = [
            MarketQuote(
                q.key, q.market_type, q.specifiers, Status.SUSPENDED, q.outcomes, q.odds_cents, q.probabilities, cause
            )
            for q in self.quotes.values()
            if q.status is Status.OPEN
        ]
        return self._next(changed, cause)

    def reprice(self, cause: str) -> Delta | None:
        """Every market at the current state: prices, and OPEN unless something holds the match."""
        book: PricedBook = price_match(
            self.home_xg,
            self.away_xg,
            self.model_state(),
            self.margin,
            self.method,
            margins_by_type=self.margins_by_type,
        )
        held = bool(self.holds) or self.ended  # pre-match markets are open too
        hold_reason = ",".join(sorted(h.value for h in self.holds)) or "ended"
        changed: list[MarketQuote] = []
        seen: set[str] = set()
        for spec in CATALOGUE:
            if spec.market_type == "halftime_1x2" and not book.fair.has_halftime:
                key = spec.key
            else:
                key, _ = market_identity(spec, book.fair)
            seen.add(key)
            closed = bool(book.fair.closed[spec.rows[0]]) or (
                spec.market_type == "halftime_1x2" and not book.fair.has_halftime
            )
            cents = tuple(int(c) for c in row_values(spec, book.odds_cents))
            probs = tuple(round(float(x), 6) for x in row_values(spec, book.fair.p))
            if closed or self.ended:
                status, reason = Status.CLOSED, "decided"
            elif not any(cents):
                status, reason = Status.SUSPENDED, "not_offered"
            elif held or key in self.trader_markets:
                status, reason = Status.SUSPENDED, "trader" if key in self.trader_markets else hold_reason
            else:
                status, reason = Status.OPEN, ""
            _, specifiers = market_identity(spec, book.fair)
            q = MarketQuote(key, spec.market_type, specifiers, status, spec.outcomes, cents, probs, reason)
            old = self.quotes.get(key)
            if old is not None and old.status is Status.CLOSED:
                continue  # decided markets stay closed
            if old is None or old.status != q.status or old.odds_cents != q.odds_cents:
                changed.append(q)
        # the next-goal market of the previous goal number is over once a goal is scored
        for key, old in list(self.quotes.items()):
            if key not in seen and old.status is not Status.CLOSED:
                changed.append(
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
        return self._next(changed, cause)

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
