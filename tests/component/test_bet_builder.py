"""Bet builders end to end on real PostgreSQL, NATS, Valkey, the feed, the pricing engine, the
betting and the settlement services: outcomes of one match quoted together from the model the
engine priced the match with, placed at that price under the odds-change policy, the in-play delay,
cash-out from the model, and settlement as won, lost or void with the ledger balanced."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livebet.betting.v1 import bet_pb2
from livebet.betting.v1 import betting_service_pb2 as bs
from livebet.common.v1 import common_pb2

from pricing import builder as bb
from pricing.live.codec import model_inputs
from tests.component.betting_env import (
    IN_PLAY_DELAY,
    Env,
    balance,
    deposit,
    eur,
    md,
    place,
    priced,
    selection,
    start,
    state_event,
)
from tests.component.test_betting import _KEYS, _OUTCOMES, _TEXT, _refused
from tests.component.test_cash_out import _bet_cancel, _window
from tests.component.test_feed_service import fixture
from tests.component.test_live_odds import goal
from tests.component.test_settlement import final
from tests.helpers import metric, wait_for

HOME_AND_OVER = [("1x2", "home"), ("total|total=2.5", "over")]
MARGIN = Decimal("0.10")  # the betting service's default bet builder margin


@pytest.fixture(scope="module")
def env(servers_root: Path) -> Iterator[Env]:
    # the sweep of bets decided yet open runs each second here (a minute by default)
    yield from start(servers_root, "builder", {"LIVEBET_SETTLEMENT_SWEEP_SECONDS": "1"}, settlement=True)


@pytest.fixture(autouse=True)
def ledger_stays_balanced(env: Env) -> Iterator[None]:
    yield
    env.check_ledger()


def _outcome(match_id: str, market_key: str, outcome_id: str) -> common_pb2.OutcomeRef:
    o = common_pb2.OutcomeRef(outcome_id=outcome_id)
    o.market.match_id, o.market.market_key = match_id, market_key
    return o


def quote(env: Env, account: str, match_id: str, picks: list[tuple[str, str]]) -> bs.QuoteBetBuilderResponse:
    req = bs.QuoteBetBuilderRequest(outcomes=[_outcome(match_id, k, o) for k, o in picks])
    return env.bets.QuoteBetBuilder(req, metadata=md(account), timeout=10)


def place_builder(
    env: Env,
    account: str,
    request_id: str,
    match_id: str,
    picks: list[tuple[str, str]],
    stake: int,
    odds: str,
    versions: list[int] | None = None,
    policy: int = bet_pb2.ODDS_CHANGE_POLICY_NONE,
) -> bet_pb2.Bet:
    legs = [selection(match_id, k, o, "", (versions or [0] * len(picks))[i]) for i, (k, o) in enumerate(picks)]
    req = bs.PlaceBetRequest(request_id=request_id, selections=legs, stake=eur(stake), odds_change_policy=policy)
    req.bet_builder_odds.decimal = odds
    return env.bets.PlaceBet(req, metadata=md(account), timeout=10).bet


def model_price(env: Env, match_id: str, picks: list[tuple[str, str]]) -> tuple[Decimal, float]:
    """The bet builder's odds and probability from the model in the match's snapshot now."""
    snap = env.snapshot(match_id)
    assert snap is not None
    inputs = model_inputs(snap)
    assert inputs is not None
    return bb.price(inputs, [bb.Pick(k, o) for k, o in picks], MARGIN)


def _bet(env: Env, account: str, bet_id: str) -> bet_pb2.Bet:
    return env.bets.GetBet(bs.GetBetRequest(bet_id=bet_id), metadata=md(account), timeout=10).bet


def _status(env: Env, bet_id: str) -> str:
    (row,) = env.sql("SELECT status FROM betting.bets WHERE bet_id = %s", bet_id)
    return str(row[0])


def _liability(env: Env, match_id: str, market_key: str, outcome: str) -> int:
    rows = env.sql(
        "SELECT amount FROM betting.liability WHERE match_id = %s AND market_key = %s AND outcome_id = %s",
        match_id,
        market_key,
        outcome,
    )
    return int(rows[0][0]) if rows else 0


def _wait_first_leg_void(env: Env, bet_id: str) -> None:
    """Until the bet's first leg (its 1x2 one) is settled void (a bet cancel)."""
    leg0 = "SELECT result FROM betting.selections WHERE bet_id = %s AND leg = 0"
    wait_for(lambda: env.sql(leg0, bet_id) == [(bet_pb2.BET_RESULT_VOID,)], 30, what=f"{bet_id}'s 1x2 leg voided")


