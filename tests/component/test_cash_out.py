"""Cash-out end to end on real PostgreSQL, NATS, Valkey, the feed, the pricing engine, the betting
and the settlement services: the offer from the live prices, the money moved in one transaction,
the in-play delay, idempotency, bad input, and a later settlement leaving a cashed-out bet alone."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livebet.betting.v1 import bet_pb2
from livebet.betting.v1 import betting_service_pb2 as bs
from livebet.betting.v1 import wallet_service_pb2 as ws
from livebet.common.v1 import common_pb2
from livebet.odds.v1 import trader_service_pb2 as ts

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
from tests.component.test_betting import _MONEY, _TEXT, _error, _refused
from tests.component.test_feed_service import fixture
from tests.component.test_live_odds import goal
from tests.component.test_settlement import final
from tests.helpers import admin_channel, metric, wait_for

ONE = "1x2"
MARGIN = Decimal("0.05")


@pytest.fixture(scope="module")
def env(servers_root: Path) -> Iterator[Env]:
    yield from start(servers_root, "cash", settlement=True)


@pytest.fixture(autouse=True)
def ledger_stays_balanced(env: Env) -> Iterator[None]:
    yield
    env.check_ledger()


def offer_of(env: Env, account: str, bet_id: str) -> bs.GetCashOutOfferResponse:
    return env.bets.GetCashOutOffer(bs.GetCashOutOfferRequest(bet_id=bet_id), metadata=md(account), timeout=10)


def cash_out(env: Env, account: str, request_id: str, bet_id: str, amount: common_pb2.Money) -> bet_pb2.Bet:
    req = bs.CashOutRequest(request_id=request_id, bet_id=bet_id, amount=amount)
    return env.bets.CashOut(req, metadata=md(account), timeout=30).bet


def expected(stake: int, factor: Decimal) -> int:
    return int((Decimal(stake) * factor * (1 - MARGIN)).to_integral_value(rounding=ROUND_DOWN))


def _liability(env: Env, match_id: str, outcome: str) -> int:
    rows = env.sql("SELECT amount FROM betting.liability WHERE match_id = %s AND outcome_id = %s", match_id, outcome)
    return int(rows[0][0]) if rows else 0


def _status(env: Env, bet_id: str) -> str:
    (row,) = env.sql("SELECT status FROM betting.bets WHERE bet_id = %s", bet_id)
    return str(row[0])


def accepted_in_play(env: Env, match_id: str, account: str, minute: int) -> bet_pb2.Bet:
    """A 10.00 bet on "btts no" of a match in play (the account given 100.00), once accepted."""
    env.send(fixture(match_id), state_event(match_id, 1, minute))
    priced(env, match_id, minute)
    deposit(env, account, 10_000, f"{account}-d")
    odds, _ = env.price(match_id, "btts", "no")
    leg = selection(match_id, "btts", "no", odds)
    bet = place(env, account, f"{account}-b", [leg], 1_000, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    wait_for(lambda: _status(env, bet.bet_id) == "accepted", 20, what="accepted after the delay")
    return bet


def cash_out_meanwhile(env: Env, account: str, request_id: str, bet_id: str) -> tuple[threading.Thread, dict[str, Any]]:
    """CashOut (asking one cent) in a thread, started: its answer goes in the dict, as "bet" or as
    "error" (code, message, details)."""
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["bet"] = cash_out(env, account, request_id, bet_id, eur(1))
        except grpc.RpcError as err:
            result["error"] = _error(err)

    t = threading.Thread(target=call)
    t.start()
    return t, result


def test_a_single_is_cashed_out_at_its_offer_in_one_ledger_transaction(env: Env) -> None:
    env.send(fixture("c1"))
    priced(env, "c1")
    deposit(env, "k1", 10_000, "k1-d")
    deposit(env, "k1w", 10_000, "k1w-d")
    odds, _ = env.price("c1", ONE, "home")
    bet = place(env, "k1", "k1-b", [selection("c1", ONE, "home", odds)], 1_000)
    draw, _ = env.price("c1", ONE, "draw")
    witness = place(env, "k1w", "k1w-b", [selection("c1", ONE, "draw", draw)], 1_000)  # settles at full time
    assert bet.status == bet_pb2.BET_STATUS_ACCEPTED and balance(env, "k1") == (9_000, 1_000)
    assert _liability(env, "c1", "home") == bet.potential_payout.minor_units

    got = offer_of(env, "k1", bet.bet_id)
    now, _ = env.price("c1", ONE, "home")
    assert got.amount.minor_units == expected(1_000, Decimal(odds) / Decimal(now))  # pre-match: the same price
    assert got.amount.currency_code == "EUR" and got.delay.ToMilliseconds() == 0

    done = cash_out(env, "k1", "k1-co", bet.bet_id, got.amount)
    assert done.status == bet_pb2.BET_STATUS_CASHED_OUT and done.payout.minor_units == got.amount.minor_units
    assert done.settled_at.seconds > 0
    assert balance(env, "k1") == (9_000 + got.amount.minor_units, 0)
    assert _liability(env, "c1", "home") == 0
    (kind,) = env.sql("SELECT kind FROM betting.transactions WHERE bet_id = %s AND kind = 'cash_out'", bet.bet_id)
    assert kind == ("cash_out",)
    # the house took the difference: stake 10.00 in, the offer out
    moves = env.sql(
        "SELECT account_id, amount FROM betting.postings p JOIN betting.transactions t USING (transaction_id)"
        " WHERE t.bet_id = %s AND t.kind = 'cash_out' ORDER BY account_id",
        bet.bet_id,
    )
    (shard,) = env.sql("SELECT abs(hashtext(%s)) %% 16", bet.bet_id)[0]  # one of the house's 16 cash-out accounts
    assert moves == [
        ("held:k1:EUR", -1_000),
        (f"house:EUR:{shard}", 1_000 - got.amount.minor_units),
        ("player:k1:EUR", got.amount.minor_units),
    ]
    assert env.sql("SELECT kind FROM betting.ledger_accounts WHERE account_id = %s", f"house:EUR:{shard}") == [
        ("house",)
    ]
    assert f"{bet.bet_id}:cashed_out:0" in env.published(f"bets.k1.{bet.bet_id}")
    assert metric(env.betting.spec.env["LIVEBET_METRICS_PORT"], "livebet_bets_cash_outs_total") >= 1

    # the same request again: the same answer, nothing moves; another request: nothing to cash out
    before = env.counts()
    again = cash_out(env, "k1", "k1-co", bet.bet_id, got.amount)
    assert again.status == bet_pb2.BET_STATUS_CASHED_OUT and again.payout == done.payout
    code, msg, _ = _refused(lambda: cash_out(env, "k1", "k1-co", bet.bet_id, eur(1)))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "different request" in msg
    code, msg, details = _refused(lambda: cash_out(env, "k1", "k1-co2", bet.bet_id, eur(1)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "the bet is cashed out" in msg
    assert details[0].reason == "REJECT_REASON_CASH_OUT_UNAVAILABLE"  # type: ignore[attr-defined]
    code, _, _ = _refused(lambda: offer_of(env, "k1", bet.bet_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert env.counts() == before and balance(env, "k1") == (9_000 + got.amount.minor_units, 0)

    # full time later: the settlement leaves the cashed-out bet as it is
    env.send(final("c1", 90, 3, 0))
    wait_for(
        lambda: _status(env, witness.bet_id) == "settled",
        30,
        what="full time settled",
    )
    after = env.bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=md("k1"), timeout=10).bet
    assert after.status == bet_pb2.BET_STATUS_CASHED_OUT and after.payout == done.payout
    assert balance(env, "k1") == (9_000 + got.amount.minor_units, 0)


def _settled_elsewhere(env: Env, match_id: str) -> bool:
    """Whether the settlement service has settled the match's 1x2 (for a bet it does not touch)."""
    rows = env.sql(
        "SELECT count(*) FROM betting.selections WHERE match_id = %s AND settled_version IS NOT NULL", match_id
    )
    return bool(rows and rows[0][0])


