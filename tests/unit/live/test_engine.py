"""The engine core without I/O: suspend first, versions, holds, deltas that add up to the book."""

from livebet.feed.v1 import event_pb2 as ev

from pricing.live.book import Delta, Hold, Status
from pricing.live.engine import Engine
from tests.helpers import simulated_events


def _replay(match_count: int = 2, seed: int = 4) -> tuple[Engine, list]:  # type: ignore[type-arg]
    engine = Engine()
    deltas = engine.apply_all(simulated_events(match_count, seed))
    return engine, deltas


def _applied(deltas: list[Delta], match_id: str) -> tuple[int, dict[str, tuple]]:  # type: ignore[type-arg]
    """A client's book of ``match_id`` from ``deltas`` applied in order, and the last version;
    checks that every version comes, in order."""
    book: dict[str, tuple] = {}  # type: ignore[type-arg]
    last = 0
    for d in (d for d in deltas if d.match_id == match_id):
        assert d.previous_version == last and d.version == last + 1  # every version, in order
        last = d.version
        book.update({q.key: (q.status, q.odds_cents) for q in d.markets})
    return last, book


def test_deltas_applied_in_order_give_exactly_the_engines_book() -> None:
    engine, deltas = _replay()
    for match_id, m in engine.matches.items():
        last, book = _applied(deltas, match_id)
        assert last == m.version
        assert book == {q.key: (q.status, q.odds_cents) for q in m.quotes.values()}


def _event(kind: str, **fields: object) -> ev.FeedEvent:
    e = ev.FeedEvent(event_id=f"{kind}:{len(fields)}", provider="p", match_id="m")
    getattr(e, kind).SetInParent()
    for path, value in fields.items():
        target = e
        *parents, leaf = path.split("__")
        for part in parents:
            target = getattr(target, part)
        setattr(target, leaf, value)
    return e


def test_a_goal_suspends_every_open_market_before_the_reprice() -> None:
    engine = Engine()
    engine.apply(_event("fixture_change", fixture_change__fixture__match_id="m"))
    engine.apply(
        _event("match_state", match_state__state__status=ev.MATCH_STATUS_LIVE, match_state__state__clock__minute=30)
    )
    book = engine.matches["m"]
    open_before = sum(q.status is Status.OPEN for q in book.quotes.values())
    home_before = book.quotes["1x2"].odds_cents[0]
    first, second = engine.apply(_event("goal", goal__side=1, goal__score__home=1))
    assert {q.status for q in first.markets} == {Status.SUSPENDED} and len(first.markets) == open_before
    assert (first.cause, second.cause, second.version) == ("goal", "goal", first.version + 1)
    assert book.quotes["1x2"].status is Status.OPEN and book.quotes["1x2"].odds_cents[0] < home_before
    assert book.quotes["total:0.5"].status is Status.CLOSED


def test_at_full_time_every_market_is_closed() -> None:
    engine, _ = _replay()
    for m in engine.matches.values():
        assert m.ended
        assert all(q.status is Status.CLOSED for q in m.quotes.values())


def test_holds_keep_markets_suspended_until_resolved() -> None:
    engine = Engine()
    fixture = ev.FeedEvent(event_id="f", provider="p", match_id="m")
    fixture.fixture_change.fixture.match_id = "m"
    engine.apply(fixture)
    pen = ev.FeedEvent(event_id="pen", provider="p", match_id="m")
    pen.penalty.phase = ev.PENALTY_PHASE_AWARDED
    (suspension,) = engine.apply(pen)
    assert {q.status for q in suspension.markets} == {Status.SUSPENDED}
    m = engine.matches["m"]
    assert Hold.PENALTY in m.holds
    assert not any(q.status is Status.OPEN for q in m.quotes.values())
    missed = ev.FeedEvent(event_id="miss", provider="p", match_id="m")
    missed.penalty.phase = ev.PENALTY_PHASE_MISSED
    engine.apply(missed)
    assert any(q.status is Status.OPEN for q in m.quotes.values())