def _reason(details: list[object]) -> str:
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    return infos[0].reason if infos else ""


def _fields(details: list[object]) -> list[str]:
    return [v.field for d in details if isinstance(d, error_details_pb2.BadRequest) for v in d.field_violations]


def _builders(env: Env, outcome: str, reason: str = "") -> float:
    port = env.betting.spec.env["LIVEBET_METRICS_PORT"]
    return metric(port, f'livebet_bets_builders_total{{outcome="{outcome}",reason="{reason}"}}')


def test_a_bet_builder_is_priced_together_placed_and_settled_as_won(env: Env) -> None:
    quoted, placed = _builders(env, "quoted"), _builders(env, "placed")
    env.send(fixture("bb1"))
    priced(env, "bb1")
    deposit(env, "ba1", 10_000, "ba1-d")
    q = quote(env, "ba1", "bb1", HOME_AND_OVER)
    odds, p = model_price(env, "bb1", HOME_AND_OVER)
    assert q.odds.decimal == f"{odds:.2f}"
    home, home_v = env.price("bb1", "1x2", "home")
    over, over_v = env.price("bb1", "total|total=2.5", "over")
    assert list(q.market_versions) == [home_v, over_v]
    assert [o.decimal for o in q.single_odds] == [home, over]
    assert q.match_version == env.snapshot("bb1").version  # type: ignore[union-attr]
    # a home win and three goals or more go together: likelier than the product, so a shorter price
    # than the accumulator of the two would be if they were on different matches
    assert Decimal(q.odds.decimal) < Decimal(home) * Decimal(over)
    assert 0.2 < p < 0.4

    bet = place_builder(env, "ba1", "ba1-b", "bb1", HOME_AND_OVER, 1_000, q.odds.decimal, list(q.market_versions))
    assert bet.status == bet_pb2.BET_STATUS_ACCEPTED and bet.bet_builder
    assert bet.accepted_odds.decimal == q.odds.decimal
    win = int((Decimal(1_000) * Decimal(q.odds.decimal)).to_integral_value(rounding=ROUND_DOWN))
    assert bet.potential_payout.minor_units == win
    assert [(s.requested_odds.decimal, s.accepted_odds.decimal) for s in bet.selections] == [
        (q.odds.decimal, home),
        (q.odds.decimal, over),
    ]
    assert balance(env, "ba1") == (9_000, 1_000)
    assert _liability(env, "bb1", "1x2", "home") == win
    assert _liability(env, "bb1", "total|total=2.5", "over") == win
    again = place_builder(env, "ba1", "ba1-b", "bb1", HOME_AND_OVER, 1_000, q.odds.decimal, list(q.market_versions))
    assert again.bet_id == bet.bet_id  # idempotent, as any bet
    assert _bet(env, "ba1", bet.bet_id).bet_builder
    assert (_builders(env, "quoted"), _builders(env, "placed")) == (quoted + 1, placed + 1)

    env.send(final("bb1", 90, 2, 1))
    wait_for(lambda: _status(env, bet.bet_id) == "settled", 30, what="the bet builder settled")
    b = _bet(env, "ba1", bet.bet_id)
    assert (b.result, b.payout.minor_units) == (bet_pb2.BET_RESULT_WON, win)
    assert [s.result for s in b.selections] == [bet_pb2.BET_RESULT_WON, bet_pb2.BET_RESULT_WON]
    assert balance(env, "ba1") == (9_000 + win, 0)
    assert _liability(env, "bb1", "1x2", "home") == 0


