"""Player protection on the real betting service, PostgreSQL, NATS, Valkey, feed, pricing and
settlement: a player's own stake, deposit and loss limits (tighter at once, looser after the
cooling-off, here 2 s), breaks from betting, the log of changes, and bad input."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livebet.betting.v1 import bet_pb2
from livebet.betting.v1 import betting_service_pb2 as bs
from livebet.betting.v1 import wallet_service_pb2 as ws
from livebet.common.v1 import common_pb2

from betting.domain.money import format_minor
from tests.component.betting_env import Env, balance, deposit, eur, md, place, priced, selection, start
from tests.component.test_betting import _MONEY, _refused
from tests.component.test_feed_service import fixture
from tests.component.test_settlement import final
from tests.helpers import admin_channel, wait_for

ONE = "1x2"
COOLING_OFF = 2.0


@pytest.fixture(scope="module")
def env(servers_root: Path) -> Iterator[Env]:
    yield from start(servers_root, "protect", {"LIVEBET_BETTING_LIMIT_COOLING_OFF": str(COOLING_OFF)}, settlement=True)


@pytest.fixture(autouse=True)
def ledger_stays_balanced(env: Env) -> Iterator[None]:
    yield
    env.check_ledger()


def stake_limits(env: Env, account: str, **limits: int) -> ws.SetStakeLimitsResponse:
    req = ws.SetStakeLimitsRequest(**{k: eur(v) for k, v in limits.items()})
    return env.wallet.SetStakeLimits(req, metadata=md(account), timeout=10)


def deposit_limits(env: Env, account: str, **limits: int) -> ws.SetDepositLimitsResponse:
    req = ws.SetDepositLimitsRequest(limits=ws.DepositLimits(**{k: eur(v) for k, v in limits.items()}))
    return env.wallet.SetDepositLimits(req, metadata=md(account), timeout=10)


def loss_limits(env: Env, account: str, **limits: int) -> ws.SetLossLimitsResponse:
    req = ws.SetLossLimitsRequest(limits=ws.LossLimits(**{k: eur(v) for k, v in limits.items()}))
    return env.wallet.SetLossLimits(req, metadata=md(account), timeout=10)


def limits_of(env: Env, account: str) -> ws.GetLimitsResponse:
    return env.wallet.GetLimits(ws.GetLimitsRequest(currency_code="EUR"), metadata=md(account), timeout=10)


def take_break(env: Env, account: str, days: float) -> ws.TakeBreakResponse:
    req = ws.TakeBreakRequest(duration=Duration(seconds=int(days * 86400)))
    return env.wallet.TakeBreak(req, metadata=md(account), timeout=10)


def reason(details: list[object]) -> str:
    return str(details[0].reason)  # type: ignore[attr-defined]


def bets_of(env: Env, account: str) -> int:
    with psycopg.connect(env.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM betting.bets WHERE account_id = %s", (account,)).fetchone()
    return int(row[0]) if row else -1


def after_cooling_off(pending_from: datetime) -> None:
    time.sleep(max(0.0, (pending_from - datetime.now(UTC)).total_seconds()) + 0.2)


def test_a_stake_limit_tightens_at_once_and_loosens_after_the_cooling_off(env: Env) -> None:
    env.send(fixture("rp1"))
    priced(env, "rp1")
    deposit(env, "rg1", 10_000, "rg1-d")
    odds, _ = env.price("rp1", ONE, "home")
    bet = [selection("rp1", ONE, "home", odds)]

    r = stake_limits(env, "rg1", max_stake=500)
    assert r.max_stake.decimal == "5.00" and not r.HasField("pending") and not r.HasField("pending_from")
    _, msg, details = _refused(lambda: place(env, "rg1", "rg1-a", bet, 600))
    assert reason(details) == "REJECT_REASON_ACCOUNT_LIMIT" and "5.00" in msg

    asked = datetime.now(UTC)
    r = stake_limits(env, "rg1", max_stake=2_000)  # a raise: 5.00 stays until the cooling-off is over
    assert r.max_stake.decimal == "5.00"
    assert r.pending.max_stake.decimal == "20.00" and not r.pending.HasField("max_daily_stake")
    pending_from = r.pending_from.ToDatetime(UTC)
    assert timedelta(seconds=1) < pending_from - asked < timedelta(seconds=COOLING_OFF + 1)
    _, _, details = _refused(lambda: place(env, "rg1", "rg1-b", bet, 600))
    assert reason(details) == "REJECT_REASON_ACCOUNT_LIMIT"
    got = limits_of(env, "rg1")
    assert got.stake.max_stake.decimal == "5.00" and got.stake_pending.max_stake.decimal == "20.00"
    assert got.stake_pending_from == r.pending_from

    after_cooling_off(pending_from)
    assert place(env, "rg1", "rg1-c", bet, 600).status == bet_pb2.BET_STATUS_ACCEPTED
    got = limits_of(env, "rg1")
    assert got.stake.max_stake.decimal == "20.00" and not got.HasField("stake_pending")

    # removing the limit loosens it too; a lower one asked for meanwhile replaces the removal
    r = stake_limits(env, "rg1", max_daily_stake=500_000)
    assert r.max_stake.decimal == "20.00" and r.max_daily_stake.decimal == "5000.00"  # the daily one is new: now
    assert r.HasField("pending") and not r.pending.HasField("max_stake")
    r = stake_limits(env, "rg1", max_stake=1_000, max_daily_stake=500_000)
    assert r.max_stake.decimal == "10.00" and not r.HasField("pending")
    _, _, details = _refused(lambda: place(env, "rg1", "rg1-d", bet, 1_500))
    assert reason(details) == "REJECT_REASON_ACCOUNT_LIMIT"
    time.sleep(COOLING_OFF + 0.2)  # nothing was left pending: 10.00 stays
    _, _, details = _refused(lambda: place(env, "rg1", "rg1-e", bet, 1_500))
    assert reason(details) == "REJECT_REASON_ACCOUNT_LIMIT"


def test_deposits_over_a_period_stop_at_the_players_limit(env: Env) -> None:
    r = deposit_limits(env, "rg2", max_daily=5_000, max_weekly=8_000)
    assert r.limits.max_daily.decimal == "50.00" and r.limits.max_weekly.decimal == "80.00"
    assert not r.limits.HasField("max_monthly") and not r.HasField("pending")
    first = deposit(env, "rg2", 3_000, "rg2-1")
    _, msg, details = _refused(lambda: deposit(env, "rg2", 2_500, "rg2-2"))
    assert reason(details) == "REJECT_REASON_DEPOSIT_LIMIT"
    assert "24 hours" in msg and "50.00 EUR" in msg and "up to 20.00 EUR" in msg
    assert balance(env, "rg2") == (3_000, 0)  # nothing written
    deposit(env, "rg2", 2_000, "rg2-3")
    # the same request again gets its first answer, not a refusal for going over the limit
    assert deposit(env, "rg2", 3_000, "rg2-1").transaction_id == first.transaction_id
    assert balance(env, "rg2") == (5_000, 0)

    # loosening: the daily limit goes, after the cooling-off; the weekly one still holds then
    r = deposit_limits(env, "rg2", max_weekly=8_000)
    assert r.limits.max_daily.decimal == "50.00" and r.HasField("pending")
    assert not r.pending.HasField("max_daily") and r.pending.max_weekly.decimal == "80.00"
    _, _, details = _refused(lambda: deposit(env, "rg2", 100, "rg2-4"))
    assert reason(details) == "REJECT_REASON_DEPOSIT_LIMIT"
    after_cooling_off(r.pending_from.ToDatetime(UTC))
    deposit(env, "rg2", 3_000, "rg2-5")
    _, msg, _ = _refused(lambda: deposit(env, "rg2", 1, "rg2-6"))
    assert "7 days" in msg
    env.wallet.Withdraw(ws.WithdrawRequest(request_id="rg2-w", amount=eur(8_000)), metadata=md("rg2"), timeout=10)
    assert balance(env, "rg2") == (0, 0)  # withdrawals are not limited

    # every deposit limit removed: only a currency, and the weekly limit holds until the cooling-off
    req = ws.SetDepositLimitsRequest(currency_code="EUR")
    r = env.wallet.SetDepositLimits(req, metadata=md("rg2"), timeout=10)
    assert r.limits.max_weekly.decimal == "80.00" and r.HasField("pending")
    assert not any(r.pending.HasField(f) for f in ("max_daily", "max_weekly", "max_monthly"))
    _, _, details = _refused(lambda: deposit(env, "rg2", 1, "rg2-7"))
    assert reason(details) == "REJECT_REASON_DEPOSIT_LIMIT"
    after_cooling_off(r.pending_from.ToDatetime(UTC))
    deposit(env, "rg2", 100_000, "rg2-8")
    got = limits_of(env, "rg2")
    assert not got.deposit.HasField("max_weekly") and not got.HasField("deposit_pending")


def test_deposits_at_the_same_time_never_pass_the_limit_together(env: Env) -> None:
    deposit_limits(env, "rg3", max_daily=5_000)
    results: list[str] = []
    ready = threading.Barrier(20)

    def one(i: int) -> None:
        ready.wait()
        try:
            deposit(env, "rg3", 500, f"rg3-{i}")
            results.append("ok")
        except grpc.RpcError as err:
            results.append(err.code().name)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["FAILED_PRECONDITION"] * 10 + ["ok"] * 10
    assert balance(env, "rg3") == (5_000, 0)


def test_a_break_stops_bets_and_deposits_until_it_ends_and_cannot_be_shortened(env: Env) -> None:
    env.send(fixture("rp4"))
    priced(env, "rp4")
    deposit(env, "rg4", 10_000, "rg4-d")
    odds, _ = env.price("rp4", ONE, "home")
    bet = [selection("rp4", ONE, "home", odds)]
    placed = place(env, "rg4", "rg4-a", bet, 500)  # before the break: it stands
    assert not limits_of(env, "rg4").HasField("break_until")

    asked = datetime.now(UTC)
    until = take_break(env, "rg4", 7).until.ToDatetime(UTC)
    assert timedelta(days=7) - timedelta(seconds=5) < until - asked < timedelta(days=7, seconds=5)
    assert limits_of(env, "rg4").break_until.ToDatetime(UTC) == until
    _, msg, details = _refused(lambda: place(env, "rg4", "rg4-b", bet, 500))
    assert reason(details) == "REJECT_REASON_ACCOUNT_ON_BREAK" and "break" in msg and until.date().isoformat() in msg
    _, _, details = _refused(lambda: deposit(env, "rg4", 1_000, "rg4-d2"))
    assert reason(details) == "REJECT_REASON_ACCOUNT_ON_BREAK"
    assert bets_of(env, "rg4") == 1 and balance(env, "rg4") == (9_500, 500)
    # the same bet request again is its first answer, not a refusal
    assert place(env, "rg4", "rg4-a", bet, 500).bet_id == placed.bet_id

    assert take_break(env, "rg4", 1).until.ToDatetime(UTC) == until  # a shorter one changes nothing
    longer = take_break(env, "rg4", 30).until.ToDatetime(UTC)
    assert longer > until + timedelta(days=22)
    env.wallet.Withdraw(ws.WithdrawRequest(request_id="rg4-w", amount=eur(1_000)), metadata=md("rg4"), timeout=10)

    with psycopg.connect(env.dsn) as conn:  # the month passes
        conn.execute("UPDATE betting.breaks SET until = now() - interval '1 second' WHERE account_id = 'rg4'")
        logged = conn.execute(
            "SELECT action, detail->>'until' FROM betting.protection_log WHERE account_id = 'rg4' ORDER BY id"
        ).fetchall()
    with psycopg.connect(env.dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM betting.protection_log WHERE account_id = 'rg4'")  # append-only
    assert [a for a, _ in logged] == ["break"] * 3
    assert datetime.fromisoformat(logged[-1][1]) == longer
    assert place(env, "rg4", "rg4-c", bet, 500).status == bet_pb2.BET_STATUS_ACCEPTED
    deposit(env, "rg4", 1_000, "rg4-d3")
    assert not limits_of(env, "rg4").HasField("break_until")


def test_a_loss_limit_counts_open_bets_as_lost_and_gives_back_what_the_bets_return(env: Env) -> None:
    env.send(fixture("rp7"), fixture("rp8"))
    priced(env, "rp7")
    priced(env, "rp8")
    deposit(env, "rg7", 100_000, "rg7-d")
    home, _ = env.price("rp7", ONE, "home")
    away, _ = env.price("rp7", ONE, "away")
    later, _ = env.price("rp8", ONE, "home")
    on_rp8 = [selection("rp8", ONE, "home", later)]
    tries = iter(range(100))

    def get(bet_id: str) -> bet_pb2.Bet:
        return env.bets.GetBet(bs.GetBetRequest(bet_id=bet_id), metadata=md("rg7"), timeout=10).bet

    def refused(stake: int) -> str:
        """The message of a bet of ``stake`` on rp8, which must be refused for the loss limit."""
        before = (bets_of(env, "rg7"), balance(env, "rg7"))
        _, msg, details = _refused(lambda: place(env, "rg7", f"rg7-x{next(tries)}", on_rp8, stake))
        assert reason(details) == "REJECT_REASON_LOSS_LIMIT", msg
        assert (bets_of(env, "rg7"), balance(env, "rg7")) == before  # nothing written
        return msg

    r = loss_limits(env, "rg7", max_daily=1_000, max_monthly=50_000)  # new limits hold at once
    assert r.limits.max_daily.decimal == "10.00" and r.limits.max_monthly.decimal == "500.00"
    assert not r.limits.HasField("max_weekly") and not r.HasField("pending")
    got = limits_of(env, "rg7")
    assert got.loss == r.limits and not got.HasField("loss_pending")

    # open bets count as lost: 6.00 + 5.00 would pass 10.00, 6.00 + 4.00 is the limit
    won = place(env, "rg7", "rg7-a", [selection("rp7", ONE, "home", home)], 600)
    msg = refused(500)
    assert "24 hours" in msg and "11.00" in msg and "10.00" in msg and "up to 4.00 EUR" in msg, msg
    lost = place(env, "rg7", "rg7-b", [selection("rp7", ONE, "away", away)], 400)
    assert lost.status == bet_pb2.BET_STATUS_ACCEPTED
    assert "up to 0.00 EUR" in refused(10)  # the smallest stake

    # full time 2-0: the 6.00 on home pays, and what it paid is room again (the day's net loss is
    # 10.00 less the payout)
    env.send(final("rp7", 90, 2, 0))
    wait_for(lambda: get(won.bet_id).status == bet_pb2.BET_STATUS_SETTLED, 30, what="settled 2-0")
    paid = get(won.bet_id).payout.minor_units
    assert paid > 600
    assert f"up to {format_minor(paid, 'EUR')} EUR" in refused(paid + 1)
    third = place(env, "rg7", "rg7-c", on_rp8, paid)
    assert third.status == bet_pb2.BET_STATUS_ACCEPTED

    # the result is corrected to 0-2: the payout is taken back and the 4.00 on away pays instead
    env.send(final("rp7", 91, 0, 2))
    wait_for(lambda: get(lost.bet_id).result == bet_pb2.BET_RESULT_WON, 30, what="resettled 0-2")
    assert get(won.bet_id).result == bet_pb2.BET_RESULT_LOST
    net = 600 + 400 + paid - get(lost.bet_id).payout.minor_units
    room = max(0, 1_000 - net)
    assert f"up to {format_minor(room, 'EUR')} EUR" in refused(max(10, room + 1))

    # a looser limit waits out the cooling-off, as the others do
    r = loss_limits(env, "rg7", max_daily=100_000)
    assert r.limits.max_daily.decimal == "10.00" and r.pending.max_daily.decimal == "1000.00"
    assert not r.pending.HasField("max_monthly")  # the monthly one goes too, after the cooling-off
    after_cooling_off(r.pending_from.ToDatetime(UTC))
    assert place(env, "rg7", "rg7-d", on_rp8, 5_000).status == bet_pb2.BET_STATUS_ACCEPTED
    with psycopg.connect(env.dsn) as conn:
        logged = conn.execute(
            "SELECT count(*) FROM betting.protection_log WHERE account_id = 'rg7' AND action = 'loss_limits'"
        ).fetchone()
    assert logged == (2,)


def test_counting_returns_never_waits_for_another_settlements_lock(env: Env) -> None:
    """Two transactions closing bets of one player placed in one hour (two markets settling at
    once): the second does not wait for the first's row, it writes one of its own (rolled back
    here: only the trigger is under test)."""
    env.send(fixture("rp9"))
    priced(env, "rp9")
    deposit(env, "rg9", 10_000, "rg9-d")
    odds, _ = env.price("rp9", ONE, "home")
    bets = [place(env, "rg9", f"rg9-{i}", [selection("rp9", ONE, "home", odds)], 100).bet_id for i in range(2)]
    count = "SELECT count(*), sum(returned) FROM betting.bet_returns WHERE account_id = 'rg9'"
    close = "UPDATE betting.bets SET status = 'settled', payout = %s WHERE bet_id = %s"
    # the hour's row, as an earlier settlement would have left it
    env.sql(
        """INSERT INTO betting.bet_returns (account_id, currency, hour, returned)
           SELECT account_id, currency, date_trunc('hour', placed_at, 'UTC'), 0 FROM betting.bets WHERE bet_id = %s""",
        bets[0],
    )
    hours = env.sql("SELECT count(DISTINCT date_trunc('hour', placed_at)) FROM betting.bets WHERE account_id = 'rg9'")
    if hours != [(1,)]:  # placed either side of an hour's end, a few milliseconds apart
        env.sql("DELETE FROM betting.bet_returns WHERE account_id = 'rg9'")
        pytest.skip("the two bets were placed in different hours")
    try:
        with psycopg.connect(env.dsn) as first, psycopg.connect(env.dsn) as second:
            first.execute(close, (150, bets[0]))
            assert first.execute(count).fetchone() == (1, 150)  # added to the hour's row, which it now holds
            second.execute("SET lock_timeout = '2s'")  # waiting would fail with LockNotAvailable
            second.execute(close, (170, bets[1]))
            assert second.execute(count).fetchone() == (2, 170)  # a row of its own
            first.rollback()
            second.rollback()
    finally:
        env.sql("DELETE FROM betting.bet_returns WHERE account_id = 'rg9'")


def test_a_reality_check_is_kept_with_the_account_and_activity_shows_the_bets_since(env: Env) -> None:
    env.send(fixture("rp10"))
    priced(env, "rp10")
    deposit(env, "rg10", 10_000, "rg10-d")
    home, _ = env.price("rp10", ONE, "home")
    away, _ = env.price("rp10", ONE, "away")
    w = env.wallet

    def activity(since: datetime) -> ws.GetActivityResponse:
        req = ws.GetActivityRequest(since=Timestamp(seconds=int(since.timestamp()), nanos=since.microsecond * 1000))
        return w.GetActivity(req, metadata=md("rg10"), timeout=10)

    assert not limits_of(env, "rg10").HasField("reality_check_interval")  # never, until asked
    r = w.SetRealityCheck(ws.SetRealityCheckRequest(interval=Duration(seconds=1800)), metadata=md("rg10"), timeout=10)
    assert r.interval.seconds == 1800 and limits_of(env, "rg10").reality_check_interval.seconds == 1800

    earlier = place(env, "rg10", "rg10-a", [selection("rp10", ONE, "home", home)], 1_000)  # before the session
    time.sleep(0.05)
    since = datetime.now(UTC)
    won = place(env, "rg10", "rg10-b", [selection("rp10", ONE, "home", home)], 500)
    place(env, "rg10", "rg10-c", [selection("rp10", ONE, "away", away)], 300)
    a = activity(since)
    assert (a.staked.decimal, a.returned.decimal, a.net.decimal, a.open_stakes.decimal, a.bets_placed) == (
        "8.00",
        "0.00",
        "-8.00",
        "8.00",
        2,
    )
    assert a.since.ToDatetime(UTC) == since and a.until.ToDatetime(UTC) >= since

    env.send(final("rp10", 90, 1, 0))
    wait_for(lambda: balance(env, "rg10")[1] == 0, 30, what="settled")
    paid = env.bets.GetBet(bs.GetBetRequest(bet_id=won.bet_id), metadata=md("rg10"), timeout=10).bet.payout.minor_units
    a = activity(since)  # the earlier bet's winnings are not the session's
    assert (a.staked.minor_units, a.returned.minor_units, a.net.minor_units, a.open_stakes.minor_units) == (
        800,
        paid,
        paid - 800,
        0,
    )
    assert activity(since - timedelta(minutes=1)).bets_placed == 3 and earlier.bet_id

    r = w.SetRealityCheck(ws.SetRealityCheckRequest(), metadata=md("rg10"), timeout=10)  # never again
    assert not r.HasField("interval") and not limits_of(env, "rg10").HasField("reality_check_interval")
    log = "SELECT count(*) FROM betting.protection_log WHERE account_id = 'rg10' AND action = 'reality_check'"
    assert env.sql(log) == [(2,)]


def test_bad_protection_requests_are_refused_field_by_field(env: Env) -> None:
    def bad(call: object) -> str:
        code, _, details = _refused(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        return str(details[0].field_violations[0].field)  # type: ignore[attr-defined]

    w = env.wallet
    for days in (0.5, 1827):
        assert bad(lambda d=days: take_break(env, "rg5", d)) == "duration"
    assert bad(lambda: w.TakeBreak(ws.TakeBreakRequest(), metadata=md("rg5"), timeout=10)) == "duration"
    assert bad(lambda: deposit_limits(env, "rg5")) == "currency_code"  # no limit and no currency
    req = ws.SetStakeLimitsRequest(max_stake=eur(500), currency_code="GBP")
    assert bad(lambda: w.SetStakeLimits(req, metadata=md("rg5"), timeout=10)) == "max_stake"
    assert bad(lambda: deposit_limits(env, "rg5", max_weekly=-5)) == "limits.max_weekly"
    assert bad(lambda: loss_limits(env, "rg5", max_monthly=0)) == "limits.max_monthly"
    assert bad(lambda: loss_limits(env, "rg5")) == "currency_code"
    for seconds in (60, 901, 90_000):  # under 15 minutes, not whole minutes, over a day
        req = ws.SetRealityCheckRequest(interval=Duration(seconds=seconds))
        assert bad(lambda r=req: w.SetRealityCheck(r, metadata=md("rg5"), timeout=10)) == "interval"
    now = int(time.time())
    for since in (None, now - 2 * 86400, now + 3600):
        req = ws.GetActivityRequest() if since is None else ws.GetActivityRequest(since=Timestamp(seconds=since))
        assert bad(lambda r=req: w.GetActivity(r, metadata=md("rg5"), timeout=10)) == "since"
    mixed = ws.DepositLimits(max_daily=eur(100), max_monthly=common_pb2.Money(currency_code="GBP", minor_units=5))
    assert bad(lambda: w.SetDepositLimits(ws.SetDepositLimitsRequest(limits=mixed), metadata=md("rg5"), timeout=10))
    assert bad(lambda: stake_limits(env, "rg5", max_stake=0)) == "max_stake"
    req = ws.GetLimitsRequest(currency_code="XXX")
    assert bad(lambda: w.GetLimits(req, metadata=md("rg5"), timeout=10)) == "currency_code"
    with psycopg.connect(env.dsn) as conn:
        for table in ("deposit_limits", "loss_limits", "account_limits", "breaks", "reality_checks", "protection_log"):
            row = conn.execute(f"SELECT count(*) FROM betting.{table} WHERE account_id = 'rg5'").fetchone()
            assert row == (0,), table


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    daily=st.none() | _MONEY,
    weekly=st.none() | _MONEY,
    seconds=st.integers(-(10**12), 10**12),
    nanos=st.integers(-999_999_999, 999_999_999),
)
def test_no_protection_request_is_an_internal_error(
    env: Env, daily: dict[str, object] | None, weekly: dict[str, object] | None, seconds: int, nanos: int
) -> None:
    limits = ws.DepositLimits()
    if daily is not None:
        limits.max_daily.CopyFrom(common_pb2.Money(**daily))  # type: ignore[arg-type]
    if weekly is not None:
        limits.max_weekly.CopyFrom(common_pb2.Money(**weekly))  # type: ignore[arg-type]
    loss = ws.LossLimits.FromString(limits.SerializeToString())  # the same fields
    duration = Duration(seconds=seconds, nanos=nanos if seconds >= 0 else -abs(nanos))
    since = Timestamp(seconds=seconds, nanos=abs(nanos))
    calls = [
        lambda: env.wallet.SetDepositLimits(ws.SetDepositLimitsRequest(limits=limits), metadata=md("rgf"), timeout=10),
        lambda: env.wallet.SetLossLimits(ws.SetLossLimitsRequest(limits=loss), metadata=md("rgf"), timeout=10),
        lambda: env.wallet.TakeBreak(ws.TakeBreakRequest(duration=duration), metadata=md("rgf"), timeout=10),
        lambda: env.wallet.SetRealityCheck(ws.SetRealityCheckRequest(interval=duration), metadata=md("rgf"), timeout=9),
        lambda: env.wallet.GetActivity(ws.GetActivityRequest(since=since), metadata=md("rgf"), timeout=10),
    ]
    for call in calls:
        try:
            call()
        except grpc.RpcError as err:
            assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), (
                err.code(),
                err.details(),
            )


def test_the_operator_suspends_and_resumes_an_account_and_sees_its_protection(env: Env) -> None:
    from livebet.betting.v1 import player_admin_service_pb2 as pa
    from livebet.betting.v1 import player_admin_service_pb2_grpc

    admin = player_admin_service_pb2_grpc.PlayerAdminServiceStub(admin_channel(env.target))
    player = player_admin_service_pb2_grpc.PlayerAdminServiceStub(grpc.insecure_channel(env.target))
    env.send(fixture("rp6"))
    priced(env, "rp6")
    deposit(env, "rg6", 10_000, "rg6-d")
    deposit_limits(env, "rg6", max_monthly=50_000)
    odds, _ = env.price("rp6", ONE, "home")
    bet = [selection("rp6", ONE, "home", odds)]
    place(env, "rg6", "rg6-a", bet, 500)

    # a player's own token cannot reach it
    code, _, _ = _refused(
        lambda: player.SuspendPlayer(pa.SuspendPlayerRequest(account_id="rg6", reason="x"), metadata=md("rg6"))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED

    r = admin.SuspendPlayer(pa.SuspendPlayerRequest(account_id="rg6", reason="affordability check"), timeout=10)
    assert r.suspension.reason == "affordability check" and r.suspension.suspended_by == "trader:tests"
    again = admin.SuspendPlayer(pa.SuspendPlayerRequest(account_id="rg6", reason="second"), timeout=10)
    assert again.suspension.reason == "affordability check" and again.suspension.since == r.suspension.since
    _, msg, details = _refused(lambda: place(env, "rg6", "rg6-b", bet, 500))
    assert reason(details) == "REJECT_REASON_ACCOUNT_SUSPENDED" and "suspended" in msg
    _, _, details = _refused(lambda: deposit(env, "rg6", 100, "rg6-d2"))
    assert reason(details) == "REJECT_REASON_ACCOUNT_SUSPENDED"
    env.wallet.Withdraw(ws.WithdrawRequest(request_id="rg6-w", amount=eur(1_000)), metadata=md("rg6"), timeout=10)
    assert bets_of(env, "rg6") == 1 and balance(env, "rg6") == (8_500, 500)

    got = admin.GetPlayer(pa.GetPlayerRequest(account_id="rg6"), timeout=10)
    assert got.suspension.reason == "affordability check" and not got.HasField("break_until")
    assert [w.available.decimal for w in got.wallets] == ["85.00"] and got.wallets[0].held.decimal == "5.00"
    assert got.wallets[0].limits.deposit.max_monthly.decimal == "500.00"
    assert [e.action for e in got.log] == ["suspend", "suspend", "deposit_limits"]  # newest first
    assert '"by":"trader:tests"' in got.log[0].detail_json

    assert admin.ResumePlayer(pa.ResumePlayerRequest(account_id="rg6", reason="checked"), timeout=10).was_suspended
    assert not admin.ResumePlayer(pa.ResumePlayerRequest(account_id="rg6", reason="again"), timeout=10).was_suspended
    assert place(env, "rg6", "rg6-c", bet, 500).status == bet_pb2.BET_STATUS_ACCEPTED
    got = admin.GetPlayer(pa.GetPlayerRequest(account_id="rg6"), timeout=10)
    assert not got.HasField("suspension") and [e.action for e in got.log][:2] == ["resume", "resume"]

    # a player's own break is theirs: resuming the account does not end it
    take_break(env, "rg6", 1)
    admin.ResumePlayer(pa.ResumePlayerRequest(account_id="rg6", reason="no"), timeout=10)
    _, _, details = _refused(lambda: place(env, "rg6", "rg6-e", bet, 500))
    assert reason(details) == "REJECT_REASON_ACCOUNT_ON_BREAK"
    assert admin.GetPlayer(pa.GetPlayerRequest(account_id="rg6"), timeout=10).HasField("break_until")

    # bad input
    code, _, _ = _refused(lambda: admin.GetPlayer(pa.GetPlayerRequest(account_id="nobody-here"), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND
    for req in (
        pa.SuspendPlayerRequest(account_id="rg6"),
        pa.SuspendPlayerRequest(reason="x"),
        pa.SuspendPlayerRequest(account_id="rg6", reason="x" * 501),
    ):
        code, _, _ = _refused(lambda req=req: admin.SuspendPlayer(req, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT


def withdraw(env: Env, account: str, amount: int, request_id: str) -> ws.WithdrawResponse:
    req = ws.WithdrawRequest(request_id=request_id, amount=eur(amount))
    return env.wallet.Withdraw(req, metadata=md(account), timeout=10)


def test_a_suspension_may_freeze_withdrawals_until_the_account_is_resumed(env: Env) -> None:
    from livebet.betting.v1 import player_admin_service_pb2 as pa
    from livebet.betting.v1 import player_admin_service_pb2_grpc

    admin = player_admin_service_pb2_grpc.PlayerAdminServiceStub(admin_channel(env.target))
    deposit(env, "rg20", 10_000, "rg20-d")
    first = withdraw(env, "rg20", 1_000, "rg20-w1")
    r = admin.SuspendPlayer(pa.SuspendPlayerRequest(account_id="rg20", reason="source of funds"), timeout=10)
    assert not r.suspension.withdrawals_frozen
    assert withdraw(env, "rg20", 1_000, "rg20-w2").balance.minor_units == 8_000  # a plain suspension lets them out

    # the freeze is added to the suspension in force, which keeps its reason and time
    frozen = admin.SuspendPlayer(
        pa.SuspendPlayerRequest(account_id="rg20", reason="AML review", freeze_withdrawals=True), timeout=10
    )
    assert frozen.suspension.withdrawals_frozen and frozen.suspension.reason == "source of funds"
    assert frozen.suspension.since == r.suspension.since
    rows = env.sql("SELECT count(*) FROM betting.transactions WHERE owner = 'rg20'")
    code, msg, details = _refused(lambda: withdraw(env, "rg20", 1_000, "rg20-w3"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "on hold" in msg
    assert reason(details) == "REJECT_REASON_ACCOUNT_SUSPENDED"
    assert balance(env, "rg20") == (8_000, 0)
    assert env.sql("SELECT count(*) FROM betting.transactions WHERE owner = 'rg20'") == rows  # nothing written
    # a repeated request still gets its first answer
    assert withdraw(env, "rg20", 1_000, "rg20-w1").transaction_id == first.transaction_id
    # suspending again without the freeze does not lift it
    again = admin.SuspendPlayer(pa.SuspendPlayerRequest(account_id="rg20", reason="note"), timeout=10)
    assert again.suspension.withdrawals_frozen

    got = admin.GetPlayer(pa.GetPlayerRequest(account_id="rg20"), timeout=10)
    assert got.suspension.withdrawals_frozen
    assert [e.action for e in got.log][:3] == ["suspend", "suspend", "suspend"]
    assert '"freeze_withdrawals":true' in got.log[1].detail_json
    assert "freeze_withdrawals" not in got.log[0].detail_json

    assert admin.ResumePlayer(pa.ResumePlayerRequest(account_id="rg20", reason="cleared"), timeout=10).was_suspended
    assert withdraw(env, "rg20", 1_000, "rg20-w3").balance.minor_units == 7_000
    assert not admin.GetPlayer(pa.GetPlayerRequest(account_id="rg20"), timeout=10).HasField("suspension")


def test_no_withdrawal_commits_after_the_freeze_has_returned(env: Env) -> None:
    """Withdrawals waiting for their player's balance row (a settlement in flight holds it) when
    the operator freezes withdrawals: the freeze waits for the one asked before it, so that once
    SuspendPlayer has answered no withdrawal is left to commit; the one asked after it (queued
    behind the freeze, having found no freeze when it started) is refused."""
    from livebet.betting.v1 import player_admin_service_pb2 as pa
    from livebet.betting.v1 import player_admin_service_pb2_grpc

    admin = player_admin_service_pb2_grpc.PlayerAdminServiceStub(admin_channel(env.target))
    deposit(env, "rg21", 10_000, "rg21-d")
    withdrawals = "SELECT count(*) FROM betting.transactions WHERE owner = 'rg21' AND kind = 'withdrawal'"
    freeze = pa.SuspendPlayerRequest(account_id="rg21", reason="AML review", freeze_withdrawals=True)

    def queued(n: int) -> None:
        waiting = """SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                     AND (query LIKE '%%INSERT INTO betting.postings%%' OR query LIKE '%%FOR UPDATE%%')"""
        wait_for(lambda: env.sql(waiting) == [(n,)], 10, what=f"{n} waiting for the row")

    with psycopg.connect(env.dsn) as settlement, ThreadPoolExecutor(3) as pool:
        settlement.execute("SELECT 1 FROM betting.ledger_accounts WHERE account_id = 'player:rg21:EUR' FOR UPDATE")
        before = pool.submit(withdraw, env, "rg21", 1_000, "rg21-w1")
        queued(1)
        frozen = pool.submit(lambda: admin.SuspendPlayer(freeze, timeout=20))
        queued(2)
        after = pool.submit(withdraw, env, "rg21", 1_000, "rg21-w2")
        queued(3)
        settlement.rollback()
        assert frozen.result(20).suspension.withdrawals_frozen
        assert env.sql(withdrawals) == [(1,)]  # the withdrawal asked before had committed already
        assert before.result(10).balance.minor_units == 9_000
        _, msg, _ = _refused(lambda: after.result(10))
        assert "on hold" in msg
    assert env.sql(withdrawals) == [(1,)] and balance(env, "rg21") == (9_000, 0)
    admin.ResumePlayer(pa.ResumePlayerRequest(account_id="rg21", reason="cleared"), timeout=10)