def test_a_bet_stop_suspends_every_market_until_the_next_state_update() -> None:
    """The feed's bet_stop for a silent match (or a provider's): every open market suspended at
    once; a goal meanwhile reprices but keeps them suspended; the next state update reopens them."""
    engine = Engine()
    engine.apply(_event("fixture_change", fixture_change__fixture__match_id="m"))
    live = {"match_state__state__status": ev.MATCH_STATUS_LIVE, "match_state__state__clock__minute": 30}
    engine.apply(_event("match_state", **live))
    m = engine.matches["m"]
    (stop,) = engine.apply(_event("bet_stop", bet_stop__reason="no event for this match for more than 30s"))
    assert stop.cause == "bet_stop" and {q.status for q in stop.markets} == {Status.SUSPENDED}
    assert Hold.BET_STOP in m.holds and not any(q.status is Status.OPEN for q in m.quotes.values())
    engine.apply(_event("goal", goal__side=1, goal__score__home=1))
    assert not any(q.status is Status.OPEN for q in m.quotes.values())
    later = {**live, "match_state__state__score__home": 1, "match_state__state__clock__minute": 33}
    (back,) = engine.apply(_event("match_state", **later))
    assert Hold.BET_STOP not in m.holds and m.quotes["1x2"].status is Status.OPEN
    assert back.version > stop.version


def test_lease_plan_takes_a_fair_part_and_gives_back_the_extra() -> None:
    from pricing.leases import plan

    take, give = plan("a", 16, {}, set())
    assert len(take) == 16 and give == []
    take, give = plan("b", 16, {k: "a" for k in range(16)}, {"a"})
    assert take == [] and give == []  # nothing free: b waits for a to give back
    take, give = plan("a", 16, {k: "a" for k in range(16)}, {"a", "b"})
    assert give == list(range(8, 16)) and take == []
    take, give = plan("b", 16, {k: "a" for k in range(8)}, {"a", "b"})
    assert sorted(take) == list(range(8, 16)) and give == []
    take, _ = plan("c", 16, {k: "a" for k in range(6)} | {k: "b" for k in range(6, 12)}, {"a", "b", "c"})
    assert sorted(take) == [12, 13, 14, 15]  # ceil(16 / 3) = 6, only 4 free
    a, _ = plan("a", 16, {}, {"a", "b"})
    b, _ = plan("b", 16, {}, {"a", "b"})
    assert len(a) == len(b) == 8 and a != b  # replicas starting together try different shares first


def test_shares_are_settled_only_when_nobody_holds_more_than_a_fair_part() -> None:
    from pricing.leases import settled

    all_a = {k: "a" for k in range(16)}
    assert settled("a", 16, all_a, {"a"})  # alone: everything is its part
    assert not settled("b", 16, all_a, {"a", "b"})  # b just joined: a has 8 to give back
    assert not settled("a", 16, all_a, {"a", "b"})
    halves = {k: "a" if k < 8 else "b" for k in range(16)}
    assert settled("a", 16, halves, {"a", "b"}) and settled("b", 16, halves, {"a", "b"})
    assert not settled("b", 16, {k: "a" for k in range(8)}, {"a", "b"})  # 8 free for b to take
    thirds = {k: "a" for k in range(6)} | {k: "b" for k in range(6, 12)} | {k: "c" for k in range(12, 16)}
    assert settled("c", 16, thirds, {"a", "b", "c"})  # ceil(16 / 3) = 6: c's 4 are all there is


def test_partition_of_is_nats_fnv1a_modulo() -> None:
    from feed.adapters.jetstream import partition_of

    # the values nats-server 2.15's {{partition(4,2)}} gave for these tokens
    assert [partition_of(m, 4) for m in ["m1", "m2", "m3", "m4", "m5"]] == [3, 2, 1, 0, 3]


Quote = tuple[str, "ev.ProviderMarketStatus", list[tuple[str, str]]]


def _provider_odds(match_id: str, markets: list[Quote]) -> ev.FeedEvent:
    e = ev.FeedEvent(event_id=f"po:{match_id}:{len(markets)}", provider="p", match_id=match_id)
    for key, status, outcomes in markets:
        pm = e.provider_odds.markets.add(status=status)
        pm.market.market_key = key
        pm.market.market_type = key.split("|")[0]
        for outcome, odds in outcomes:
            pm.outcomes.add(outcome_id=outcome, active=True).odds.decimal = odds
    return e


ACTIVE, SUSPENDED = ev.PROVIDER_MARKET_STATUS_ACTIVE, ev.PROVIDER_MARKET_STATUS_SUSPENDED