def test_a_bet_builder_is_lost_when_one_leg_loses_and_void_when_one_is_voided(env: Env) -> None:
    env.send(fixture("bb2"))
    priced(env, "bb2")
    deposit(env, "ba2", 10_000, "ba2-d")
    q = quote(env, "ba2", "bb2", HOME_AND_OVER)
    lost = place_builder(env, "ba2", "ba2-lost", "bb2", HOME_AND_OVER, 1_000, q.odds.decimal)
    picks = [("1x2", "home"), ("btts", "yes")]
    q2 = quote(env, "ba2", "bb2", picks)
    start_at = _window()
    voided = place_builder(env, "ba2", "ba2-void", "bb2", picks, 500, q2.odds.decimal)
    end_at = _window()
    assert balance(env, "ba2") == (8_500, 1_500)
    # the provider voids the 1x2 market for the time the second bet was placed in (and the first,
    # placed before, stands): its other leg still decides whether it lost
    env.send(_bet_cancel("bb2", 40, start_at, end_at))
    _wait_first_leg_void(env, voided.bet_id)
    assert _status(env, voided.bet_id) == "accepted"  # btts is not known yet
    env.send(final("bb2", 90, 1, 1))  # a draw: the first bet's home leg lost; both scored
    wait_for(lambda: _status(env, lost.bet_id) == "settled", 30, what="the first bet settled")
    wait_for(lambda: _status(env, voided.bet_id) == "settled", 30, what="the second bet settled")
    a, b = _bet(env, "ba2", lost.bet_id), _bet(env, "ba2", voided.bet_id)
    assert (a.result, a.payout.minor_units) == (bet_pb2.BET_RESULT_LOST, 0)
    assert (b.result, b.payout.minor_units) == (bet_pb2.BET_RESULT_VOID, 500)  # the stake back
    assert balance(env, "ba2") == (9_000, 0)


def test_a_void_leg_does_not_save_a_bet_builder_whose_other_leg_lost(env: Env) -> None:
    env.send(fixture("bb3"))
    priced(env, "bb3")
    deposit(env, "ba3", 10_000, "ba3-d")
    picks = [("1x2", "home"), ("btts", "yes")]
    q = quote(env, "ba3", "bb3", picks)
    start_at = _window()
    bet = place_builder(env, "ba3", "ba3-b", "bb3", picks, 1_000, q.odds.decimal)
    end_at = _window()
    env.send(_bet_cancel("bb3", 40, start_at, end_at))
    _wait_first_leg_void(env, bet.bet_id)
    env.send(final("bb3", 90, 2, 0))  # btts no: lost, whatever the void leg
    wait_for(lambda: _status(env, bet.bet_id) == "settled", 30, what="settled")
    b = _bet(env, "ba3", bet.bet_id)
    assert (b.result, b.payout.minor_units) == (bet_pb2.BET_RESULT_LOST, 0)
    assert balance(env, "ba3") == (9_000, 0)


