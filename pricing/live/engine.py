"""The pricing engine's core: normalised feed events in, ordered price deltas out.

It keeps a :class:`~pricing.live.book.LiveMatch` per match and turns each ``FeedEvent`` into the
deltas to publish, in order (a suspension first, then the reprice). No I/O: the service feeds it
from JetStream and publishes what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from livebet.common.v1 import common_pb2
from livebet.feed.v1 import event_pb2 as ev

from pricing.football import Period
from pricing.live.book import Delta, Hold, LiveMatch
from pricing.margin import MarginError, remove_margin
from pricing.pricer import DEFAULT_METHOD

_PERIOD = {
    ev.PERIOD_FIRST_HALF: Period.FIRST_HALF,
    ev.PERIOD_HALFTIME: Period.HALF_TIME,
    ev.PERIOD_SECOND_HALF: Period.SECOND_HALF,
    ev.PERIOD_FULL_TIME: Period.FULL_TIME,
}


def _odds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 1.0 else None


_LINES = {"total", "asian_handicap"}  # specifier values that are numbers: "3" and "3.0" are one line


def market_key(ref: common_pb2.MarketRef) -> str:
    """A market reference as the engine's key: ``total|total=2.5`` → ``total:2.5``."""
    parts = ref.market_key.split("|") if ref.market_key else [ref.market_type]
    values = [p.partition("=")[2] for p in parts[1:]] or [s.value for s in ref.specifiers]
    if parts[0] in _LINES:
        values = [_number(v) for v in values]
    return ":".join([parts[0], *values]) if values else parts[0]


def _number(text: str) -> str:
    try:
        return str(float(text))
    except ValueError:
        return text


def provider_fair(pm: ev.ProviderMarket, method: str = DEFAULT_METHOD) -> dict[str, float] | None:
    """A provider market's fair probabilities: its probabilities when it gives them all, else its
    odds with the margin removed; None when neither is usable."""
    probs = [_probability(o.probability.decimal) for o in pm.outcomes]
    if pm.outcomes and all(p is not None for p in probs):
        total = sum(p for p in probs if p is not None)
        if total > 0:
            return {o.outcome_id: (p or 0.0) / total for o, p in zip(pm.outcomes, probs, strict=True)}
    odds = [_odds(o.odds.decimal) for o in pm.outcomes]
    if len(odds) >= 2 and all(x is not None for x in odds):
        try:
            fair = remove_margin([x for x in odds if x is not None], method)
        except MarginError:
            return None
        return {o.outcome_id: p for o, p in zip(pm.outcomes, fair, strict=True)}
    return None