def test_provider_mode_re_margins_the_providers_odds() -> None:
    from pricing.margin import remove_margin

    engine = Engine(provider_mode=frozenset({"p"}))
    one_x_two = [("home", "2.00"), ("draw", "3.50"), ("away", "4.00")]
    (d,) = engine.apply(
        _provider_odds(
            "pm", [("1x2", ACTIVE, one_x_two), ("total|total=3", SUSPENDED, [("over", "2.10"), ("under", "1.75")])]
        )
    )
    m = engine.matches["pm"]
    assert m.mode == "provider"
    q = m.quotes["1x2"]
    fair = remove_margin([2.0, 3.5, 4.0], "shin")
    assert q.status is Status.OPEN
    assert q.probabilities == tuple(round(p, 6) for p in fair)
    booksum = sum(100 / c for c in q.odds_cents)
    assert 1.05 <= booksum < 1.05 + 0.03  # the operator's 5 % margin, rounded down to the ladder
    assert m.quotes["total:3.0"].status is Status.SUSPENDED and m.quotes["total:3.0"].reason == "provider"
    assert m.quotes["btts"].status is Status.SUSPENDED and m.quotes["btts"].reason == "not_offered"
    # the provider moves its price: only that market is republished
    moved = [("home", "1.80"), ("draw", "3.80"), ("away", "4.60")]
    (d2,) = engine.apply(_provider_odds("pm", [("1x2", ACTIVE, moved)]))
    assert [q.key for q in d2.markets] == ["1x2"] and d2.version == d.version + 1
    assert m.quotes["1x2"].odds_cents[0] < q.odds_cents[0]


def test_a_trader_switches_a_model_match_to_provider_mode_and_back() -> None:
    engine = Engine()
    engine.apply(_event("fixture_change", fixture_change__fixture__match_id="m"))
    m = engine.matches["m"]
    model_home = m.quotes["1x2"].odds_cents[0]
    short = [("home", "1.20"), ("draw", "6.0"), ("away", "12.0")]
    assert engine.apply(_provider_odds("m", [("1x2", ACTIVE, short)])) == []  # model mode: kept, not used
    d = m.set_mode("provider")
    assert d is not None and m.quotes["1x2"].odds_cents[0] < 130 < model_home
    assert m.quotes["btts"].status is Status.SUSPENDED
    m.set_mode("model")
    assert m.quotes["1x2"].odds_cents[0] == model_home and m.quotes["btts"].status is Status.OPEN


def test_market_keys_from_references() -> None:
    from livebet.common.v1 import common_pb2

    from pricing.live.engine import market_key

    assert market_key(common_pb2.MarketRef(market_key="total|total=3")) == "total:3.0"
    assert market_key(common_pb2.MarketRef(market_key="asian_handicap|hcp=-0.5")) == "asian_handicap:-0.5"
    assert market_key(common_pb2.MarketRef(market_key="next_goal|goalnr=2")) == "next_goal:2"
    ref = common_pb2.MarketRef(market_type="total", specifiers=[common_pb2.Specifier(key="total", value="2.5")])
    assert market_key(ref) == "total:2.5"
    assert market_key(common_pb2.MarketRef(market_type="1x2")) == "1x2"


def test_an_ended_match_is_forgotten_after_a_while_and_priced_again_from_its_last_version() -> None:
    from pricing.live.engine import REMEMBER_RETIRED_MS, RETIRE_AFTER_MS

    engine = Engine()
    engine.apply(_event("fixture_change", fixture_change__fixture__match_id="m"))
    live = _event("match_state", match_state__state__status=ev.MATCH_STATUS_LIVE, match_state__state__clock__minute=80)
    engine.apply(live)
    end = _event("match_state", match_state__state__status=ev.MATCH_STATUS_ENDED, match_state__state__clock__minute=90)
    end.received_at.FromMilliseconds(1_000_000)
    engine.apply(end)
    last = engine.matches["m"].version
    assert engine.matches["m"].ended
    assert engine.retire(1_000_000 + RETIRE_AFTER_MS - 1) == []  # heard of too recently
    assert engine.retire(1_000_000 + RETIRE_AFTER_MS) == ["m"]
    assert "m" not in engine.matches and "m" not in engine.provider_of
    # what comes after is ignored: no deltas, nothing held again
    assert engine.apply(live) == [] and "m" not in engine.matches
    down = ev.FeedEvent(event_id="down", provider="p")
    down.provider_down.reason = "silent"
    assert engine.apply(down) == []
    # the fixture sent again prices it again, from the version it had (a client never sees it go back)
    (again,) = engine.apply(_event("fixture_change", fixture_change__fixture__match_id="m"))
    assert (again.previous_version, again.version) == (last, last + 1)
    assert "m" not in engine.retired
    # a fixture with no kick-off given, not started, is never retired, however quiet; a retired
    # match's version is kept for a week
    assert engine.retire(10**13) == []
    engine.apply(end)
    assert engine.retire(2_000_000 + RETIRE_AFTER_MS) == ["m"] and "m" in engine.retired
    engine.retire(2_000_000 + RETIRE_AFTER_MS + REMEMBER_RETIRED_MS)
    assert engine.retired == {}