def test_bad_bet_builders_are_refused_with_nothing_written(env: Env) -> None:
    env.send(fixture("bb4"), fixture("bb4x"))
    priced(env, "bb4")
    priced(env, "bb4x")
    deposit(env, "ba4", 10_000, "ba4-d")
    q = quote(env, "ba4", "bb4", HOME_AND_OVER)
    before = env.counts()

    def bad(picks: list[tuple[str, str, str]], odds: str = q.odds.decimal) -> tuple[grpc.StatusCode, str, list[str]]:
        legs = [selection(m, k, o, "") for m, k, o in picks]
        req = bs.PlaceBetRequest(request_id="ba4-bad", selections=legs, stake=eur(1_000))
        req.bet_builder_odds.decimal = odds
        code, msg, details = _refused(lambda: env.bets.PlaceBet(req, metadata=md("ba4"), timeout=10))
        return code, msg, _fields(details)

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    code, msg, fields = bad([("bb4", "1x2", "home"), ("bb4x", "total|total=2.5", "over")])
    assert (code, fields) == (invalid, ["selections[1]"]) and "one match" in msg
    code, msg, fields = bad([("bb4", "1x2", "home"), ("bb4", "1x2", "draw")])
    assert (code, fields) == (invalid, ["selections[1]"]) and "one outcome of each market" in msg
    code, msg, fields = bad([("bb4", "1x2", "home"), ("bb4", "draw_no_bet", "home")])
    assert (code, fields) == (invalid, ["selections[1]"]) and "draw_no_bet cannot be in a bet builder" in msg
    code, msg, fields = bad([("bb4", "1x2", "home"), ("bb4", "total|total=2", "over")])
    assert (code, fields) == (invalid, ["selections[1]"]) and "half lines" in msg
    code, msg, fields = bad([("bb4", "1x2", "home")])
    assert (code, fields) == (invalid, ["selections"]) and "2-10 selections" in msg
    code, msg, fields = bad([("bb4", "1x2", "home"), ("bb4", "btts", "yes")], "1.00")
    assert (code, fields) == (invalid, ["bet_builder_odds"]) and "below the minimum" in msg
    code, msg, fields = bad([("bb4", "1x2", "home"), ("bb4", "btts", "yes")], "three")
    assert (code, fields) == (invalid, ["bet_builder_odds"])

    # well formed, but not on offer at that price, or not at all
    code, msg, details = _refused(
        lambda: place_builder(env, "ba4", "ba4-changed", "bb4", HOME_AND_OVER, 1_000, f"{Decimal(q.odds.decimal) + 1}")
    )
    assert (code, _reason(details)) == (grpc.StatusCode.FAILED_PRECONDITION, "REJECT_REASON_ODDS_CHANGED")
    assert "bet builder on bb4: odds are" in msg
    impossible = [("1x2", "home"), ("correct_score", "0-0")]
    refused = _builders(env, "quote_refused", "REJECT_REASON_INVALID_COMBINATION")
    code, msg, details = _refused(lambda: quote(env, "ba4", "bb4", impossible))
    assert _builders(env, "quote_refused", "REJECT_REASON_INVALID_COMBINATION") == refused + 1
    assert (code, _reason(details)) == (grpc.StatusCode.FAILED_PRECONDITION, "REJECT_REASON_INVALID_COMBINATION")
    assert "cannot all win together" in msg
    code, msg, details = _refused(lambda: place_builder(env, "ba4", "ba4-imp", "bb4", impossible, 1_000, "50.00"))
    assert _reason(details) == "REJECT_REASON_INVALID_COMBINATION"
    code, msg, _ = _refused(lambda: quote(env, "ba4", "bb4", [("1x2", "home"), ("1x2|x=1", "home")]))
    assert code == grpc.StatusCode.NOT_FOUND and "no market" in msg
    code, msg, details = _refused(lambda: quote(env, "ba4", "bb4", [("1x2", "home"), ("next_goal|goalnr=1", "home")]))
    assert (code, _fields(details)) == (invalid, ["outcomes[1]"]) and "next_goal cannot be in a bet builder" in msg
    # legs on one match without bet_builder_odds are still refused, as before
    legs = [selection("bb4", "1x2", "home", "2.00"), selection("bb4", "btts", "yes", "1.80")]
    code, msg, _ = _refused(lambda: place(env, "ba4", "ba4-acca", legs, 1_000))
    assert code == invalid and "except in a bet builder" in msg
    assert env.counts() == before
    assert balance(env, "ba4") == (10_000, 0)


def test_the_higher_policy_takes_a_longer_builder_price(env: Env) -> None:
    env.send(fixture("bb5"))
    priced(env, "bb5")
    deposit(env, "ba5", 10_000, "ba5-d")
    q = quote(env, "ba5", "bb5", HOME_AND_OVER)
    asked = f"{Decimal(q.odds.decimal) - Decimal('0.20'):.2f}"
    bet = place_builder(
        env, "ba5", "ba5-b", "bb5", HOME_AND_OVER, 1_000, asked, policy=bet_pb2.ODDS_CHANGE_POLICY_HIGHER
    )
    assert bet.status == bet_pb2.BET_STATUS_ACCEPTED and bet.accepted_odds.decimal == q.odds.decimal
    assert bet.selections[0].requested_odds.decimal == asked