def test_asking_more_than_the_offer_or_a_suspended_market_is_refused_and_writes_nothing(env: Env) -> None:
    env.send(fixture("c2"))
    priced(env, "c2")
    deposit(env, "k2", 10_000, "k2-d")
    odds, _ = env.price("c2", ONE, "draw")
    bet = place(env, "k2", "k2-b", [selection("c2", ONE, "draw", odds)], 2_000)
    got = offer_of(env, "k2", bet.bet_id)
    before = env.counts()
    asked = eur(got.amount.minor_units + 1)
    code, msg, details = _refused(lambda: cash_out(env, "k2", "k2-more", bet.bet_id, asked))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "below" in msg
    assert details[0].reason == "REJECT_REASON_ODDS_CHANGED"  # type: ignore[attr-defined]

    env.trader.SuspendMarket(
        ts.SuspendMarketRequest(request_id="c2-s", market={"match_id": "c2", "market_key": ONE}, reason="test"),
        timeout=10,
    )
    wait_for(lambda: env.snapshot("c2").markets[0].status == 2, 10, what="1x2 suspended")  # type: ignore[union-attr]
    for call in (lambda: offer_of(env, "k2", bet.bet_id), lambda: cash_out(env, "k2", "k2-s", bet.bet_id, eur(1))):
        code, msg, details = _refused(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "not open" in msg
        assert details[0].reason == "REJECT_REASON_MARKET_NOT_OPEN"  # type: ignore[attr-defined]
    assert env.counts() == before and balance(env, "k2") == (8_000, 2_000)
    assert _status(env, bet.bet_id) == "accepted"


def test_bad_cash_out_requests_are_invalid_argument_or_not_found(env: Env) -> None:
    env.send(fixture("c3"))
    priced(env, "c3")
    deposit(env, "k3", 10_000, "k3-d")
    odds, _ = env.price("c3", ONE, "away")
    bet = place(env, "k3", "k3-b", [selection("c3", ONE, "away", odds)], 500)
    before = env.counts()
    cases: list[tuple[bs.CashOutRequest, grpc.StatusCode, str]] = [
        (bs.CashOutRequest(bet_id=bet.bet_id, amount=eur(1)), grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
        (bs.CashOutRequest(request_id="x", bet_id="nope", amount=eur(1)), grpc.StatusCode.INVALID_ARGUMENT, "bet_id"),
        (
            bs.CashOutRequest(
                request_id="x", bet_id=bet.bet_id, amount=common_pb2.Money(currency_code="EUR", decimal="1.001")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "amount",
        ),
        (
            bs.CashOutRequest(request_id="x", bet_id=bet.bet_id, amount=eur(-5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "amount",
        ),
        (
            bs.CashOutRequest(
                request_id="x", bet_id=bet.bet_id, amount=common_pb2.Money(currency_code="GBP", minor_units=1)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "EUR",
        ),
        (
            bs.CashOutRequest(request_id="x", bet_id="00000000-0000-0000-0000-000000000000", amount=eur(1)),
            grpc.StatusCode.NOT_FOUND,
            "no bet",
        ),
    ]
    for req, want, text in cases:
        with pytest.raises(grpc.RpcError) as info:
            env.bets.CashOut(req, metadata=md("k3"), timeout=10)
        code, msg, _ = _error(info.value)
        assert code == want and text in msg, (req, code, msg)
    # another account's bet is not found, for the offer and the cash-out
    for call in (
        lambda: offer_of(env, "k3-other", bet.bet_id),
        lambda: cash_out(env, "k3-other", "y", bet.bet_id, eur(1)),
    ):
        code, _, _ = _refused(call)
        assert code == grpc.StatusCode.NOT_FOUND
    assert env.counts() == before


def test_an_accumulator_with_a_won_leg_is_priced_from_its_return_and_the_open_leg(env: Env) -> None:
    env.send(fixture("c4"), fixture("c5"))
    priced(env, "c4")
    priced(env, "c5")
    deposit(env, "k4", 10_000, "k4-d")
    o1, _ = env.price("c4", ONE, "home")
    o2, _ = env.price("c5", ONE, "draw")
    acca = place(env, "k4", "k4-acca", [selection("c4", ONE, "home", o1), selection("c5", ONE, "draw", o2)], 1_000)
    env.send(final("c4", 90, 2, 0))  # the first leg won; the accumulator stays open
    wait_for(lambda: _settled_elsewhere(env, "c4"), 30, what="c4 settled")
    got = offer_of(env, "k4", acca.bet_id)
    now, _ = env.price("c5", ONE, "draw")
    assert got.amount.minor_units == expected(1_000, Decimal(o1) * Decimal(o2) / Decimal(now))
    done = cash_out(env, "k4", "k4-co", acca.bet_id, got.amount)
    assert done.status == bet_pb2.BET_STATUS_CASHED_OUT
    assert balance(env, "k4") == (9_000 + got.amount.minor_units, 0)

    # an accumulator with a lost leg has no offer
    o3, _ = env.price("c5", ONE, "home")
    env.send(fixture("c6"))
    priced(env, "c6")
    o4, _ = env.price("c6", ONE, "away")
    lost = place(env, "k4", "k4-lost", [selection("c5", ONE, "home", o3), selection("c6", ONE, "away", o4)], 500)
    env.send(final("c6", 90, 1, 0))
    wait_for(
        lambda: _status(env, lost.bet_id) == "settled",
        30,
        what="the accumulator lost",
    )
    code, msg, details = _refused(lambda: offer_of(env, "k4", lost.bet_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "settled" in msg
    assert details[0].reason == "REJECT_REASON_CASH_OUT_UNAVAILABLE"  # type: ignore[attr-defined]


def test_in_play_a_cash_out_waits_the_delay_and_a_suspension_in_it_refuses_it(env: Env) -> None:
    bet = accepted_in_play(env, "c7", "k7", 10)
    got = offer_of(env, "k7", bet.bet_id)
    assert got.delay.ToMilliseconds() == int(IN_PLAY_DELAY * 1000)

    # a goal during the delay: refused, nothing written
    before = env.counts()
    t, result = cash_out_meanwhile(env, "k7", "k7-goal", bet.bet_id)
    time.sleep(IN_PLAY_DELAY / 3)
    env.send(goal("c7", 1, 0, 2))
    t.join(30)
    code, msg, details = result["error"]
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "suspended" in msg
    assert details[0].reason == "REJECT_REASON_SUSPENDED_DURING_DELAY"
    assert env.counts() == before and balance(env, "k7") == (9_000, 1_000)

    # once repriced and quiet: cashed out after the delay, at the offer then (at least the one asked)
    wait_for(lambda: _open(env, "c7", "btts"), 20, what="btts open again")
    got = offer_of(env, "k7", bet.bet_id)
    t0 = time.monotonic()
    done = cash_out(env, "k7", "k7-ok", bet.bet_id, eur(1))
    assert time.monotonic() - t0 >= IN_PLAY_DELAY - 0.05
    assert done.status == bet_pb2.BET_STATUS_CASHED_OUT and done.payout.minor_units >= 1
    assert balance(env, "k7") == (9_000 + done.payout.minor_units, 0)


def _open(env: Env, match_id: str, market_key: str) -> bool:
    snap = env.snapshot(match_id)
    return snap is not None and any(m.ref.market_key == market_key and m.status == 1 for m in snap.markets)


def test_two_cash_outs_of_one_bet_at_once_pay_once(env: Env) -> None:
    env.send(fixture("c8"))
    priced(env, "c8")
    deposit(env, "k8", 10_000, "k8-d")
    odds, _ = env.price("c8", ONE, "home")
    bet = place(env, "k8", "k8-b", [selection("c8", ONE, "home", odds)], 1_000)
    results: list[Any] = []

    def call(rid: str) -> None:
        try:
            results.append(cash_out(env, "k8", rid, bet.bet_id, eur(1)).status)
        except grpc.RpcError as err:
            results.append(_error(err)[0])

    threads = [threading.Thread(target=call, args=(f"k8-{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count(bet_pb2.BET_STATUS_CASHED_OUT) == 1, results
    assert results.count(grpc.StatusCode.FAILED_PRECONDITION) == 5, results
    assert env.sql("SELECT count(*) FROM betting.cash_outs WHERE bet_id = %s", bet.bet_id) == [(1,)]
    paid = env.sql("SELECT payout FROM betting.bets WHERE bet_id = %s", bet.bet_id)[0][0]
    assert balance(env, "k8") == (9_000 + paid, 0)


def test_reports_count_a_cash_out_as_settled_and_reconcile_with_the_house(env: Env) -> None:
    from livebet.settlement.v1 import report_service_pb2 as rs
    from livebet.settlement.v1 import report_service_pb2_grpc

    env.send(fixture("c9"))
    priced(env, "c9")
    deposit(env, "k9", 10_000, "k9-d")
    odds, _ = env.price("c9", ONE, "away")
    bet = place(env, "k9", "k9-b", [selection("c9", ONE, "away", odds)], 3_000)
    got = offer_of(env, "k9", bet.bet_id)
    cash_out(env, "k9", "k9-co", bet.bet_id, got.amount)
    reports = report_service_pb2_grpc.ReportServiceStub(admin_channel(env.procs[3].spec.health_target))
    by_match = reports.GetTurnoverReport(rs.GetTurnoverReportRequest(grouping=rs.REPORT_GROUPING_MATCH), timeout=10)
    (row,) = [r for r in by_match.rows if r.key == "c9"]
    assert (row.bets, row.settled_bets) == (1, 1)
    assert row.payouts.minor_units == got.amount.minor_units
    assert row.ggr.minor_units == 3_000 - got.amount.minor_units
    (house,) = env.sql("SELECT coalesce(sum(balance), 0) FROM betting.ledger_accounts WHERE kind = 'house'")
    assert by_match.total.ggr.minor_units == house[0]  # cash-outs and settlements alike
    open_liability = reports.GetOpenLiability(rs.GetOpenLiabilityRequest(match_id="c9"), timeout=10)
    assert list(open_liability.outcomes) == []


@pytest.fixture(scope="module")
def fuzz_bet(env: Env) -> str:
    env.send(fixture("c10"))
    priced(env, "c10")
    deposit(env, "kf", 10_000, "kf-d")
    odds, _ = env.price("c10", ONE, "home")
    return place(env, "kf", "kf-b", [selection("c10", ONE, "home", odds)], 1_000).bet_id


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_cash_out_or_offer_request_yields_internal_or_unknown(env: Env, fuzz_bet: str, data: st.DataObject) -> None:
    bet_id = data.draw(st.sampled_from([fuzz_bet, "00000000-0000-0000-0000-000000000000", "", "x"]) | _TEXT)
    req = bs.CashOutRequest(
        request_id=data.draw(st.sampled_from(["fz1", "fz2", ""]) | _TEXT),
        bet_id=bet_id,
        amount=data.draw(_MONEY),  # type: ignore[arg-type]
    )
    part = data.draw(st.none() | _MONEY)  # a partial cash-out's stake
    offer_req = bs.GetCashOutOfferRequest(bet_id=bet_id)
    if part is not None:
        req.stake.CopyFrom(common_pb2.Money(**part))
        offer_req.stake.CopyFrom(common_pb2.Money(**part))
    durations = st.builds(
        Duration, seconds=st.integers(-(10**12), 10**12) | st.integers(0, 400), nanos=st.integers(-(10**9), 10**9)
    )
    watch = bs.WatchCashOutOffersRequest(
        bet_ids=data.draw(st.lists(st.just(bet_id) | _TEXT, max_size=3) | st.lists(st.just(fuzz_bet), min_size=101)),
        interval=data.draw(durations),
        heartbeat=data.draw(durations),
    )
    for which in ("interval", "heartbeat"):
        if data.draw(st.booleans()):
            watch.ClearField(which)  # type: ignore[arg-type]

    def first_offers() -> None:
        stream = env.bets.WatchCashOutOffers(watch, metadata=md("kf"), timeout=10)
        try:
            next(stream)
        finally:
            stream.cancel()

    for call in (
        lambda: env.bets.CashOut(req, metadata=md("kf"), timeout=10),
        lambda: env.bets.GetCashOutOffer(offer_req, metadata=md("kf"), timeout=10),
        first_offers,
    ):
        try:
            call()
        except grpc.RpcError as err:
            assert err.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), err.details()


def test_a_restart_during_the_delay_writes_nothing_and_the_same_request_then_cashes_out(env: Env) -> None:
    bet = accepted_in_play(env, "c11", "k11", 20)
    before = env.counts()
    t, result = cash_out_meanwhile(env, "k11", "k11-co", bet.bet_id)
    time.sleep(IN_PLAY_DELAY / 3)  # the call is waiting out the delay
    env.betting.signal(signal.SIGKILL)
    assert env.betting.popen is not None
    env.betting.popen.wait(10)
    t.join(30)
    assert result["error"][0] == grpc.StatusCode.UNAVAILABLE  # the client sees the call cut short
    assert env.counts() == before
    env.betting.start()
    assert balance(env, "k11") == (9_000, 1_000)
    assert _status(env, bet.bet_id) == "accepted"
    assert env.sql("SELECT count(*) FROM betting.cash_outs WHERE bet_id = %s", bet.bet_id) == [(0,)]
    done = cash_out(env, "k11", "k11-co", bet.bet_id, eur(1))  # sent again, the same request
    assert done.status == bet_pb2.BET_STATUS_CASHED_OUT
    assert balance(env, "k11") == (9_000 + done.payout.minor_units, 0)


def test_with_redis_down_cash_out_and_placebet_are_unavailable_and_write_nothing(env: Env) -> None:
    env.send(fixture("c12"))
    priced(env, "c12")
    deposit(env, "k12", 10_000, "k12-d")
    odds, _ = env.price("c12", ONE, "home")
    bet = place(env, "k12", "k12-b", [selection("c12", ONE, "home", odds)], 1_000)
    redis = env.servers[1].proc
    before = env.counts()
    redis.stop()
    try:
        for call in (
            lambda: offer_of(env, "k12", bet.bet_id),
            lambda: cash_out(env, "k12", "k12-co", bet.bet_id, eur(1)),
            lambda: place(env, "k12", "k12-b2", [selection("c12", ONE, "home", odds)], 1_000),
        ):
            code, msg, _ = _refused(call)
            assert code == grpc.StatusCode.UNAVAILABLE and "retry with the same request_id" in msg, (code, msg)
        assert env.counts() == before
    finally:
        redis.start()
    assert _status(env, bet.bet_id) == "accepted"


def test_watchbets_shows_the_cash_out_and_the_wallet_lists_its_transaction(env: Env) -> None:

    env.send(fixture("c13"))
    priced(env, "c13")
    deposit(env, "k13", 10_000, "k13-d")
    stream = env.bets.WatchBets(bs.WatchBetsRequest(include_open=True), metadata=md("k13"), timeout=30)
    odds, _ = env.price("c13", ONE, "home")
    bet = place(env, "k13", "k13-b", [selection("c13", ONE, "home", odds)], 1_000)
    seen = []
    for msg in stream:
        if msg.event.bet.bet_id == bet.bet_id:
            seen.append(msg.event.bet.status)
            if msg.event.bet.status == bet_pb2.BET_STATUS_ACCEPTED:
                done = cash_out(env, "k13", "k13-co", bet.bet_id, eur(1))  # while the stream is open
            if msg.event.bet.status == bet_pb2.BET_STATUS_CASHED_OUT:
                assert msg.event.balance.minor_units == 9_000 + done.payout.minor_units
                break
    stream.cancel()
    assert seen == [bet_pb2.BET_STATUS_ACCEPTED, bet_pb2.BET_STATUS_CASHED_OUT]
    history = env.wallet.ListTransactions(
        ws.ListTransactionsRequest(currency_code="EUR"), metadata=md("k13"), timeout=10
    )
    newest = history.transactions[0]
    assert newest.kind == ws.TRANSACTION_KIND_CASH_OUT and newest.bet_id == bet.bet_id
    assert newest.amount.minor_units == done.payout.minor_units
    assert newest.balance_after.minor_units == 9_000 + done.payout.minor_units


def _offers(stream: Iterator[bs.WatchCashOutOffersResponse], latest: dict[str, bs.CashOutOffer], until: Any) -> None:
    """Read the stream into ``latest`` (bet id -> its newest offer) until ``until(latest)``; every
    offer read is also appended to ``latest["*"]``'s list, for what came in which order."""
    while not until(latest):
        for offer in next(stream).offers:
            latest[offer.bet_id] = offer
            latest.setdefault("*", []).append(offer)  # type: ignore[attr-defined]


def _watch(env: Env, account: str, bet_ids: tuple[str, ...] = (), ms: int = 100, heartbeat_ms: int = 0) -> Any:
    req = bs.WatchCashOutOffersRequest(bet_ids=bet_ids, interval=Duration(nanos=ms * 1_000_000))
    if heartbeat_ms:
        req.heartbeat.FromMilliseconds(heartbeat_ms)
    return env.bets.WatchCashOutOffers(req, metadata=md(account), timeout=60)


def test_watched_offers_follow_the_odds_new_bets_and_a_suspension_and_a_cashed_out_bet_closes(env: Env) -> None:
    env.send(fixture("c20"))
    priced(env, "c20")
    deposit(env, "k20", 10_000, "k20-d")
    odds, _ = env.price("c20", ONE, "home")
    a = place(env, "k20", "k20-a", [selection("c20", ONE, "home", odds)], 1_000)
    stream = _watch(env, "k20")
    latest: dict[str, Any] = {}
    first = next(stream)
    assert [o.bet_id for o in first.offers] == [a.bet_id]
    assert first.offers[0].amount == offer_of(env, "k20", a.bet_id).amount
    assert first.offers[0].amount.minor_units == expected(1_000, Decimal(1))  # the price it was placed at

    # the trader's new margin moves the home price: the stream sends the new offer by itself
    env.trader.SetMargin(ts.SetMarginRequest(request_id="c20-m", match_id="c20", margin="0.15"), timeout=10)
    wait_for(lambda: env.price("c20", ONE, "home")[0] != odds, 10, what="c20 repriced")
    now, _ = env.price("c20", ONE, "home")
    want = expected(1_000, Decimal(odds) / Decimal(now))
    _offers(stream, latest, lambda seen: a.bet_id in seen and seen[a.bet_id].amount.minor_units == want)

    # a bet placed while watching is followed too
    draw, _ = env.price("c20", ONE, "draw")
    b = place(env, "k20", "k20-b", [selection("c20", ONE, "draw", draw)], 500)
    _offers(stream, latest, lambda seen: b.bet_id in seen)
    assert latest[b.bet_id].amount == offer_of(env, "k20", b.bet_id).amount

    # cashed out: the bet's last offer says closed
    cash_out(env, "k20", "k20-co", a.bet_id, eur(1))
    _offers(stream, latest, lambda seen: seen[a.bet_id].closed)
    closed = latest[a.bet_id]
    assert not closed.HasField("amount") and closed.unavailable_reason == bet_pb2.REJECT_REASON_CASH_OUT_UNAVAILABLE
    assert "cashed out" in closed.unavailable_message

    # a suspended market: no offer, and why; nothing more about the closed bet
    env.trader.SuspendMarket(
        ts.SuspendMarketRequest(request_id="c20-s", market={"match_id": "c20", "market_key": ONE}, reason="test"),
        timeout=10,
    )
    _offers(stream, latest, lambda seen: not seen[b.bet_id].HasField("amount"))
    assert latest[b.bet_id].unavailable_reason == bet_pb2.REJECT_REASON_MARKET_NOT_OPEN
    assert "not open" in latest[b.bet_id].unavailable_message
    port, streams = env.betting.spec.env["LIVEBET_METRICS_PORT"], "livebet_bets_cash_out_offer_streams"
    assert metric(port, streams) == 1
    stream.cancel()
    wait_for(lambda: metric(port, streams) == 0, 10, what="the stream's end counted")
    after_close = latest["*"][latest["*"].index(closed) + 1 :]
    assert after_close and a.bet_id not in {o.bet_id for o in after_close}


def test_watching_named_bets_sends_only_theirs_and_bad_requests_are_refused(env: Env) -> None:
    env.send(fixture("c21"))
    priced(env, "c21")
    deposit(env, "k21", 10_000, "k21-d")
    odds, _ = env.price("c21", ONE, "away")
    one = place(env, "k21", "k21-1", [selection("c21", ONE, "away", odds)], 500)
    place(env, "k21", "k21-2", [selection("c21", ONE, "away", odds)], 700)
    stream = _watch(env, "k21", (one.bet_id, one.bet_id.upper()), heartbeat_ms=1_000)  # the same bet twice: once
    first = next(stream)
    assert [o.bet_id for o in first.offers] == [one.bet_id] and first.offers[0].amount.minor_units > 0
    # nothing changes: a heartbeat, with no offers, about a second later
    t0 = time.monotonic()
    beat = next(stream)
    waited = time.monotonic() - t0
    stream.cancel()
    assert list(beat.offers) == [] and 0.5 < waited < 20, waited

    nobody = "00000000-0000-0000-0000-000000000000"
    cases: list[tuple[tuple[str, ...], int, int, grpc.StatusCode, str]] = [
        (("nope",), 100, 0, grpc.StatusCode.INVALID_ARGUMENT, "bet_ids[0]"),
        ((), 10, 0, grpc.StatusCode.INVALID_ARGUMENT, "interval"),
        ((), 100, 500, grpc.StatusCode.INVALID_ARGUMENT, "heartbeat"),
        (tuple(str(uuid.UUID(int=i)) for i in range(101)), 100, 0, grpc.StatusCode.INVALID_ARGUMENT, "at most 100"),
        ((one.bet_id, nobody), 100, 0, grpc.StatusCode.NOT_FOUND, nobody),
    ]
    for ids, ms, beat_ms, want, text in cases:
        code, msg, details = _refused(lambda a=(ids, ms, beat_ms): next(_watch(env, "k21", *a)))  # type: ignore[misc]
        field = " ".join(f"{v.field} {v.description}" for d in details for v in getattr(d, "field_violations", []))
        assert code == want and text in msg + field, (ids[:2], ms, code, msg, field)
    # another account's bet is not found
    code, _, _ = _refused(lambda: next(_watch(env, "k21-other", (one.bet_id,))))
    assert code == grpc.StatusCode.NOT_FOUND


def test_a_watched_accumulator_whose_leg_won_is_offered_from_its_return_without_an_event(env: Env) -> None:
    env.send(fixture("c22"), fixture("c23"))
    priced(env, "c22")
    priced(env, "c23")
    deposit(env, "k22", 10_000, "k22-d")
    o1, _ = env.price("c22", ONE, "home")
    o2, _ = env.price("c23", ONE, "draw")
    acca = place(env, "k22", "k22-acca", [selection("c22", ONE, "home", o1), selection("c23", ONE, "draw", o2)], 1_000)
    # its accepted event published before the stream opens: no bet event reaches the stream
    wait_for(lambda: env.sql("SELECT count(*) FROM betting.outbox") == [(0,)], 20, what="outbox relayed")
    stream = _watch(env, "k22", (acca.bet_id,))
    latest: dict[str, Any] = {}
    _offers(stream, latest, lambda seen: acca.bet_id in seen)
    assert latest[acca.bet_id].amount.minor_units == expected(1_000, Decimal(1))
    # the first leg won: the bet stays accepted (no bet event), its market closes, and the stream
    # reads the bet again while it has no offer for a market not open
    env.send(final("c22", 90, 2, 0))
    now, _ = env.price("c23", ONE, "draw")
    want = expected(1_000, Decimal(o1) * Decimal(o2) / Decimal(now))
    _offers(stream, latest, lambda seen: seen[acca.bet_id].amount.minor_units == want)
    stream.cancel()
    assert _status(env, acca.bet_id) == "accepted"


def _window() -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.GetCurrentTime()
    return t


def _bet_cancel(match_id: str, seq: int, start: Any, end: Any) -> Any:
    from livebet.feed.v1 import event_pb2 as ev

    e = ev.FeedEvent(event_id=f"push:{match_id}:cancel:{seq}", provider="push", match_id=match_id, sequence=seq)
    e.bet_cancel.markets.add(match_id=match_id, market_type=ONE, market_key=ONE)
    e.bet_cancel.start_time.CopyFrom(start)
    e.bet_cancel.end_time.CopyFrom(end)
    e.bet_cancel.void_reason = "goal reported late"
    return e


def _rollback_cancel(match_id: str, seq: int) -> Any:
    from livebet.feed.v1 import event_pb2 as ev

    e = ev.FeedEvent(event_id=f"push:{match_id}:rbc:{seq}", provider="push", match_id=match_id, sequence=seq)
    e.rollback_bet_cancel.markets.add(match_id=match_id, market_type=ONE, market_key=ONE)
    return e


def _receivable(env: Env, account: str) -> int:
    rows = env.sql("SELECT balance FROM betting.ledger_accounts WHERE account_id = %s", f"receivable:{account}:EUR")
    return int(rows[0][0]) if rows else 0


def test_a_bet_cancel_annuls_a_cash_out_and_its_rollback_restores_it(env: Env) -> None:
    """The late-bet exploit: a bet placed on a goal the feed had not reported yet and cashed out at
    once. The provider's bet_cancel voids it all the same: the cash-out is taken back, the stake
    returned. Rolling the cancel back puts the cash-out back as it was."""
    env.send(fixture("c30"))
    priced(env, "c30")
    deposit(env, "k30", 10_000, "k30-d")
    odds, _ = env.price("c30", ONE, "home")
    start_at = _window()
    bet = place(env, "k30", "k30-b", [selection("c30", ONE, "home", odds)], 1_000)
    end_at = _window()
    time.sleep(0.05)
    outside = place(env, "k30", "k30-out", [selection("c30", ONE, "home", odds)], 500)  # after the window
    got = offer_of(env, "k30", bet.bet_id)
    cash_out(env, "k30", "k30-co", bet.bet_id, got.amount)
    c = got.amount.minor_units
    assert balance(env, "k30") == (10_000 - 1_500 + c, 500)
    house = "SELECT sum(balance) FROM betting.ledger_accounts WHERE kind = 'house'"
    house_before = env.sql(house)[0][0]

    env.send(_bet_cancel("c30", 40, start_at, end_at))
    wait_for(lambda: _status(env, bet.bet_id) == "settled", 30, what="the cashed-out bet voided")
    b = env.bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=md("k30"), timeout=10).bet
    assert (b.result, b.payout.minor_units) == (bet_pb2.BET_RESULT_VOID, 1_000)  # the stake back, not the cash-out
    assert balance(env, "k30") == (10_000 - 1_500 + 1_000, 500)
    assert _status(env, outside.bet_id) == "accepted"
    # the house gave back what the cash-out left it, and the void moved nothing of its own
    house_after = env.sql(house)[0][0]
    assert house_after - house_before == c - 1_000
    assert env.sql("SELECT annulled_by FROM betting.cash_outs WHERE bet_id = %s", bet.bet_id) == [
        ("push:c30:cancel:40:1x2",)
    ]
    moves = env.sql(
        "SELECT account_id, amount FROM betting.postings p JOIN betting.transactions t USING (transaction_id)"
        " WHERE p.bet_id = %s AND t.kind = 'correction' ORDER BY account_id",
        bet.bet_id,
    )
    assert moves == [("held:k30:EUR", 1_000), ("player:k30:EUR", -c)]  # and the house's share, without a bet
    history = env.wallet.ListTransactions(ws.ListTransactionsRequest(), metadata=md("k30"), timeout=10)
    listed = [(t.kind, t.bet_id, t.amount.minor_units) for t in history.transactions[:2]]
    assert listed == [  # the player's history: the stake back, the cash-out taken back, both naming the bet
        (ws.TRANSACTION_KIND_SETTLEMENT, bet.bet_id, 1_000),
        (ws.TRANSACTION_KIND_CORRECTION, bet.bet_id, -c),
    ]
    assert _liability(env, "c30", "home") == outside.potential_payout.minor_units  # the void released it again
    events = env.published(f"bets.k30.{bet.bet_id}")
    assert f"{bet.bet_id}:cash_out_annulled:push:c30:cancel:40:1x2" in events
    assert f"{bet.bet_id}:settled:0" in events
    # a second delivery of the same cancel changes nothing
    before = env.counts()
    env.send(_bet_cancel("c30", 40, start_at, end_at))
    time.sleep(1)
    assert env.counts() == before

    env.send(_rollback_cancel("c30", 60))
    wait_for(lambda: _status(env, bet.bet_id) == "cashed_out", 30, what="the cash-out restored")
    b = env.bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=md("k30"), timeout=10).bet
    assert b.payout.minor_units == c
    assert balance(env, "k30") == (10_000 - 1_500 + c, 500)
    assert env.sql("SELECT annulled_by FROM betting.cash_outs WHERE bet_id = %s", bet.bet_id) == [(None,)]
    assert _liability(env, "c30", "home") == outside.potential_payout.minor_units
    assert f"{bet.bet_id}:cash_out_restored:push:c30:cancel:40:1x2" in env.published(f"bets.k30.{bet.bet_id}")
    # full time settles the bet outside the window; the cashed-out one keeps its cash-out
    env.send(final("c30", 90, 1, 0))
    wait_for(lambda: _status(env, outside.bet_id) == "settled", 30, what="full time")
    assert _status(env, bet.bet_id) == "cashed_out"


def test_a_player_who_spent_the_cash_out_owes_it_when_a_cancel_annuls_it(env: Env) -> None:
    env.send(fixture("c31"))
    priced(env, "c31")
    deposit(env, "k31", 1_000, "k31-d")
    odds, _ = env.price("c31", ONE, "draw")
    start_at = _window()
    bet = place(env, "k31", "k31-b", [selection("c31", ONE, "draw", odds)], 1_000)
    end_at = _window()
    got = offer_of(env, "k31", bet.bet_id)
    cash_out(env, "k31", "k31-co", bet.bet_id, got.amount)
    c = got.amount.minor_units
    env.wallet.Withdraw(ws.WithdrawRequest(request_id="k31-w", amount=eur(c)), metadata=md("k31"), timeout=10)
    assert balance(env, "k31") == (0, 0)

    env.send(_bet_cancel("c31", 40, start_at, end_at))
    wait_for(lambda: _status(env, bet.bet_id) == "settled", 30, what="the cashed-out bet voided")
    # the cash-out could not come back from a balance of 0: it is owed; the void paid the stake
    assert balance(env, "k31") == (1_000, 0)
    assert _receivable(env, "k31") == -c


def test_a_trader_void_reopens_a_cashed_out_accumulator_on_its_other_legs(env: Env) -> None:
    """An accumulator cashed out, one of whose legs a trader voids: it rides again on its other legs,
    with its stake held; a leg whose match ended while it was cashed out is settled by that result,
    and the bet may be cashed out again."""
    from livebet.settlement.v1 import settlement_service_pb2 as ss
    from livebet.settlement.v1 import settlement_service_pb2_grpc

    from mesh import access

    env.send(fixture("c32"), fixture("c33"), fixture("c34"))
    for m in ("c32", "c33", "c34"):
        priced(env, m)
    deposit(env, "k32", 10_000, "k32-d")
    o1, _ = env.price("c32", ONE, "home")
    o2, _ = env.price("c33", ONE, "away")
    o3, _ = env.price("c34", ONE, "draw")
    legs = [selection("c32", ONE, "home", o1), selection("c33", ONE, "away", o2), selection("c34", ONE, "draw", o3)]
    acca = place(env, "k32", "k32-acca", legs, 1_000)
    got = offer_of(env, "k32", acca.bet_id)
    cash_out(env, "k32", "k32-co", acca.bet_id, got.amount)
    c = got.amount.minor_units
    env.send(final("c33", 90, 0, 2))  # its second leg won while it was cashed out: nothing to settle
    wait_for(lambda: env.sql("SELECT ended FROM settlement.matches WHERE match_id = 'c33'") == [(True,)], 30)
    assert env.sql(
        "SELECT count(*) FROM betting.selections WHERE bet_id = %s AND settled_version IS NOT NULL", acca.bet_id
    ) == [(0,)]

    admin = settlement_service_pb2_grpc.SettlementServiceStub(
        access.channel(env.procs[3].spec.health_target, "trader-9", [access.ADMIN])
    )
    req = ss.VoidMarketRequest(
        request_id="k32-void",
        market={"match_id": "c32", "market_type": ONE, "market_key": ONE},  # type: ignore[arg-type]
        reason="palpable error",
    )
    done = admin.VoidMarket(req, metadata=(("x-livebet-account", "trader-9"),), timeout=30).settlement
    assert done.bets_affected == 0  # nothing it settled: the accumulator is open again
    b = env.bets.GetBet(bs.GetBetRequest(bet_id=acca.bet_id), metadata=md("k32"), timeout=10).bet
    assert b.status == bet_pb2.BET_STATUS_ACCEPTED
    assert balance(env, "k32") == (9_000, 1_000)  # the cash-out back, the stake held again
    legs_now = env.sql(
        "SELECT match_id, result, return_per_unit FROM betting.selections WHERE bet_id = %s ORDER BY leg", acca.bet_id
    )
    assert legs_now == [("c32", 3, Decimal(1)), ("c33", 1, Decimal(o2)), ("c34", 0, None)]  # void, won, open
    assert _liability(env, "c34", "draw") >= acca.potential_payout.minor_units

    # cashed out again, now from the won leg and the open one
    again = offer_of(env, "k32", acca.bet_id)
    now, _ = env.price("c34", ONE, "draw")
    assert again.amount.minor_units == expected(1_000, Decimal(o2) * Decimal(o3) / Decimal(now))
    done_again = cash_out(env, "k32", "k32-co2", acca.bet_id, again.amount)
    assert done_again.status == bet_pb2.BET_STATUS_CASHED_OUT
    assert balance(env, "k32") == (9_000 + again.amount.minor_units, 0)
    assert env.sql(
        "SELECT request_id, annulled_by IS NOT NULL FROM betting.cash_outs WHERE bet_id = %s ORDER BY created_at",
        acca.bet_id,
    ) == [("k32-co", True), ("k32-co2", False)]
    assert c > 0


def set_auto(env: Env, account: str, bet_id: str, amount: common_pb2.Money | None) -> bet_pb2.Bet:
    req = bs.SetAutoCashOutRequest(bet_id=bet_id)
    if amount is not None:
        req.amount.CopyFrom(amount)
    return env.bets.SetAutoCashOut(req, metadata=md(account), timeout=10).bet


def test_an_automatic_cash_out_is_taken_once_the_offer_reaches_it(env: Env) -> None:
    env.send(fixture("c40"))
    priced(env, "c40")
    deposit(env, "k40", 10_000, "k40-d")
    odds, _ = env.price("c40", ONE, "home")
    bet = place(env, "k40", "k40-b", [selection("c40", ONE, "home", odds)], 1_000)
    other = place(env, "k40", "k40-b2", [selection("c40", ONE, "home", odds)], 500)
    assert offer_of(env, "k40", bet.bet_id).amount.minor_units == expected(1_000, Decimal(1))  # 9.50

    # bad rules: the field that is wrong, and nothing stored
    payout = bet.potential_payout.minor_units
    for amount, field, text in [
        (eur(payout + 1), "amount", "above the potential payout"),
        (eur(0), "amount", "positive"),
        (common_pb2.Money(currency_code="USD", minor_units=960), "amount.currency_code", "EUR"),
        (common_pb2.Money(currency_code="EUR", decimal="9.601"), "amount", "more decimals"),
    ]:
        code, msg, details = _refused(lambda a=amount: set_auto(env, "k40", bet.bet_id, a))  # type: ignore[misc]
        fields = {v.field: v.description for d in details for v in getattr(d, "field_violations", [])}
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in fields, (amount, code, msg, fields)
        assert text in fields[field] or text in msg, (amount, fields)
    code, _, _ = _refused(lambda: set_auto(env, "k40-other", bet.bet_id, eur(960)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _, _ = _refused(lambda: set_auto(env, "k40", "not-a-bet", eur(960)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert env.sql("SELECT count(*) FROM betting.bets WHERE auto_cash_out IS NOT NULL AND account_id = 'k40'") == [(0,)]

    # above the offer: stored, shown on the bet, and not taken while the offer stays below it
    got = set_auto(env, "k40", bet.bet_id, eur(960))
    assert got.auto_cash_out.minor_units == 960 and got.status == bet_pb2.BET_STATUS_ACCEPTED
    assert set_auto(env, "k40", bet.bet_id, eur(960)) == got  # the same again: nothing changes
    set_auto(env, "k40", other.bet_id, eur(900))
    assert not set_auto(env, "k40", other.bet_id, None).HasField("auto_cash_out")  # removed
    time.sleep(1.5)
    assert _status(env, bet.bet_id) == "accepted" and _status(env, other.bet_id) == "accepted"

    # the trader's margin moves the home price down: the offer rises past 9.60 and the service
    # cashes the bet out by itself, at the offer then
    env.trader.SetMargin(ts.SetMarginRequest(request_id="c40-m", match_id="c40", margin="0.15"), timeout=10)
    wait_for(lambda: env.price("c40", ONE, "home")[0] != odds, 10, what="c40 repriced")
    now, _ = env.price("c40", ONE, "home")
    want = expected(1_000, Decimal(odds) / Decimal(now))
    assert want >= 960
    wait_for(lambda: _status(env, bet.bet_id) == "cashed_out", 20, what="the automatic cash-out")
    done = env.bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=md("k40"), timeout=10).bet
    assert done.payout.minor_units == want and not done.HasField("auto_cash_out")  # the rule is gone
    assert env.sql("SELECT request_id, amount FROM betting.cash_outs WHERE bet_id = %s", bet.bet_id) == [
        (f"auto:{bet.bet_id}:960", want)
    ]
    assert balance(env, "k40") == (10_000 - 1_500 + want, 500)
    assert _status(env, other.bet_id) == "accepted"  # its rule was removed
    events = env.published(f"bets.k40.{bet.bet_id}")
    assert any(":auto_cash_out:" in e for e in events) and f"{bet.bet_id}:cashed_out:0" in events
    port = env.betting.spec.env["LIVEBET_METRICS_PORT"]
    assert metric(port, 'livebet_bets_auto_cash_outs_total{outcome="cashed_out"}') >= 1
    # a closed bet takes no rule
    code, _, details = _refused(lambda: set_auto(env, "k40", bet.bet_id, eur(960)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details[0].reason == "REJECT_REASON_CASH_OUT_UNAVAILABLE"  # type: ignore[attr-defined]


def test_an_automatic_cash_out_in_play_waits_the_delay_and_outlives_a_restart(env: Env) -> None:
    bet = accepted_in_play(env, "c41", "k41", 10)
    now = offer_of(env, "k41", bet.bet_id).amount.minor_units
    set_auto(env, "k41", bet.bet_id, eur(now + 5))
    env.betting.signal(signal.SIGKILL)  # the rule is in PostgreSQL: a new process takes it up
    assert env.betting.popen is not None
    env.betting.popen.wait(10)
    env.betting.start()
    assert _status(env, bet.bet_id) == "accepted"

    (t0,) = env.sql("SELECT clock_timestamp()")[0]
    env.trader.SetMargin(ts.SetMarginRequest(request_id="c41-m", match_id="c41", margin="0.15"), timeout=10)
    wait_for(lambda: _status(env, bet.bet_id) == "cashed_out", 30, what="the automatic cash-out")
    ((amount, created),) = env.sql("SELECT amount, created_at FROM betting.cash_outs WHERE bet_id = %s", bet.bet_id)
    assert amount >= now + 5
    assert (created - t0).total_seconds() >= IN_PLAY_DELAY - 0.05  # it waited the in-play delay
    assert balance(env, "k41") == (9_000 + amount, 0)


def test_two_betting_replicas_watching_one_rule_cash_the_bet_out_once(env: Env, servers_root: Path) -> None:
    from tests.helpers import Proc, service_spec

    own = {k: v for k, v in env.betting.spec.env.items() if k.startswith("LIVEBET_")}
    for k in ("LIVEBET_GRPC_PORT", "LIVEBET_METRICS_PORT"):
        own.pop(k)
    second_log = servers_root / "cash-betting-2.log"
    second = Proc(service_spec("betting", "betting.server", own), second_log).start()
    try:
        # the second replica has read the rules (none for k42): it learns of the new one from the
        # first's hint, not from its next read of all of them, 30 s on
        wait_for(lambda: "auto cash-out: watching the rules" in second_log.read_text(), 20, what="replica 2 watching")
        env.send(fixture("c42"))
        priced(env, "c42")
        deposit(env, "k42", 10_000, "k42-d")
        odds, _ = env.price("c42", ONE, "home")
        bet = place(env, "k42", "k42-b", [selection("c42", ONE, "home", odds)], 1_000)
        set_auto(env, "k42", bet.bet_id, eur(960))
        ports = [p.spec.env["LIVEBET_METRICS_PORT"] for p in (env.betting, second)]
        rules = "livebet_bets_auto_cash_out_rules"
        wait_for(lambda: all(metric(p, rules) >= 1 for p in ports), 10, what="both replicas watch the rule")
        done = 'livebet_bets_auto_cash_outs_total{outcome="cashed_out"}'
        before = sum(metric(p, done) for p in ports)  # the first replica's earlier tests counted theirs
        env.trader.SetMargin(ts.SetMarginRequest(request_id="c42-m", match_id="c42", margin="0.15"), timeout=10)
        wait_for(lambda: _status(env, bet.bet_id) == "cashed_out", 20, what="the automatic cash-out")
        time.sleep(1.0)  # the other replica's attempt, if it made one, is over
        assert env.sql("SELECT count(*) FROM betting.cash_outs WHERE bet_id = %s", bet.bet_id) == [(1,)]
        assert env.sql(
            "SELECT count(*) FROM betting.transactions WHERE bet_id = %s AND kind = 'cash_out'", bet.bet_id
        ) == [(1,)]
        ((amount,),) = env.sql("SELECT amount FROM betting.cash_outs WHERE bet_id = %s", bet.bet_id)
        assert balance(env, "k42") == (9_000 + amount, 0)
        assert sum(metric(p, done) for p in ports) - before == 1
    finally:
        second.stop()


def test_an_automatic_cash_out_removed_during_its_delay_is_not_taken(env: Env) -> None:
    bet = accepted_in_play(env, "c43", "k43", 10)
    port = env.betting.spec.env["LIVEBET_METRICS_PORT"]
    refused = 'livebet_bets_auto_cash_outs_total{outcome="refused"}'
    before = metric(port, refused)
    set_auto(env, "k43", bet.bet_id, eur(1))  # any offer reaches it: the service starts at once
    time.sleep(IN_PLAY_DELAY / 3)  # it is waiting out the in-play delay
    set_auto(env, "k43", bet.bet_id, None)  # the bettor changes their mind
    wait_for(lambda: metric(port, refused) > before, 10, what="the attempt refused at the end of the delay")
    assert _status(env, bet.bet_id) == "accepted"
    assert env.sql("SELECT count(*) FROM betting.cash_outs WHERE bet_id = %s", bet.bet_id) == [(0,)]
    assert balance(env, "k43") == (9_000, 1_000)


def test_a_rule_set_while_pending_is_watched_once_accepted_and_dropped_once_settled(env: Env) -> None:
    """Not at the watcher's next read of every rule (30 s): the decider tells it of the bet it
    accepted, and the bet's own event of its settlement drops it."""
    port = env.betting.spec.env["LIVEBET_METRICS_PORT"]
    rules = "livebet_bets_auto_cash_out_rules"
    env.send(fixture("c45"), state_event("c45", 1, 10))
    priced(env, "c45", 10)
    deposit(env, "k45", 10_000, "k45-d")
    odds, _ = env.price("c45", "btts", "no")
    watched = metric(port, rules)
    bet = place(env, "k45", "k45-b", [selection("c45", "btts", "no", odds)], 1_000, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    top = bet.potential_payout.minor_units
    got = set_auto(env, "k45", bet.bet_id, eur(top))  # out of reach: watched, never taken
    assert got.status == bet_pb2.BET_STATUS_PENDING and got.auto_cash_out.minor_units == top
    assert metric(port, rules) == watched  # a pending bet is not priced
    wait_for(lambda: _status(env, bet.bet_id) == "accepted", 20, what="accepted after the delay")
    wait_for(lambda: metric(port, rules) == watched + 1, 10, what="the accepted bet's rule watched")
    env.send(final("c45", 90, 0, 0))
    wait_for(lambda: _status(env, bet.bet_id) == "settled", 30, what="full time")
    wait_for(lambda: metric(port, rules) == watched, 10, what="the settled bet's rule dropped")
    assert env.sql("SELECT auto_cash_out FROM betting.bets WHERE bet_id = %s", bet.bet_id) == [(None,)]


def test_a_rule_goes_when_its_bet_is_settled(env: Env) -> None:
    env.send(fixture("c44"))
    priced(env, "c44")
    deposit(env, "k44", 10_000, "k44-d")
    odds, _ = env.price("c44", ONE, "away")
    bet = place(env, "k44", "k44-b", [selection("c44", ONE, "away", odds)], 1_000)
    top = bet.potential_payout.minor_units
    assert set_auto(env, "k44", bet.bet_id, eur(top)).auto_cash_out.minor_units == top  # out of reach
    env.send(final("c44", 90, 2, 0))
    wait_for(lambda: _status(env, bet.bet_id) == "settled", 30, what="full time")
    got = env.bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=md("k44"), timeout=10).bet
    assert got.result == bet_pb2.BET_RESULT_LOST and not got.HasField("auto_cash_out")
    assert env.sql("SELECT auto_cash_out FROM betting.bets WHERE bet_id = %s", bet.bet_id) == [(None,)]


def part_offer(env: Env, account: str, bet_id: str, part: int) -> int:
    req = bs.GetCashOutOfferRequest(bet_id=bet_id, stake=eur(part))
    return env.bets.GetCashOutOffer(req, metadata=md(account), timeout=10).amount.minor_units


def cash_out_part(env: Env, account: str, request_id: str, bet_id: str, part: int, amount: int) -> bet_pb2.Bet:
    req = bs.CashOutRequest(request_id=request_id, bet_id=bet_id, amount=eur(amount), stake=eur(part))
    return env.bets.CashOut(req, metadata=md(account), timeout=30).bet


def _returned(env: Env, account: str) -> int:
    """What the player's bets returned, as the loss limits count it (betting.bet_returns)."""
    rows = env.sql("SELECT coalesce(sum(returned), 0) FROM betting.bet_returns WHERE account_id = %s", account)
    return int(rows[0][0])


def test_a_part_of_a_bet_is_cashed_out_and_the_rest_rides_on_to_its_settlement(env: Env) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp
    from livebet.settlement.v1 import report_service_pb2 as rs
    from livebet.settlement.v1 import report_service_pb2_grpc

    from betting.domain.rules import payout

    env.send(fixture("c60"))
    priced(env, "c60")
    deposit(env, "k60", 10_000, "k60-d")
    since = Timestamp()
    since.GetCurrentTime()
    odds, _ = env.price("c60", ONE, "home")
    bet = place(env, "k60", "k60-b", [selection("c60", ONE, "home", odds)], 2_000)
    pp = payout(2_000, Decimal(odds))
    assert bet.potential_payout.minor_units == pp
    env.bets.SetAutoCashOut(
        bs.SetAutoCashOutRequest(bet_id=bet.bet_id, amount=eur(pp - 1)), metadata=md("k60"), timeout=10
    )

    now, _ = env.price("c60", ONE, "home")
    p = part_offer(env, "k60", bet.bet_id, 500)
    assert p == expected(500, Decimal(odds) / Decimal(now))  # the offer for the part
    assert p < offer_of(env, "k60", bet.bet_id).amount.minor_units
    done = cash_out_part(env, "k60", "k60-p1", bet.bet_id, 500, p)
    assert done.status == bet_pb2.BET_STATUS_ACCEPTED and done.payout.minor_units == 0
    assert (done.stake.minor_units, done.cashed_out_stake.minor_units, done.cashed_out_amount.minor_units) == (
        1_500,
        500,
        p,
    )
    left = payout(1_500, Decimal(odds))
    assert done.potential_payout.minor_units == left and not done.HasField("auto_cash_out")  # the rule was for 20.00
    assert balance(env, "k60") == (8_000 + p, 1_500)
    assert _liability(env, "c60", "home") == left
    moves = env.sql(
        "SELECT account_id, amount FROM betting.postings p JOIN betting.transactions t USING (transaction_id)"
        " WHERE t.bet_id = %s AND t.kind = 'cash_out' ORDER BY account_id",
        bet.bet_id,
    )
    (shard,) = env.sql("SELECT abs(hashtext(%s)) %% 16", bet.bet_id)[0]
    assert moves == [("held:k60:EUR", -500), (f"house:EUR:{shard}", 500 - p), ("player:k60:EUR", p)]
    assert env.sql("SELECT stake, amount, released, partial FROM betting.cash_outs WHERE bet_id = %s", bet.bet_id) == [
        (500, p, pp - left, True)
    ]
    assert f"{bet.bet_id}:cashed_out_part:0" in env.published(f"bets.k60.{bet.bet_id}")
    # the same request again: its first answer, nothing moves
    before = env.counts()
    assert cash_out_part(env, "k60", "k60-p1", bet.bet_id, 500, p).cashed_out_amount.minor_units == p
    assert env.counts() == before

    # what the player staked and got back counts the part: the activity, the loss limits, the reports
    activity = env.wallet.GetActivity(ws.GetActivityRequest(since=since), metadata=md("k60"), timeout=10)
    assert (activity.staked.minor_units, activity.returned.minor_units, activity.open_stakes.minor_units) == (
        2_000,
        p,
        1_500,
    )
    assert _returned(env, "k60") == p
    reports = report_service_pb2_grpc.ReportServiceStub(admin_channel(env.procs[3].spec.health_target))
    by_match = reports.GetTurnoverReport(rs.GetTurnoverReportRequest(grouping=rs.REPORT_GROUPING_MATCH), timeout=10)
    (row,) = [r for r in by_match.rows if r.key == "c60"]
    assert (row.bets, row.settled_bets, row.turnover.minor_units) == (1, 0, 2_000)
    assert (row.payouts.minor_units, row.ggr.minor_units) == (p, 500 - p)
    house = "SELECT coalesce(sum(balance), 0) FROM betting.ledger_accounts WHERE kind = 'house'"
    assert by_match.total.ggr.minor_units == env.sql(house)[0][0]  # the part's GGR is the house's already

    # bad parts: the field named, nothing written
    before = env.counts()
    for part, why in (
        (eur(1_495), "would leave 0.05 EUR on the bet, below the minimum stake 0.10 EUR"),
        (eur(5), "below the minimum stake"),
        (eur(2_000), "more than the bet's stake 15.00 EUR"),
        (eur(0), "must be positive"),
        (common_pb2.Money(currency_code="USD", minor_units=500), "the bet is in EUR"),
        (common_pb2.Money(currency_code="EUR", decimal="1.234"), "decimal"),
    ):
        for call in (
            lambda part=part: env.bets.CashOut(
                bs.CashOutRequest(request_id="k60-bad", bet_id=bet.bet_id, amount=eur(1), stake=part),
                metadata=md("k60"),
                timeout=10,
            ),
            lambda part=part: env.bets.GetCashOutOffer(
                bs.GetCashOutOfferRequest(bet_id=bet.bet_id, stake=part), metadata=md("k60"), timeout=10
            ),
        ):
            code, msg, details = _refused(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (part, msg)
            assert details[0].field_violations[0].field == "stake" and why in msg, msg  # type: ignore[attr-defined]
    assert env.counts() == before

    # full time: the rest is settled at the bet's odds
    env.send(final("c60", 90, 2, 0))
    wait_for(lambda: _status(env, bet.bet_id) == "settled", 30, what="full time settled")
    b = env.bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=md("k60"), timeout=10).bet
    assert b.result == bet_pb2.BET_RESULT_WON and b.payout.minor_units == left
    assert b.cashed_out_amount.minor_units == p and b.stake.minor_units == 1_500
    assert balance(env, "k60") == (8_000 + p + left, 0)
    assert _returned(env, "k60") == p + left
    by_match = reports.GetTurnoverReport(rs.GetTurnoverReportRequest(grouping=rs.REPORT_GROUPING_MATCH), timeout=10)
    (row,) = [r for r in by_match.rows if r.key == "c60"]
    assert (row.settled_bets, row.payouts.minor_units, row.ggr.minor_units) == (1, p + left, 2_000 - p - left)
    assert by_match.total.ggr.minor_units == env.sql(house)[0][0]


def test_a_bet_cancel_annuls_every_part_cashed_out_and_its_rollback_restores_them(env: Env) -> None:
    env.send(fixture("c61"))
    priced(env, "c61")
    deposit(env, "k61", 10_000, "k61-d")
    odds, _ = env.price("c61", ONE, "home")
    start_at = _window()
    bet = place(env, "k61", "k61-b", [selection("c61", ONE, "home", odds)], 2_000)
    end_at = _window()
    p = part_offer(env, "k61", bet.bet_id, 800)
    part = cash_out_part(env, "k61", "k61-p", bet.bet_id, 800, p)
    c = offer_of(env, "k61", bet.bet_id).amount.minor_units
    whole = cash_out(env, "k61", "k61-w", bet.bet_id, eur(c))
    assert whole.status == bet_pb2.BET_STATUS_CASHED_OUT and whole.payout.minor_units == c
    assert whole.stake.minor_units == 1_200 and whole.cashed_out_amount.minor_units == p
    assert balance(env, "k61") == (8_000 + p + c, 0) and _returned(env, "k61") == p + c
    assert f"{bet.bet_id}:cashed_out:1" in env.published(f"bets.k61.{bet.bet_id}")  # the bet's second cash-out

    env.send(_bet_cancel("c61", 40, start_at, end_at))
    wait_for(lambda: _status(env, bet.bet_id) == "settled", 30, what="the bet voided")
    b = env.bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=md("k61"), timeout=10).bet
    assert (b.result, b.stake.minor_units, b.payout.minor_units) == (bet_pb2.BET_RESULT_VOID, 2_000, 2_000)
    assert not b.HasField("cashed_out_stake") and b.potential_payout == bet.potential_payout
    assert balance(env, "k61") == (10_000, 0) and _returned(env, "k61") == 2_000  # the whole stake back, no more
    assert env.sql("SELECT count(*) FROM betting.cash_outs WHERE bet_id = %s AND annulled_by IS NULL", bet.bet_id) == [
        (0,)
    ]
    assert _liability(env, "c61", "home") == 0

    env.send(_rollback_cancel("c61", 60))
    wait_for(lambda: _status(env, bet.bet_id) == "cashed_out", 30, what="the cash-outs restored")
    b = env.bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=md("k61"), timeout=10).bet
    assert (b.stake.minor_units, b.potential_payout, b.payout.minor_units) == (1_200, part.potential_payout, c)
    assert (b.cashed_out_stake.minor_units, b.cashed_out_amount.minor_units) == (800, p)
    assert balance(env, "k61") == (8_000 + p + c, 0) and _returned(env, "k61") == p + c
    assert _liability(env, "c61", "home") == 0


def test_a_cash_out_priced_on_a_stake_a_part_has_since_changed_writes_nothing(env: Env) -> None:
    """betting.cash_out answers 'changed' when the bet's stake is not the one the offer was priced
    on: two partial cash-outs priced at once would otherwise both be paid on the whole stake."""
    env.send(fixture("c62"))
    priced(env, "c62")
    deposit(env, "k62", 10_000, "k62-d")
    odds, _ = env.price("c62", ONE, "home")
    bet = place(env, "k62", "k62-b", [selection("c62", ONE, "home", odds)], 2_000)
    cash_out_part(env, "k62", "k62-p", bet.bet_id, 1_000, 1)
    before = env.counts()
    pp = bet.potential_payout.minor_units
    for part, left in ((500, pp // 2), (None, None)):  # priced on the whole 20.00: a part, or the whole bet
        (row,) = env.sql(
            "SELECT outcome FROM betting.cash_out(%s, 'k62', %s, '\\x00', 100, '{}'::smallint[], 2000, %s, %s)",
            bet.bet_id,
            f"k62-stale-{part}",
            part,
            left,
        )
        assert row == ("changed",)
    assert env.counts() == before and balance(env, "k62")[1] == 1_000


def test_a_reopened_accumulator_leg_is_settled_by_the_providers_settlement_of_its_market(env: Env) -> None:
    """An accumulator cashed out; the provider settles one leg's market by a bet_settlement (no
    score for it). A bet cancel on the other leg annuls the cash-out: the leg reopened is settled by
    the provider's settlement, kept for it, and the bet with it (it stayed open before)."""
    from livebet.feed.v1 import event_pb2 as ev

    from tests.component.test_settlement import _provider_settlement

    env.send(fixture("c63"), fixture("c64"))
    priced(env, "c63")
    priced(env, "c64")
    deposit(env, "k63", 10_000, "k63-d")
    o1, _ = env.price("c63", ONE, "home")
    o2, _ = env.price("c64", "btts", "yes")
    start_at = _window()
    acca = place(env, "k63", "k63-b", [selection("c63", ONE, "home", o1), selection("c64", "btts", "yes", o2)], 1_000)
    end_at = _window()
    cash_out(env, "k63", "k63-co", acca.bet_id, offer_of(env, "k63", acca.bet_id).amount)
    win, lose = ev.OUTCOME_RESULT_WIN, ev.OUTCOME_RESULT_LOSE
    env.send(_provider_settlement("c64", 10, ev.SETTLEMENT_CERTAINTY_CONFIRMED, [("yes", win, ""), ("no", lose, "")]))
    kept = "SELECT count(*) FROM settlement.provider_outcomes WHERE match_id = 'c64'"
    wait_for(lambda: env.sql(kept) == [(1,)], 30, what="the provider's settlement kept")

    env.send(_bet_cancel("c63", 40, start_at, end_at))
    wait_for(lambda: _status(env, acca.bet_id) == "settled", 30, what="the reopened accumulator settled")
    b = env.bets.GetBet(bs.GetBetRequest(bet_id=acca.bet_id), metadata=md("k63"), timeout=10).bet
    paid = int(Decimal(1_000) * Decimal(o2))  # the void leg returns 1, the won one its odds
    assert (b.result, b.payout.minor_units) == (bet_pb2.BET_RESULT_WON, paid)
    assert balance(env, "k63") == (9_000 + paid, 0)