def test_a_match_abandoned_by_its_provider_is_forgotten_hours_later_a_fixture_to_come_is_not() -> None:
    from pricing.live.engine import ABANDON_AFTER_MS

    engine = Engine()
    hour = 3600 * 1000
    # in play, then nothing more from the provider (the feed stopped betting on it long ago)
    engine.apply(_event("fixture_change", match_id="dropped", fixture_change__fixture__match_id="dropped"))
    live = _event(
        "match_state",
        match_id="dropped",
        match_state__state__status=ev.MATCH_STATUS_LIVE,
        match_state__state__clock__minute=30,
    )
    live.received_at.FromMilliseconds(10 * hour)
    engine.apply(live)
    # a fixture sent days before its kick-off, and one whose kick-off passed with nothing heard
    for match_id, starts in (("later", 100 * hour), ("due", 11 * hour)):
        f = _event("fixture_change", match_id=match_id, fixture_change__fixture__match_id=match_id)
        f.fixture_change.fixture.start_time.FromMilliseconds(starts)
        f.received_at.FromMilliseconds(hour)
        engine.apply(f)
    assert engine.abandon(10 * hour + ABANDON_AFTER_MS - 1) == []  # silent, not yet for long enough
    assert engine.retire(10 * hour + ABANDON_AFTER_MS - 1) == []
    # its last publication suspends whatever it still offered, then it is forgotten
    (last,) = engine.abandon(10 * hour + ABANDON_AFTER_MS)
    assert last.match_id == "dropped" and last.cause == "abandoned" and last.markets
    assert all(q.status is Status.SUSPENDED for q in last.markets)
    assert all(q.status is not Status.OPEN for q in engine.matches["dropped"].quotes.values())
    assert engine.abandon(10 * hour + ABANDON_AFTER_MS) == []  # nothing left open
    assert engine.retire(10 * hour + ABANDON_AFTER_MS) == ["dropped"]
    assert "dropped" in engine.retired and "dropped" not in engine.matches
    assert engine.retire(11 * hour + ABANDON_AFTER_MS - 1) == []
    assert engine.retire(11 * hour + ABANDON_AFTER_MS) == ["due"]
    assert engine.retire(99 * hour) == [] and "later" in engine.matches  # its kick-off is to come


def test_an_event_the_engine_fails_on_is_skipped_and_counted_not_fatal_to_the_share() -> None:
    from pricing.server import Runner, Share

    runner, share = Runner(None, None, "t"), Share(0)  # type: ignore[arg-type]  # no I/O here
    real = share.engine.apply

    def apply(e: ev.FeedEvent, defer: bool = False) -> list:  # type: ignore[type-arg]
        if e.event_id == "poison":
            raise ZeroDivisionError("a bug the event exposes")
        return real(e, defer)

    share.engine.apply = apply  # type: ignore[method-assign]
    poison = _event("goal", goal__side=1)
    poison.event_id = "poison"
    assert runner.apply(share, poison) == []
    assert runner.metrics.failed._value.get() == 1
    fixture = _event("fixture_change", fixture_change__fixture__match_id="m")
    assert [d.cause for d in runner.apply(share, fixture)] == ["fixture"]  # the next event is priced


def _offered(engine: Engine) -> dict[str, tuple]:  # type: ignore[type-arg]
    """Each market's status, and the prices of the open ones (a closed or suspended market keeps
    the last prices it was offered at, which depend on which states were priced)."""
    return {
        f"{match_id}/{q.key}": (q.status, q.odds_cents if q.status is Status.OPEN else None)
        for match_id, m in engine.matches.items()
        for q in m.quotes.values()
    }


def test_deferred_reprices_offer_the_same_book_after_each_batch_with_fewer_deltas() -> None:
    events = simulated_events(3, 7)
    each, batched = Engine(), Engine()
    one_by_one, deltas = [], []
    for start in range(0, len(events), 50):  # as the service takes them: up to a batch at a time
        for e in events[start : start + 50]:
            one_by_one += each.apply(e)
            deltas += batched.apply(e, defer=True)
        deltas += batched.flush()
        assert _offered(batched) == _offered(each)  # after every batch, what is on offer is the same
    assert len(deltas) < len(one_by_one)
    for match_id, m in batched.matches.items():
        last, book = _applied(deltas, match_id)
        assert last == m.version <= each.matches[match_id].version  # never more than one by one
        assert book == {q.key: (q.status, q.odds_cents) for q in m.quotes.values()}