def test_an_in_play_bet_builder_waits_out_the_delay_and_a_goal_meanwhile_rejects_it(env: Env) -> None:
    env.send(fixture("bb6"), state_event("bb6", 1, 30))
    priced(env, "bb6", 30)
    deposit(env, "ba6", 10_000, "ba6-d")
    picks = [("1x2", "away"), ("btts", "no")]
    q = quote(env, "ba6", "bb6", picks)
    kept = place_builder(env, "ba6", "ba6-kept", "bb6", picks, 1_000, q.odds.decimal, list(q.market_versions))
    assert kept.status == bet_pb2.BET_STATUS_PENDING and kept.bet_builder
    wait_for(lambda: _status(env, kept.bet_id) != "pending", 5 + IN_PLAY_DELAY, what="decided after the delay")
    assert _bet(env, "ba6", kept.bet_id).status == bet_pb2.BET_STATUS_ACCEPTED

    q = quote(env, "ba6", "bb6", picks)
    hit = place_builder(env, "ba6", "ba6-hit", "bb6", picks, 1_000, q.odds.decimal, list(q.market_versions))
    assert hit.status == bet_pb2.BET_STATUS_PENDING
    env.send(goal("bb6", 1, 0, 2))
    wait_for(lambda: _status(env, hit.bet_id) != "pending", 5 + IN_PLAY_DELAY, what="decided after the delay")
    b = _bet(env, "ba6", hit.bet_id)
    assert (b.status, b.reject_reason) == (bet_pb2.BET_STATUS_REJECTED, bet_pb2.REJECT_REASON_SUSPENDED_DURING_DELAY)
    assert balance(env, "ba6") == (9_000, 1_000)  # the rejected stake released, the other held


def test_a_bet_builder_is_cashed_out_at_the_model_probability_that_it_still_wins(env: Env) -> None:
    env.send(fixture("bb7"))
    priced(env, "bb7")
    deposit(env, "ba7", 10_000, "ba7-d")
    q = quote(env, "ba7", "bb7", HOME_AND_OVER)
    bet = place_builder(env, "ba7", "ba7-b", "bb7", HOME_AND_OVER, 1_000, q.odds.decimal)
    got = env.bets.GetCashOutOffer(bs.GetCashOutOfferRequest(bet_id=bet.bet_id), metadata=md("ba7"), timeout=10)
    _, p = model_price(env, "bb7", HOME_AND_OVER)
    win = bet.potential_payout.minor_units
    worth = Decimal(win) * Decimal(repr(p)) * (1 - Decimal("0.05"))
    assert got.amount.minor_units == int(worth.to_integral_value(rounding=ROUND_DOWN))
    # pre-match, nothing moved: the house keeps its margins (the builder's and the cash-out's)
    assert got.amount.minor_units < 1_000
    part = env.bets.GetCashOutOffer(
        bs.GetCashOutOfferRequest(bet_id=bet.bet_id, stake=eur(400)), metadata=md("ba7"), timeout=10
    )
    assert 0 < part.amount.minor_units < got.amount.minor_units
    # the stream of offers prices it the same way
    watch = bs.WatchCashOutOffersRequest(bet_ids=[bet.bet_id], interval=Duration(nanos=100_000_000))
    stream = env.bets.WatchCashOutOffers(watch, metadata=md("ba7"), timeout=30)
    try:
        first = next(stream)
    finally:
        stream.cancel()
    assert [(o.bet_id, o.amount.minor_units) for o in first.offers] == [(bet.bet_id, got.amount.minor_units)]
    req = bs.CashOutRequest(request_id="ba7-co", bet_id=bet.bet_id, amount=got.amount)
    done = env.bets.CashOut(req, metadata=md("ba7"), timeout=30).bet
    assert done.status == bet_pb2.BET_STATUS_CASHED_OUT and done.payout.minor_units == got.amount.minor_units
    assert balance(env, "ba7") == (9_000 + got.amount.minor_units, 0)
    assert _liability(env, "bb7", "1x2", "home") == 0

    # an automatic cash-out at or below the offer now is taken at once, at the model's price
    auto = place_builder(env, "ba7", "ba7-auto", "bb7", HOME_AND_OVER, 500, q.odds.decimal)
    now = env.bets.GetCashOutOffer(bs.GetCashOutOfferRequest(bet_id=auto.bet_id), metadata=md("ba7"), timeout=10)
    rule = bs.SetAutoCashOutRequest(bet_id=auto.bet_id, amount=eur(now.amount.minor_units))
    env.bets.SetAutoCashOut(rule, metadata=md("ba7"), timeout=10)
    wait_for(lambda: _status(env, auto.bet_id) == "cashed_out", 20, what="the automatic cash-out taken")
    assert _bet(env, "ba7", auto.bet_id).payout.minor_units == now.amount.minor_units