def _probability(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value <= 1 else None


RETIRE_AFTER_MS = 10 * 60 * 1000  # an ended match heard nothing of for this long is forgotten
#: a match under way (or past its kick-off) that nothing was heard of for this long is abandoned:
#: the feed stopped betting on it long ago, its provider dropped it; it is forgotten too
ABANDON_AFTER_MS = 6 * 3600 * 1000
REMEMBER_RETIRED_MS = 7 * 24 * 3600 * 1000  # ... and its last version for this long


class Engine:
    """``provider_mode``: providers whose matches are priced in provider mode from the start
    (a trader can switch any match either way).

    A match that has ended is forgotten (:meth:`retire`) once nothing was heard of it for a while,
    so an engine that runs for months holds the matches being played, not every match it ever
    priced; so is a match abandoned (under way or past its kick-off, and silent for hours: its
    provider dropped it, and the feed stopped betting on it long before). Events of a forgotten
    match are ignored; a fixture sent again prices it again, from the version it had (kept for
    ``REMEMBER_RETIRED_MS``), so versions never go backwards."""

    def __init__(self, provider_mode: frozenset[str] = frozenset()) -> None:
        self.matches: dict[str, LiveMatch] = {}
        self.provider_of: dict[str, str] = {}
        self.retired: dict[str, tuple[int, int]] = {}  # match id -> (last version, retired at, ms)
        self.processed = 0
        self.provider_mode = provider_mode
        self.deferred: dict[str, str] = {}  # match id -> cause of a reprice left for flush()

    def match(self, match_id: str) -> LiveMatch:
        m = self.matches.get(match_id)
        if m is None:
            m = self.matches[match_id] = LiveMatch(match_id)
            gone = self.retired.pop(match_id, None)
            if gone is not None:
                m.version = gone[0]  # priced again after it was forgotten: carry on from there
            if self.provider_of.get(match_id) in self.provider_mode:
                m.mode = "provider"
        return m

    @staticmethod
    def is_abandoned(m: LiveMatch, now_ms: int, abandoned_ms: int) -> bool:
        """Not ended, under way at some point or due to have kicked off ``abandoned_ms`` ago, and
        no event for ``abandoned_ms``: its provider dropped it. A fixture whose kick-off is to come
        is never abandoned, however long before it was sent."""
        if m.ended or now_ms - m.last_event_ms < abandoned_ms:
            return False
        return m.live or m.minute > 0 or bool(m.starts_ms and now_ms - m.starts_ms >= abandoned_ms)

    def abandon(self, now_ms: int, abandoned_ms: int = ABANDON_AFTER_MS) -> list[Delta]:
        """Every market still open of each abandoned match (:meth:`is_abandoned`) suspended: its
        last publication before :meth:`retire` forgets it, so that its snapshot, kept a week,
        offers nothing whatever the feed did about it."""
        out = []
        for m in self.matches.values():
            if self.is_abandoned(m, now_ms, abandoned_ms):
                d = m.suspend_all("abandoned")
                if d is not None:
                    out.append(d)
        return out

    def retire(
        self, now_ms: int, after_ms: int = RETIRE_AFTER_MS, abandoned_ms: int | None = ABANDON_AFTER_MS
    ) -> list[str]:
        """Forget the matches that ended and had no event for ``after_ms``, and (unless
        ``abandoned_ms`` is None) those abandoned (:meth:`is_abandoned`; :meth:`abandon` first
        suspends what they still offer); returns their ids. Also forgets the versions of matches
        retired more than ``REMEMBER_RETIRED_MS`` ago."""

        def done(m: LiveMatch) -> bool:
            if m.ended:
                return now_ms - m.last_event_ms >= after_ms
            return abandoned_ms is not None and self.is_abandoned(m, now_ms, abandoned_ms)

        gone = [k for k, m in self.matches.items() if done(m)]
        for match_id in gone:
            m = self.matches.pop(match_id)
            self.provider_of.pop(match_id, None)
            self.retired[match_id] = (m.version, now_ms)
        for match_id in [k for k, (_, at) in self.retired.items() if now_ms - at >= REMEMBER_RETIRED_MS]:
            del self.retired[match_id]
        return gone

    def apply(self, e: ev.FeedEvent, defer: bool = False) -> list[Delta]:
        """The deltas ``e`` causes, in publication order.

        ``defer``: a reprice that only moves prices (a clock update within a period, provider odds
        with every quoted market active) or prices a fixture (a new round's fixtures come in
        bulk: a goal in the same batch must not wait behind them) is left for :meth:`flush`,
        which reprices each such match once. A batch of events that holds several updates of one
        match then costs one reprice, not one each: the engine catches up when it falls behind
        instead of pricing every state it was late for. Suspensions are never deferred; any
        reprice of the match meanwhile does the deferred one's work."""
        self.processed += 1
        kind = e.WhichOneof("payload")
        if kind == "provider_down":
            return self._for_provider(e.provider, lambda m: _hold(m, Hold.PROVIDER_DOWN, "provider_down"))
        if kind == "snapshot_complete":
            return self._for_provider(e.provider, lambda m: self._release(m, Hold.PROVIDER_DOWN, "provider_up"))
        if not e.match_id or kind is None:
            return []
        if e.match_id not in self.matches and not (
            kind == "fixture_change" or (kind == "provider_odds" and e.provider in self.provider_mode)
        ):
            return []  # the model needs the fixture's pre-match odds first (or it was retired)
        self.provider_of[e.match_id] = e.provider
        m = self.match(e.match_id)
        out: list[Delta] = []

        def emit(d: Delta | None) -> None:
            if d is not None:
                out.append(d)

        if kind == "fixture_change":
            f = e.fixture_change.fixture
            o = f.pre_match_odds
            h, d, a = _odds(o.home.decimal), _odds(o.draw.decimal), _odds(o.away.decimal)
            over, under = _odds(o.over_2_5.decimal), _odds(o.under_2_5.decimal)
            one = (h, d, a) if h and d and a else None
            ou = (over, under) if over and under else None
            m.set_fixture(f.home.name, f.away.name, one, ou)
            m.sport = f.sport
            m.starts_ms = f.start_time.ToMilliseconds() if f.HasField("start_time") else 0
            if defer:  # pricing a new match's book waits for the batch's events of matches under way
                self.deferred.setdefault(m.match_id, "fixture")
            else:
                emit(self._reprice(m, "fixture"))
        elif kind == "match_state":
            s = e.match_state.state
            score_changed = (s.score.home, s.score.away) != (m.home_goals, m.away_goals)
            reds_up = s.home_cards.red + s.away_cards.red > m.home_reds + m.away_reds
            phase = (m.live, m.ended, m.period)
            if (score_changed or reds_up) and m.quotes:
                emit(m.suspend_all("goal" if score_changed else "red_card"))
            m.home_goals, m.away_goals = s.score.home, s.score.away
            m.home_reds, m.away_reds = s.home_cards.red, s.away_cards.red
            m.minute = float(s.clock.minute)
            m.period = _PERIOD.get(s.period)
            m.stoppage = float(s.clock.stoppage_announced) if s.clock.stoppage_announced else None
            m.live = s.status == ev.MATCH_STATUS_LIVE
            m.ended = s.status in (ev.MATCH_STATUS_ENDED, ev.MATCH_STATUS_CLOSED) or s.period == ev.PERIOD_FULL_TIME
            m.holds.discard(Hold.POSSIBLE_GOAL)  # the next state update after a possible goal resolves it
            m.holds.discard(Hold.BET_STOP)
            if defer and not (score_changed or reds_up) and phase == (m.live, m.ended, m.period):
                self.deferred.setdefault(m.match_id, "clock")  # the clock only: prices move
            else:  # kick-off, half or full time close or open markets: not left for later
                emit(self._reprice(m, "goal" if score_changed else "clock"))
        elif kind == "goal":
            emit(m.suspend_all("goal"))
            m.home_goals, m.away_goals = e.goal.score.home, e.goal.score.away
            m.holds.difference_update({Hold.POSSIBLE_GOAL, Hold.PENALTY})
            emit(self._reprice(m, "goal"))
        elif kind == "card" and e.card.card_type in (ev.CARD_TYPE_RED, ev.CARD_TYPE_SECOND_YELLOW):
            emit(m.suspend_all("red_card"))
            if e.card.side == 1:
                m.home_reds += 1
            elif e.card.side == 2:
                m.away_reds += 1
            emit(self._reprice(m, "red_card"))
        elif kind == "penalty":
            if e.penalty.phase == ev.PENALTY_PHASE_AWARDED:
                emit(_hold(m, Hold.PENALTY, "penalty"))
            elif e.penalty.phase == ev.PENALTY_PHASE_MISSED:
                emit(self._release(m, Hold.PENALTY, "penalty_missed"))
        elif kind == "var_check":
            if e.var_check.phase == ev.VAR_PHASE_STARTED:
                emit(_hold(m, Hold.VAR, "var"))
            else:
                emit(self._release(m, Hold.VAR, "var_decision"))
        elif kind == "danger":
            if e.danger.level == ev.DANGER_LEVEL_POSSIBLE_GOAL:
                emit(_hold(m, Hold.POSSIBLE_GOAL, "possible_goal"))
            elif e.danger.level == ev.DANGER_LEVEL_SAFE and Hold.POSSIBLE_GOAL in m.holds:
                emit(self._release(m, Hold.POSSIBLE_GOAL, "safe"))
        elif kind == "bet_stop":
            emit(_hold(m, Hold.BET_STOP, "bet_stop"))
        elif kind == "provider_odds":
            calm = True  # every quoted market active: prices move, nothing is suspended
            for pm in e.provider_odds.markets:
                key = market_key(pm.market)
                if pm.status in (ev.PROVIDER_MARKET_STATUS_ACTIVE, ev.PROVIDER_MARKET_STATUS_SUSPENDED):
                    fair = provider_fair(pm, m.method)
                    if fair is not None:
                        active = pm.status == ev.PROVIDER_MARKET_STATUS_ACTIVE and all(o.active for o in pm.outcomes)
                        m.set_provider_market(key, active, fair)
                        calm = calm and active
                        continue
                m.provider_markets.pop(key, None)  # deactivated, settled, cancelled or unusable
                calm = False
            if Hold.BET_STOP in m.holds:
                emit(self._release(m, Hold.BET_STOP, "provider_odds"))
            elif m.mode == "provider" and defer and calm:
                self.deferred.setdefault(m.match_id, "provider_odds")
            elif m.mode == "provider":
                emit(self._reprice(m, "provider_odds"))
        if e.HasField("received_at"):
            m.last_event_ms = e.received_at.ToMilliseconds()
        return out

    def _reprice(self, m: LiveMatch, cause: str) -> Delta | None:
        self.deferred.pop(m.match_id, None)  # this reprice does a deferred one's work too
        return m.reprice(cause)

    def _release(self, m: LiveMatch, hold: Hold, cause: str) -> Delta | None:
        m.holds.discard(hold)
        return self._reprice(m, cause)

    def flush(self, failed: Callable[[str, Exception], None] | None = None) -> list[Delta]:
        """The reprices :meth:`apply` deferred: one per match, in the order first deferred.
        ``failed``: told of a match whose reprice raised, which is then skipped (None: raise)."""
        return list(self.flush_each(failed))

    def flush_each(self, failed: Callable[[str, Exception], None] | None = None) -> Iterator[Delta]:
        """:meth:`flush` one match at a time: each delta as soon as its match is repriced, so a
        caller can publish it before the next match's reprice instead of after all of them. The
        deferred set is taken at the first step; reprices deferred meanwhile wait for the next flush."""
        deferred, self.deferred = self.deferred, {}
        for match_id, cause in deferred.items():
            m = self.matches.get(match_id)
            try:
                d = m.reprice(cause) if m is not None else None
            except Exception as err:
                if failed is None:
                    raise
                failed(match_id, err)
                continue
            if d is not None:
                yield d

    def _for_provider(self, provider: str, action: object) -> list[Delta]:
        out: list[Delta] = []
        for match_id, p in self.provider_of.items():
            if p == provider and match_id in self.matches:
                d = action(self.matches[match_id])  # type: ignore[operator]
                if d is not None:
                    out.append(d)
        return out

    def apply_all(self, events: Iterable[ev.FeedEvent]) -> list[Delta]:
        return [d for e in events for d in self.apply(e)]


def _hold(m: LiveMatch, hold: Hold, cause: str) -> Delta | None:
    m.holds.add(hold)
    return m.suspend_all(cause)