def test_a_deferred_clock_reprice_never_delays_a_suspension() -> None:
    engine = Engine()
    engine.apply(_event("fixture_change", fixture_change__fixture__match_id="m"))
    live = {"match_state__state__status": ev.MATCH_STATUS_LIVE}
    engine.apply(_event("match_state", **live, match_state__state__clock__minute=30))
    assert engine.apply(_event("match_state", **live, match_state__state__clock__minute=31), defer=True) == []
    assert engine.deferred == {"m": "clock"}
    suspension, reprice = engine.apply(_event("goal", goal__side=1, goal__score__home=1), defer=True)
    assert {q.status for q in suspension.markets} == {Status.SUSPENDED}
    assert reprice.cause == "goal" and engine.matches["m"].minute == 31  # the goal's reprice priced minute 31
    assert engine.deferred == {} and engine.flush() == []
    later = _event("match_state", **live, match_state__state__clock__minute=40, match_state__state__score__home=1)
    assert engine.apply(later, defer=True) == []
    (clock,) = engine.flush()
    assert clock.cause == "clock" and clock.version == reprice.version + 1


def test_a_batch_of_fixtures_is_priced_after_the_goal_that_came_with_it() -> None:
    engine = Engine()
    engine.apply(_event("fixture_change", fixture_change__fixture__match_id="m"))
    live = {"match_state__state__status": ev.MATCH_STATUS_LIVE}
    engine.apply(_event("match_state", **live, match_state__state__clock__minute=30))
    for match_id in ("n1", "n2"):  # tomorrow's fixtures, then a goal in a match under way
        fixture = _event("fixture_change", fixture_change__fixture__match_id=match_id)
        fixture.match_id = match_id
        assert engine.apply(fixture, defer=True) == []
    suspension, reprice = engine.apply(_event("goal", goal__side=1, goal__score__home=1), defer=True)
    assert suspension.match_id == reprice.match_id == "m" and reprice.cause == "goal"
    first, second = engine.flush()
    assert (first.match_id, first.cause, second.match_id, second.cause) == ("n1", "fixture", "n2", "fixture")
    assert {q.status for q in first.markets} == {Status.OPEN} and engine.deferred == {}


def test_kick_off_full_time_and_a_provider_suspension_are_never_left_for_the_end_of_a_batch() -> None:
    engine = Engine()
    engine.apply(_event("fixture_change", fixture_change__fixture__match_id="m"))
    live = {"match_state__state__status": ev.MATCH_STATUS_LIVE}
    assert engine.apply(_event("match_state", **live, match_state__state__clock__minute=1), defer=True)  # kick-off
    assert engine.apply(_event("match_state", **live, match_state__state__clock__minute=2), defer=True) == []
    ended = _event(
        "match_state", match_state__state__status=ev.MATCH_STATUS_ENDED, match_state__state__clock__minute=90
    )
    (full_time,) = engine.apply(ended, defer=True)
    assert {q.status for q in full_time.markets} == {Status.CLOSED} and engine.deferred == {}

    provider = Engine(provider_mode=frozenset({"p"}))
    one_x_two = [("home", "2.00"), ("draw", "3.50"), ("away", "4.00")]
    provider.apply(_provider_odds("pm", [("1x2", ACTIVE, one_x_two)]))
    moved = [("home", "1.90"), ("draw", "3.60"), ("away", "4.20")]
    assert provider.apply(_provider_odds("pm", [("1x2", ACTIVE, moved)]), defer=True) == []  # prices only
    (suspended,) = provider.apply(_provider_odds("pm", [("1x2", SUSPENDED, moved)]), defer=True)
    assert [(q.key, q.status) for q in suspended.markets] == [("1x2", Status.SUSPENDED)]


def test_a_deferred_reprice_that_fails_is_reported_and_the_other_matches_are_repriced() -> None:
    engine = Engine()
    live = {"match_state__state__status": ev.MATCH_STATUS_LIVE}
    for match_id in ("a", "b"):
        fixture = _event("fixture_change", fixture_change__fixture__match_id=match_id)
        fixture.match_id = match_id
        engine.apply(fixture)
        kick_off = _event("match_state", **live, match_state__state__clock__minute=1)
        kick_off.match_id = match_id
        engine.apply(kick_off)
        tick = _event("match_state", **live, match_state__state__clock__minute=20)
        tick.match_id = match_id
        assert engine.apply(tick, defer=True) == []

    def broken(cause: str) -> None:
        raise ZeroDivisionError("a bug this state exposes")

    engine.matches["a"].reprice = broken  # type: ignore[method-assign]
    failures: list[str] = []
    (d,) = engine.flush(lambda match_id, err: failures.append(match_id))
    assert d.match_id == "b" and failures == ["a"] and engine.deferred == {}