def test_two_legs_settled_at_the_same_moment_settle_the_bet(env: Env) -> None:
    """At full time a bet builder's markets are settled in parallel. The second settlement must see
    the first's leg: it waits for the bet (locked by the first) and then reads after its commit.
    Without that lock each left the bet open, seeing only its own leg settled."""
    import json
    import threading

    import psycopg

    env.send(fixture("bb8"))
    priced(env, "bb8")
    deposit(env, "ba8", 10_000, "ba8-d")
    picks = [("1x2", "home"), ("btts", "yes")]
    q = quote(env, "ba8", "bb8", picks)
    bet = place_builder(env, "ba8", "ba8-b", "bb8", picks, 1_000, q.odds.decimal)
    home, yes = (s.accepted_odds.decimal for s in bet.selections)

    def results(outcome: str, odds: str) -> str:
        return json.dumps([{"outcome_id": outcome, "odds": odds, "result": 1, "rpu": odds}])

    call = "SELECT * FROM betting.settle_market(%s, %s, 1, %s::jsonb, now())"
    first = psycopg.connect(env.dsn)  # a transaction left open: its settlement not committed yet
    first.execute(call, ("bb8", "1x2", results("home", home)))
    done: dict[str, object] = {}

    def second() -> None:
        with psycopg.connect(env.dsn, autocommit=True) as conn:
            done["row"] = conn.execute(call, ("bb8", "btts", results("yes", yes))).fetchone()

    t = threading.Thread(target=second)
    t.start()
    try:
        waiting = "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%%settle_market%%'"
        wait_for(lambda: bool(env.sql(waiting)), 10, what="the second settlement waiting for the bet")
        assert _status(env, bet.bet_id) == "accepted"
    finally:
        first.commit()
        first.close()
        t.join(10)
    assert done["row"] == (1, bet.potential_payout.minor_units)  # the second settled it, as won
    b = _bet(env, "ba8", bet.bet_id)
    assert (b.status, b.result) == (bet_pb2.BET_STATUS_SETTLED, bet_pb2.BET_RESULT_WON)
    assert balance(env, "ba8") == (9_000 + bet.potential_payout.minor_units, 0)


def test_a_bet_left_open_with_every_leg_settled_is_settled_by_the_sweep(env: Env) -> None:
    """What the race above left behind before the lock (and anything unforeseen would): every leg
    settled, the bet still accepted. The settlement service's sweep settles it."""
    env.send(fixture("bb10"))
    priced(env, "bb10")
    deposit(env, "ba10", 10_000, "ba10-d")
    picks = [("1x2", "away"), ("odd_even", "odd")]
    q = quote(env, "ba10", "bb10", picks)
    bet = place_builder(env, "ba10", "ba10-b", "bb10", picks, 1_000, q.odds.decimal)
    port = env.settlement_metrics_port()
    before = metric(port, "livebet_settlement_swept_bets_total")
    env.sql(
        "UPDATE betting.selections SET result = 1, return_per_unit = odds, settled_version = 1 WHERE bet_id = %s",
        bet.bet_id,
    )
    wait_for(lambda: _status(env, bet.bet_id) == "settled", 20, what="the sweep settling the bet")
    b = _bet(env, "ba10", bet.bet_id)
    assert (b.result, b.payout.minor_units, b.settlement_version) == (
        bet_pb2.BET_RESULT_WON,
        bet.potential_payout.minor_units,
        1,
    )
    assert balance(env, "ba10") == (9_000 + bet.potential_payout.minor_units, 0)
    assert metric(port, "livebet_settlement_swept_bets_total") == before + 1


@st.composite
def _quotes(draw: st.DrawFn) -> bs.QuoteBetBuilderRequest:
    outcomes = [
        _outcome(draw(st.sampled_from(["bb9", "nope", ""]) | _TEXT), draw(_KEYS), draw(_OUTCOMES))
        for _ in range(draw(st.integers(0, 12)))
    ]
    return bs.QuoteBetBuilderRequest(outcomes=outcomes)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=_quotes())
def test_no_quote_request_yields_internal_or_unknown(env: Env, req: bs.QuoteBetBuilderRequest) -> None:
    if env.snapshot("bb9") is None:
        env.send(fixture("bb9"))
        priced(env, "bb9")
    try:
        env.bets.QuoteBetBuilder(req, metadata=md("fuzz"), timeout=10)
    except grpc.RpcError as err:
        assert err.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), err.details()
