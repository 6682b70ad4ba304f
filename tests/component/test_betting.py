"""Bet acceptance end to end on real PostgreSQL, NATS, Valkey, the feed and the pricing engine:
the wallet ledger, PlaceBet with its policies, limits and the in-play delay, idempotency, events
through the outbox, and the money invariants after every test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import nats
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livebet.betting.v1 import bet_pb2
from livebet.betting.v1 import betting_service_pb2 as bs
from livebet.betting.v1 import wallet_service_pb2 as ws
from livebet.odds.v1 import market_pb2
from livebet.odds.v1 import trader_service_pb2 as ts
from psycopg_pool import AsyncConnectionPool

from betting.adapters.store import InsufficientFunds, Placement, Pooled, Store, cash_account, digest
from betting.domain.rules import Leg, Ticket
from mesh.resp import Pipelined
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
from tests.component.test_feed_service import fixture
from tests.component.test_live_odds import goal
from tests.helpers import metric, wait_for

ONE = "1x2"


@pytest.fixture(scope="module")
def env(servers_root: Path) -> Iterator[Env]:
    yield from start(servers_root, "bet", {"LIVEBET_BETTING_MAX_LIABILITY": "5000"})


@pytest.fixture(autouse=True)
def ledger_stays_balanced(env: Env) -> Iterator[None]:
    yield
    env.check_ledger()


def _error(err: grpc.RpcError) -> tuple[grpc.StatusCode, str, list[object]]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    details: list[object] = []
    for d in status.details if status else []:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo):
            if d.Is(kind.DESCRIPTOR):
                msg = kind()
                d.Unpack(msg)
                details.append(msg)
    return err.code(), err.details() or "", details


def _refused(call: object) -> tuple[grpc.StatusCode, str, list[object]]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return _error(info.value)


def test_deposit_withdraw_and_balance_are_ledger_transactions(env: Env) -> None:
    r = deposit(env, "w1", 10_000, "w1-d1")
    assert r.balance.minor_units == 10_000 and r.balance.decimal == "100.00"
    again = deposit(env, "w1", 10_000, "w1-d1")  # the same request: the first answer, nothing new
    assert again.transaction_id == r.transaction_id and again.balance.minor_units == 10_000
    code, msg, _ = _refused(lambda: deposit(env, "w1", 500, "w1-d1"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "different request" in msg
    w = env.wallet.Withdraw(ws.WithdrawRequest(request_id="w1-w1", amount=eur(2_550)), metadata=md("w1"), timeout=10)
    assert w.balance.minor_units == 7_450
    before = env.counts()
    code, msg, details = _refused(
        lambda: env.wallet.Withdraw(
            ws.WithdrawRequest(request_id="w1-w2", amount=eur(7_451)), metadata=md("w1"), timeout=10
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "balance" in msg
    assert details and details[0].reason == "REJECT_REASON_INSUFFICIENT_FUNDS"  # type: ignore[attr-defined]
    assert env.counts() == before
    assert balance(env, "w1") == (7_450, 0)
    listed = env.wallet.ListTransactions(ws.ListTransactionsRequest(page_size=1), metadata=md("w1"), timeout=10)
    assert [t.kind for t in listed.transactions] == [ws.TRANSACTION_KIND_WITHDRAWAL] and listed.next_page_token
    rest = env.wallet.ListTransactions(
        ws.ListTransactionsRequest(page_size=5, page_token=listed.next_page_token), metadata=md("w1"), timeout=10
    )
    assert [t.kind for t in rest.transactions] == [ws.TRANSACTION_KIND_DEPOSIT] and not rest.next_page_token


def test_a_deposit_waiting_for_its_players_row_holds_up_no_other_deposit(env: Env) -> None:
    """A settlement holds a player's balance row until it commits; that player's deposit waits.
    Another player's deposit, on the same cash account, must not wait behind it."""
    a = "wq-a"
    b = next(f"wq-b{i}" for i in range(1000) if cash_account(f"wq-b{i}", "EUR") == cash_account(a, "EUR"))
    deposit(env, a, 1_000, "wq-a-1")
    deposit(env, b, 1_000, "wq-b-1")
    assert env.sql("SELECT balance FROM betting.ledger_accounts WHERE account_id = %s", cash_account(a, "EUR"))
    with psycopg.connect(env.dsn) as settlement, ThreadPoolExecutor(1) as pool:
        settlement.execute("SELECT 1 FROM betting.ledger_accounts WHERE account_id = 'player:wq-a:EUR' FOR UPDATE")
        waiting = pool.submit(deposit, env, a, 500, "wq-a-2")
        wait_for(
            lambda: (
                env.sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%%postings%%'"
                )
                == [(1,)]
            ),
            10,
            what="a's deposit waiting for its row",
        )
        r = env.wallet.Deposit(ws.DepositRequest(request_id="wq-b-2", amount=eur(500)), metadata=md(b), timeout=5)
        assert r.balance.minor_units == 1_500 and not waiting.done()
        settlement.rollback()
        assert waiting.result(10).balance.minor_units == 1_500
    assert env.sql("SELECT count(DISTINCT account_id) FROM betting.ledger_accounts WHERE kind = 'cash'")[0][0] > 1


def test_no_account_header_is_unauthenticated(env: Env) -> None:
    with pytest.raises(grpc.RpcError) as err:
        env.wallet.GetBalance(ws.GetBalanceRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_ledger_itself_refuses_edits_and_overdrafts(env: Env) -> None:
    deposit(env, "w2", 1_000, "w2-d1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        env.sql("UPDATE betting.postings SET amount = amount + 1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        env.sql("DELETE FROM betting.transactions")
    with pytest.raises(psycopg.errors.CheckViolation):  # even a balanced transaction cannot overdraw
        env.sql(
            """WITH t AS (INSERT INTO betting.transactions (transaction_id, kind, owner, currency)
                          VALUES (gen_random_uuid(), 'correction', 'w2', 'EUR') RETURNING transaction_id)
               INSERT INTO betting.postings (transaction_id, account_id, amount)
               SELECT transaction_id, a, v FROM t, (VALUES ('player:w2:EUR', -1001), (%s, 1001)) x(a, v)""",
            cash_account("w2", "EUR"),
        )
    with pytest.raises(psycopg.errors.CheckViolation):  # an unbalanced transaction fails at commit
        env.sql(
            """WITH t AS (INSERT INTO betting.transactions (transaction_id, kind, owner, currency)
                          VALUES (gen_random_uuid(), 'correction', 'w2', 'EUR') RETURNING transaction_id)
               INSERT INTO betting.postings (transaction_id, account_id, amount)
               SELECT transaction_id, 'player:w2:EUR', 5 FROM t"""
        )
    assert balance(env, "w2") == (1_000, 0)


def test_a_pre_match_single_is_accepted_at_once_and_holds_the_stake(env: Env) -> None:
    env.send(fixture("b1"))
    priced(env, "b1")
    deposit(env, "p1", 5_000, "p1-d")
    odds, version = env.price("b1", ONE, "home")
    bet = place(env, "p1", "p1-b1", [selection("b1", ONE, "home", odds, version)], 1_000)
    assert bet.status == bet_pb2.BET_STATUS_ACCEPTED
    assert bet.accepted_odds.decimal == odds and bet.stake.minor_units == 1_000
    assert bet.potential_payout.minor_units == int(Decimal(odds) * 1_000)
    assert balance(env, "p1") == (4_000, 1_000)
    again = place(env, "p1", "p1-b1", [selection("b1", ONE, "home", odds, version)], 1_000)
    assert again.bet_id == bet.bet_id and balance(env, "p1") == (4_000, 1_000)  # the first answer, once
    code, _, _ = _refused(lambda: place(env, "p1", "p1-b1", [selection("b1", ONE, "home", odds, version)], 999))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    got = env.bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=md("p1"), timeout=10).bet
    assert got == bet
    code, _, _ = _refused(lambda: env.bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=md("x"), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND  # another account's bet does not exist for you


def test_odds_change_policies(env: Env) -> None:
    env.send(fixture("b2"))
    priced(env, "b2")
    deposit(env, "p2", 10_000, "p2-d")
    odds, version = env.price("b2", ONE, "draw")
    higher = f"{Decimal(odds) + Decimal('0.50'):.2f}"
    lower = f"{Decimal(odds) - Decimal('0.20'):.2f}"
    before = env.counts()
    code, msg, details = _refused(lambda: place(env, "p2", "p2-none", [selection("b2", ONE, "draw", higher)], 100))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and f"odds are {odds}" in msg
    assert details[0].reason == "REJECT_REASON_ODDS_CHANGED"  # type: ignore[attr-defined]
    code, _, _ = _refused(
        lambda: place(
            env, "p2", "p2-hi", [selection("b2", ONE, "draw", higher)], 100, bet_pb2.ODDS_CHANGE_POLICY_HIGHER
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert env.counts() == before  # refused: nothing written
    up = place(env, "p2", "p2-hi2", [selection("b2", ONE, "draw", lower)], 100, bet_pb2.ODDS_CHANGE_POLICY_HIGHER)
    assert up.status == bet_pb2.BET_STATUS_ACCEPTED and up.accepted_odds.decimal == odds  # stands at the current
    anyp = place(env, "p2", "p2-any", [selection("b2", ONE, "draw", higher)], 100, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    assert anyp.accepted_odds.decimal == odds
    code, msg, _ = _refused(lambda: place(env, "p2", "p2-v", [selection("b2", ONE, "draw", odds, version + 100)], 100))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "never published" in msg


def test_bets_use_the_kept_snapshot_until_the_engine_reprices_and_then_the_new_price(env: Env) -> None:
    """The betting service keeps the snapshots it reads while Valkey tracks them unchanged: bets
    on an unchanged match are checked without reading it again, and a trader's new margin,
    written by the engine, is what the very next bet is checked against."""
    env.send(fixture("b50"))
    priced(env, "b50")
    deposit(env, "p50", 10_000, "p50-d")
    port = env.betting.spec.env["LIVEBET_METRICS_PORT"]
    reads = 'livebet_bets_odds_snapshot_reads_total{source="%s"}'
    odds, _ = env.price("b50", ONE, "home")
    place(env, "p50", "p50-0", [selection("b50", ONE, "home", odds)], 100)
    kept, read = metric(port, reads % "cache"), metric(port, reads % "redis")
    for i in range(1, 4):
        assert place(env, "p50", f"p50-{i}", [selection("b50", ONE, "home", odds)], 100).accepted_odds.decimal == odds
    assert metric(port, reads % "cache") == kept + 3 and metric(port, reads % "redis") == read
    env.trader.SetMargin(ts.SetMarginRequest(request_id="b50-m", match_id="b50", margin="0.15"), timeout=10)
    wait_for(lambda: env.price("b50", ONE, "home")[0] != odds, 10, what="b50 repriced")
    new, _ = env.price("b50", ONE, "home")
    code, msg, _ = _refused(lambda: place(env, "p50", "p50-old", [selection("b50", ONE, "home", odds)], 100))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and f"odds are {new}" in msg
    assert place(env, "p50", "p50-new", [selection("b50", ONE, "home", new)], 100).accepted_odds.decimal == new
    assert metric(port, reads % "redis") > read  # read again after the change


def test_accumulators_combine_odds_and_refuse_same_match_legs(env: Env) -> None:
    env.send(fixture("b3"), fixture("b4"))
    priced(env, "b3")
    priced(env, "b4")
    deposit(env, "p3", 10_000, "p3-d")
    o1, _ = env.price("b3", ONE, "home")
    o2, _ = env.price("b4", "total|total=2.5", "over")
    bet = place(
        env, "p3", "p3-acca", [selection("b3", ONE, "home", o1), selection("b4", "total|total=2.5", "over", o2)], 500
    )
    combined = (Decimal(o1) * Decimal(o2)).quantize(Decimal("0.01"), rounding="ROUND_DOWN")
    assert bet.accepted_odds.decimal == f"{combined:.2f}" and len(bet.selections) == 2
    assert bet.potential_payout.minor_units == int(combined * 500)
    code, msg, details = _refused(
        lambda: place(
            env, "p3", "p3-same", [selection("b3", ONE, "home", o1), selection("b3", "btts", "yes", "1.90")], 500
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "same match" in msg
    assert details[0].field_violations[0].field == "selections[1]"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("stake", "odds", "field"),
    [
        ({"minor_units": 0}, "2.00", "stake"),
        ({"minor_units": -5}, "2.00", "stake"),
        ({"decimal": "NaN"}, "2.00", "stake"),
        ({"decimal": "inf"}, "2.00", "stake"),
        ({"decimal": "1.005"}, "2.00", "stake"),
        ({"decimal": "1e3"}, "2.00", "stake"),
        ({"minor_units": 10**18}, "2.00", "stake"),
        ({"minor_units": 100, "decimal": "2.00"}, "2.00", "stake"),
        ({"minor_units": 100, "currency_code": "XXX"}, "2.00", "stake"),
        ({"minor_units": 100}, "1.00", "selections[0].requested_odds"),
        ({"minor_units": 100}, "abc", "selections[0].requested_odds"),
        ({"minor_units": 100}, "2.001", "selections[0].requested_odds"),
        ({"minor_units": 100}, "NaN", "selections[0].requested_odds"),
        ({"minor_units": 100}, "-3", "selections[0].requested_odds"),
    ],
)
def test_bad_input_is_invalid_argument_with_field_violations_and_writes_nothing(
    env: Env, stake: dict[str, object], odds: str, field: str
) -> None:
    money = {"currency_code": "EUR", **stake}
    before = env.counts()
    req = bs.PlaceBetRequest(request_id="bad", selections=[selection("b1", ONE, "home", odds)], stake=money)  # type: ignore[arg-type]
    code, msg, details = _refused(lambda: env.bets.PlaceBet(req, metadata=md("bad"), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
    assert [v.field for v in details[0].field_violations] == [field]  # type: ignore[attr-defined]
    assert env.counts() == before


def test_unknown_things_are_not_found_and_closed_markets_failed_precondition(env: Env) -> None:
    env.send(fixture("b5"))
    priced(env, "b5")
    deposit(env, "p5", 10_000, "p5-d")
    before = env.counts()
    for sel, code, text in [
        (selection("nope", ONE, "home", "2.00"), grpc.StatusCode.NOT_FOUND, "no priced match"),
        (selection("b5", "corners", "over", "2.00"), grpc.StatusCode.NOT_FOUND, "no market"),
        (selection("b5", ONE, "nobody", "2.00"), grpc.StatusCode.NOT_FOUND, "no outcome"),
    ]:
        got, msg, _ = _refused(lambda sel=sel: place(env, "p5", "p5-x", [sel], 100))
        assert got == code and text in msg
    env.trader.SuspendMarket(
        ts.SuspendMarketRequest(request_id="b5-s", market={"match_id": "b5", "market_key": ONE}, reason="test"),
        timeout=10,
    )
    wait_for(lambda: env.snapshot("b5").markets[0].status == 2, 10, what="1x2 suspended")  # type: ignore[union-attr]
    odds, _ = env.price("b5", ONE, "home")
    got, msg, details = _refused(lambda: place(env, "p5", "p5-s", [selection("b5", ONE, "home", odds)], 100))
    assert got == grpc.StatusCode.FAILED_PRECONDITION and "not open" in msg
    assert details[0].reason == "REJECT_REASON_MARKET_NOT_OPEN"  # type: ignore[attr-defined]
    dup = selection("b5", "btts", "yes", "1.90")
    got, msg, _ = _refused(lambda: place(env, "p5", "p5-d2", [dup, dup], 100))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "twice" in msg
    assert env.counts() == before


def test_limits_stake_payout_odds_and_liability(env: Env) -> None:
    env.send(fixture("b6"))
    priced(env, "b6")
    deposit(env, "p6", 2_000_000, "p6-d")
    odds, _ = env.price("b6", ONE, "away")
    for stake, reason in [(5, "REJECT_REASON_STAKE_LIMIT"), (1_000_001, "REJECT_REASON_STAKE_LIMIT")]:
        _, _, details = _refused(
            lambda stake=stake: place(env, "p6", f"p6-{stake}", [selection("b6", ONE, "away", odds)], stake)
        )
        assert details[0].reason == reason  # type: ignore[attr-defined]
    # max liability is 5000 EUR per outcome in this environment: two bets of 1000 at ~3.5 break it
    first = place(env, "p6", "p6-l1", [selection("b6", ONE, "away", odds)], 100_000)
    assert first.status == bet_pb2.BET_STATUS_ACCEPTED
    before = env.counts()
    _, msg, details = _refused(lambda: place(env, "p6", "p6-l2", [selection("b6", ONE, "away", odds)], 100_000))
    assert details[0].reason == "REJECT_REASON_LIABILITY_LIMIT", msg  # type: ignore[attr-defined]
    assert env.counts() == before


def test_fifty_concurrent_bets_against_a_balance_for_ten_accept_exactly_ten(env: Env) -> None:
    env.send(fixture("b7"))
    priced(env, "b7")
    deposit(env, "p7", 10 * 300, "p7-d")
    odds, _ = env.price("b7", ONE, "home")

    def one(i: int) -> str:
        try:
            return bet_pb2.BetStatus.Name(place(env, "p7", f"p7-{i}", [selection("b7", ONE, "home", odds)], 300).status)
        except grpc.RpcError as err:
            return _error(err)[2][0].reason  # type: ignore[attr-defined,no-any-return]

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert results.count("BET_STATUS_ACCEPTED") == 10
    assert results.count("REJECT_REASON_INSUFFICIENT_FUNDS") == 40
    assert balance(env, "p7") == (0, 3_000)


@contextlib.asynccontextmanager
async def direct_store(env: Env, connections: int = 2) -> AsyncIterator[Store]:
    """A Store on a pool of its own, in this process (PlaceBatcher driven without the service)."""
    pool = AsyncConnectionPool(env.dsn, min_size=1, max_size=connections, open=False, kwargs={"autocommit": True})
    await pool.open(wait=True)
    try:
        yield Store(Pooled(pool))
    finally:
        await pool.close()


def direct_placement(match_id: str, account: str, request_id: str, stake: int) -> Placement:
    """A checked single at 2.00 on ``match_id``'s home win, as the service hands it to the Store."""
    leg = Leg(match_id, ONE, ONE, "home", Decimal("2.00"), 0)
    ticket = Ticket(request_id, (leg,), "EUR", stake, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    return Placement(
        ticket, account, digest(f"{account}/{request_id}/{stake}".encode()), [Decimal("2.00")], [1],
        Decimal("2.00"), 2 * stake, False, 0.0, 10**9, 10**9,
    )  # fmt: skip


def test_bets_written_in_one_transaction_each_succeed_or_fail_alone(env: Env) -> None:
    """Group commit (PlaceBatcher): bets queued together go in one transaction, yet each is
    refused or written as if it were alone, and a request id sent twice in one batch is placed once."""
    deposit(env, "p40", 5 * 300, "p40-d")
    deposit(env, "p41", 10_000, "p41-d")

    async def place_together() -> tuple[list[object], list[int]]:
        async with direct_store(env) as store:
            sizes: list[int] = []
            store.batcher.on_batch = sizes.append
            wanted = [direct_placement("b40", "p40", f"p40-{i}", 300) for i in range(8)]  # funds for five
            wanted += [direct_placement("b40", "p41", "p41-twice", 700) for _ in range(2)]
            results = await asyncio.gather(*(store.place(p) for p in wanted), return_exceptions=True)
        return results, sizes

    results, sizes = asyncio.run(place_together())
    assert sizes[0] > 1, f"the bets were not written together: batches of {sizes}"
    placed = [r for r in results[:8] if isinstance(r, tuple)]
    assert len(placed) == 5 and all(created for _, created in placed)  # type: ignore[misc]
    refused = [r for r in results[:8] if not isinstance(r, tuple)]
    assert len(refused) == 3 and all(isinstance(r, InsufficientFunds) for r in refused), refused
    (first, made_first), (second, made_second) = results[8:]  # type: ignore[misc]
    assert first.bet_id == second.bet_id and {made_first, made_second} == {True, False}
    assert env.sql("SELECT count(*) FROM betting.bets WHERE account_id = 'p40'")[0][0] == 5
    assert env.sql("SELECT count(*) FROM betting.bets WHERE account_id = 'p41'")[0][0] == 1
    assert balance(env, "p40") == (0, 1_500) and balance(env, "p41") == (9_300, 700)


def test_a_batch_waiting_on_a_lock_does_not_hold_other_players_bets(env: Env) -> None:
    """One batch is written at a time, but one that waits on a player's lock (a settlement
    holding it) lets the next batch start beside it once it has stalled: another player's bet is
    placed meanwhile, and the waiting one when the lock is released."""
    deposit(env, "p42", 1_000, "p42-d")
    deposit(env, "p43", 1_000, "p43-d")

    async def scenario() -> tuple[bool, bool]:
        async with direct_store(env, connections=3) as store:
            async with await psycopg.AsyncConnection.connect(env.dsn) as holder:
                await holder.execute(
                    "SELECT 1 FROM betting.ledger_accounts WHERE account_id = 'player:p42:EUR' FOR UPDATE"
                )
                waiting = asyncio.ensure_future(store.place(direct_placement("b42", "p42", "p42-bet", 300)))
                await asyncio.sleep(0.2)  # its batch is now waiting on the lock
                other = await asyncio.wait_for(store.place(direct_placement("b42", "p43", "p43-bet", 300)), 30)
                other_placed, first_still_waiting = other[1], not waiting.done()
            # the holder's transaction ends with its connection: the waiting bet goes through
            first = await asyncio.wait_for(waiting, 30)
        return other_placed and first[1], first_still_waiting

    placed, waited = asyncio.run(scenario())
    assert placed and waited
    assert balance(env, "p42") == (700, 300) and balance(env, "p43") == (700, 300)


def test_a_bet_that_loses_a_deadlock_is_written_again(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """Another transaction holds the liability row a bet needs, and then waits for the player's
    row the bet holds: PostgreSQL breaks the deadlock by rolling back the bet's subtransaction
    (the other transaction's ``deadlock_timeout`` is a minute, so the bet's deadlock check is the
    one that finds the cycle: the bet is the victim, whichever process gets a core first). Nothing
    of it was written, so the store writes it again, and it is placed once the other transaction
    ends, instead of failing."""
    deposit(env, "p44", 1_000, "p44-d")
    row = "match_id = 'b44' AND market_key = '1x2' AND outcome_id = 'home' AND currency = 'EUR'"
    env.sql(
        "INSERT INTO betting.liability (match_id, market_key, outcome_id, currency, amount)"
        " VALUES ('b44', '1x2', 'home', 'EUR', 0) ON CONFLICT DO NOTHING"
    )

    async def waiting_on_a_lock(conn: psycopg.AsyncConnection[Any]) -> None:
        for _ in range(300):
            cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            found = await cur.fetchone()
            if found and found[0]:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the bet never waited for the liability row")

    async def scenario() -> tuple[object, bool]:
        async with direct_store(env) as store:
            async with (
                await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as watcher,
                await psycopg.AsyncConnection.connect(env.dsn) as other,
            ):
                await other.execute("SET deadlock_timeout = '60s'")  # never the victim (see above)
                await other.execute(f"UPDATE betting.liability SET amount = amount WHERE {row}")
                bet = asyncio.ensure_future(store.place(direct_placement("b44", "p44", "p44-bet", 300)))
                await waiting_on_a_lock(watcher)  # the bet holds p44's rows, waits for the liability row
                await other.execute(  # ... and now the other transaction waits for p44's row
                    "SELECT 1 FROM betting.ledger_accounts WHERE account_id = 'player:p44:EUR' FOR UPDATE"
                )
                await other.commit()
            return await asyncio.wait_for(bet, 30)

    with caplog.at_level(logging.INFO, logger="betting.store"):
        _, created = asyncio.run(scenario())
    assert created
    assert [r.sqlstate for r in caplog.records if "deadlock" in r.getMessage()] == ["40P01"]  # type: ignore[attr-defined]
    assert env.sql("SELECT count(*) FROM betting.bets WHERE account_id = 'p44'")[0][0] == 1
    assert balance(env, "p44") == (700, 300)


def test_the_same_request_in_flight_twice_is_placed_once(env: Env) -> None:
    env.send(fixture("b8"))
    priced(env, "b8")
    deposit(env, "p8", 10_000, "p8-d")
    odds, _ = env.price("b8", ONE, "home")
    with ThreadPoolExecutor(8) as pool:
        bets = list(
            pool.map(lambda _: place(env, "p8", "p8-same", [selection("b8", ONE, "home", odds)], 700), range(8))
        )
    assert len({b.bet_id for b in bets}) == 1
    assert balance(env, "p8") == (9_300, 700)


def test_in_play_bets_wait_for_the_delay_and_a_suspension_in_it_rejects_them(env: Env) -> None:
    env.send(fixture("b9"), state_event("b9", 1, 10))
    priced(env, "b9", 10)
    snap = env.snapshot("b9")
    assert snap is not None and snap.in_play
    deposit(env, "p9", 10_000, "p9-d")
    odds, _ = env.price("b9", "btts", "yes")
    t0 = time.monotonic()
    ok = place(env, "p9", "p9-ok", [selection("b9", "btts", "yes", odds)], 1_000, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    assert ok.status == bet_pb2.BET_STATUS_PENDING and balance(env, "p9") == (9_000, 1_000)
    wait_for(lambda: _status(env, "p9", ok.bet_id) != bet_pb2.BET_STATUS_PENDING, 20, what="decided")
    waited = time.monotonic() - t0
    assert _status(env, "p9", ok.bet_id) == bet_pb2.BET_STATUS_ACCEPTED
    assert waited >= IN_PLAY_DELAY - 0.05  # never decided before the delay is over

    odds, _ = env.price("b9", "btts", "yes")
    late = place(env, "p9", "p9-goal", [selection("b9", "btts", "yes", odds)], 2_000, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    assert late.status == bet_pb2.BET_STATUS_PENDING
    env.send(goal("b9", 1, 0, 2))  # suspends every market, then reprices: the bet must not stand
    wait_for(lambda: _status(env, "p9", late.bet_id) != bet_pb2.BET_STATUS_PENDING, 20, what="decided")
    got = env.bets.GetBet(bs.GetBetRequest(bet_id=late.bet_id), metadata=md("p9"), timeout=10).bet
    assert got.status == bet_pb2.BET_STATUS_REJECTED
    assert got.reject_reason == bet_pb2.REJECT_REASON_SUSPENDED_DURING_DELAY and "suspended" in got.reject_detail
    assert balance(env, "p9") == (9_000, 1_000)  # the rejected stake is back


def test_a_stake_rejected_after_the_delay_no_longer_counts_towards_the_daily_limit(env: Env) -> None:
    env.send(fixture("b21"), state_event("b21", 1, 10))
    priced(env, "b21", 10)
    deposit(env, "p21", 10_000, "p21-d")
    env.wallet.SetStakeLimits(ws.SetStakeLimitsRequest(max_daily_stake=eur(1_500)), metadata=md("p21"), timeout=10)
    odds, _ = env.price("b21", "btts", "yes")
    first = place(env, "p21", "p21-a", [selection("b21", "btts", "yes", odds)], 1_000, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    env.send(goal("b21", 1, 0, 2))  # suspends in the delay: the bet is rejected and its stake released
    wait_for(lambda: _status(env, "p21", first.bet_id) == bet_pb2.BET_STATUS_REJECTED, 20, what="rejected")

    def reopened() -> bool:
        snap = env.snapshot("b21")
        return (
            snap is not None
            and snap.score == "1-0"
            and any(m.ref.market_key == "btts" and m.status == market_pb2.MARKET_STATUS_OPEN for m in snap.markets)
        )

    wait_for(reopened, 20, what="repriced at 1-0")
    odds, _ = env.price("b21", "btts", "yes")
    # 1,000 of the 1,500 a day: allowed only because the rejected 1,000 no longer counts
    second = place(env, "p21", "p21-b", [selection("b21", "btts", "yes", odds)], 1_000, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    assert second.status == bet_pb2.BET_STATUS_PENDING
    _, msg, details = _refused(
        lambda: place(env, "p21", "p21-c", [selection("b21", "btts", "yes", odds)], 600, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    )
    assert details[0].reason == "REJECT_REASON_ACCOUNT_LIMIT" and "24 hours" in msg  # type: ignore[attr-defined]


def _status(env: Env, account: str, bet_id: str) -> int:
    return env.bets.GetBet(bs.GetBetRequest(bet_id=bet_id), metadata=md(account), timeout=10).bet.status


def test_a_restart_during_the_delay_neither_loses_nor_double_decides(env: Env) -> None:
    env.send(fixture("b10"), state_event("b10", 1, 30))
    priced(env, "b10", 30)
    deposit(env, "p10", 10_000, "p10-d")
    odds, _ = env.price("b10", "btts", "no")
    bet = place(env, "p10", "p10-b", [selection("b10", "btts", "no", odds)], 1_000, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    env.betting.signal(signal.SIGKILL)
    assert env.betting.popen is not None
    env.betting.popen.wait(10)
    time.sleep(IN_PLAY_DELAY)
    env.betting.start()
    wait_for(lambda: _status(env, "p10", bet.bet_id) == bet_pb2.BET_STATUS_ACCEPTED, 30, what="decided after restart")
    assert env.published(f"bets.p10.{bet.bet_id}") == [f"{bet.bet_id}:pending:0", f"{bet.bet_id}:accepted:0"]
    assert balance(env, "p10") == (9_000, 1_000)


def test_a_bet_whose_decision_fails_stays_pending_and_the_bets_behind_it_are_decided(env: Env) -> None:
    """The decider on the real PostgreSQL and Valkey, in this process, with a decision that fails
    for one bet: that bet stays pending (and is decided later), the next one is decided."""
    from types import SimpleNamespace

    import redis.asyncio as aioredis

    from betting.adapters.odds import OddsView
    from betting.domain.rules import Config
    from betting.metrics import BetMetrics
    from betting.server import decide_due
    from betting.service import Decider

    env.send(fixture("b31"), state_event("b31", 1, 30))
    priced(env, "b31", 30)
    deposit(env, "p31", 10_000, "p31-d")
    odds, _ = env.price("b31", "btts", "no")
    bad = place(env, "p31", "p31-a", [selection("b31", "btts", "no", odds)], 1_000, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    good = place(env, "p31", "p31-b", [selection("b31", "btts", "no", odds)], 1_000, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    env.betting.signal(signal.SIGSTOP)  # its own decider waits, the delay runs out
    try:
        time.sleep(IN_PLAY_DELAY + 0.2)

        async def decide() -> tuple[int, float]:
            pool = AsyncConnectionPool(env.dsn, min_size=1, max_size=2, open=False)
            await pool.open(wait=True)
            redis = aioredis.from_url(env.redis_url)
            snapshots = Pipelined(env.redis_url)
            real = Decider(OddsView(SimpleNamespace(client=redis, pipelined=snapshots)), Config.from_env())

            async def decider(row: dict[str, object], legs: list[dict[str, object]]) -> tuple[object, ...]:
                if str(row["bet_id"]) == bad.bet_id:
                    raise ZeroDivisionError("a bug this bet exposes")
                return await real(row, legs)  # type: ignore[arg-type]

            metrics = BetMetrics()
            try:
                decided = await decide_due(Store(Pooled(pool)), decider, metrics)
            finally:
                await pool.close()
                await redis.aclose()
                await snapshots.close()
            return decided, metrics.decide_failures._value.get()

        due_before = env.sql("SELECT decide_at FROM betting.bets WHERE bet_id = %s", bad.bet_id)[0][0]
        assert asyncio.run(decide()) == (1, 1.0)
        status = "SELECT status, decide_at FROM betting.bets WHERE bet_id = %s"
        assert env.sql(status, good.bet_id)[0][0] == "accepted"
        ((state, due_after),) = env.sql(status, bad.bet_id)
        assert state == "pending" and due_after > due_before  # tried again later, after the others
    finally:
        env.betting.signal(signal.SIGCONT)
    wait_for(lambda: _status(env, "p31", bad.bet_id) == bet_pb2.BET_STATUS_ACCEPTED, 30, what="decided later")
    assert balance(env, "p31") == (8_000, 2_000)


def test_events_leave_through_the_outbox_to_the_bets_stream_and_watchbets(env: Env) -> None:
    env.send(fixture("b11"), state_event("b11", 1, 5))
    priced(env, "b11", 5)
    deposit(env, "p11", 10_000, "p11-d")
    stream = env.bets.WatchBets(bs.WatchBetsRequest(include_open=True), metadata=md("p11"), timeout=30)
    odds, _ = env.price("b11", "btts", "yes")
    bet = place(env, "p11", "p11-b", [selection("b11", "btts", "yes", odds)], 500, bet_pb2.ODDS_CHANGE_POLICY_ANY)
    seen = []
    for msg in stream:
        if msg.event.bet.bet_id == bet.bet_id:
            seen.append(msg.event.bet.status)
        if seen and seen[-1] != bet_pb2.BET_STATUS_PENDING:
            break
    stream.cancel()
    assert seen == [bet_pb2.BET_STATUS_PENDING, bet_pb2.BET_STATUS_ACCEPTED]

    async def stored() -> list[tuple[str, str]]:
        nc = await nats.connect(env.nats_url)
        js = nc.jetstream()
        sub = await js.subscribe(f"bets.p11.{bet.bet_id}", ordered_consumer=True)
        out = []
        for _ in range(2):
            msg = await sub.next_msg(timeout=10)
            out.append((msg.headers["Nats-Msg-Id"], bet_pb2.BetEvent.FromString(msg.data).bet.bet_id))  # type: ignore[index]
        await nc.close()
        return out

    got = asyncio.run(stored())
    assert got == [(f"{bet.bet_id}:pending:0", bet.bet_id), (f"{bet.bet_id}:accepted:0", bet.bet_id)]
    wait_for(
        lambda: env.sql("SELECT count(*) FROM betting.outbox WHERE published_at IS NULL") == [(0,)], 10, what="relayed"
    )


def test_watchbets_sends_a_heartbeat_when_nothing_changes_and_refuses_a_bad_one(env: Env) -> None:
    stream = env.bets.WatchBets(bs.WatchBetsRequest(heartbeat=Duration(seconds=1)), metadata=md("p12h"), timeout=30)
    t0 = time.monotonic()
    beat = next(stream)
    waited = time.monotonic() - t0
    stream.cancel()
    assert not beat.HasField("event") and 0.5 < waited < 20, waited
    bad = bs.WatchBetsRequest(heartbeat=Duration(nanos=100_000_000))
    code, msg, details = _refused(lambda: next(env.bets.WatchBets(bad, metadata=md("p12h"), timeout=10)))
    fields = [v.field for d in details for v in getattr(d, "field_violations", [])]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["heartbeat"], (code, msg)


def test_an_event_jetstream_refuses_does_not_hold_up_the_others(env: Env) -> None:
    """An outbox row JetStream cannot take (its subject is in no stream) stays unpublished, is
    counted and tried again, while the events behind it are published."""
    deposit(env, "p45", 10_000, "p45-d")
    env.sql("INSERT INTO betting.outbox (subject, msg_id, payload) VALUES ('nowhere.p45', 'p45-refused', '\\x00')")
    try:
        env.send(fixture("b45"))
        priced(env, "b45")
        odds, _ = env.price("b45", ONE, "home")
        bet = place(env, "p45", "p45-b", [selection("b45", ONE, "home", odds)], 100)
        unpublished = "SELECT count(*) FROM betting.outbox WHERE msg_id LIKE %s AND published_at IS NULL"
        wait_for(lambda: env.sql(unpublished, f"{bet.bet_id}:%") == [(0,)], 15, what="the bet's event published")
        assert env.sql(unpublished, "p45-refused") == [(1,)]
        port = env.betting.spec.env["LIVEBET_METRICS_PORT"]

        def refusals() -> float:
            return metric(port, "livebet_bets_outbox_publish_failures_total")

        seen = refusals()
        assert seen >= 1
        # alone in its rounds now, it is still counted as refused (not taken for NATS being down),
        # and tried again later each time (1 s, 2 s, 4 s ...), not in every round
        wait_for(lambda: refusals() >= seen + 2, 15, what="the refused event counted again on its own")
        ((attempts, wait),) = env.sql(
            "SELECT attempts, extract(epoch FROM retry_at - now()) FROM betting.outbox WHERE msg_id = 'p45-refused'"
        )
        assert attempts >= 3 and 0 < wait <= 2 ** (attempts - 1)
        assert refusals() - seen <= attempts  # at most one attempt per retry, none in between
    finally:
        env.sql("DELETE FROM betting.outbox WHERE msg_id = 'p45-refused'")


def test_bet_events_flow_again_after_the_bets_stream_was_deleted(env: Env) -> None:
    """The BETS stream deleted while the service runs: the next bet's event is refused (no stream
    takes it), the relay creates the stream again, and the event is published at its next attempt."""

    async def delete_stream() -> None:
        nc = await nats.connect(env.nats_url)
        await nc.jetstream().delete_stream("BETS")
        await nc.close()

    deposit(env, "p46", 10_000, "p46-d")
    env.send(fixture("b46"))
    priced(env, "b46")
    odds, _ = env.price("b46", ONE, "home")
    port = env.betting.spec.env["LIVEBET_METRICS_PORT"]
    refused_before = metric(port, "livebet_bets_outbox_publish_failures_total")
    asyncio.run(delete_stream())
    bet = place(env, "p46", "p46-b", [selection("b46", ONE, "home", odds)], 100)
    unpublished = "SELECT count(*) FROM betting.outbox WHERE msg_id LIKE %s"
    wait_for(lambda: env.sql(unpublished, f"{bet.bet_id}:%") == [(0,)], 20, what="the bet's event published")
    # it was refused first (the stream was gone), and put back to be tried again
    assert metric(port, "livebet_bets_outbox_publish_failures_total") > refused_before

    async def stored() -> list[str]:
        nc = await nats.connect(env.nats_url)
        sub = await nc.jetstream().subscribe(f"bets.p46.{bet.bet_id}", ordered_consumer=True)
        msg = await sub.next_msg(timeout=10)
        await nc.close()
        return [msg.headers["Nats-Msg-Id"]]  # type: ignore[index]

    assert asyncio.run(stored())[0].startswith(bet.bet_id)
    assert "the BETS stream was missing and has been created again" in env.betting.log_path.read_text()


def test_list_bets_pages_newest_first(env: Env) -> None:
    env.send(fixture("b12"))
    priced(env, "b12")
    deposit(env, "p12", 10_000, "p12-d")
    odds, _ = env.price("b12", ONE, "home")
    ids = [place(env, "p12", f"p12-{i}", [selection("b12", ONE, "home", odds)], 100).bet_id for i in range(5)]
    page = env.bets.ListBets(bs.ListBetsRequest(page_size=2), metadata=md("p12"), timeout=10)
    got = [b.bet_id for b in page.bets]
    while page.next_page_token:
        page = env.bets.ListBets(
            bs.ListBetsRequest(page_size=2, page_token=page.next_page_token), metadata=md("p12"), timeout=10
        )
        got += [b.bet_id for b in page.bets]
    assert got == list(reversed(ids))
    code, _, details = _refused(
        lambda: env.bets.ListBets(bs.ListBetsRequest(page_token="garbage!"), metadata=md("p12"), timeout=10)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details[0].field_violations[0].field == "page_token"  # type: ignore[attr-defined]


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_ODDS = st.one_of(
    st.sampled_from(["", "1.00", "1.01", "2.10", "NaN", "inf", "-2", "1e5", "2.001", "999999.99", "0x10", " 2.0"]),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    _TEXT,
)
_MONEY = st.builds(
    dict,
    currency_code=st.sampled_from(["EUR", "JPY", "KWD", "", "eur", "XXX"]) | _TEXT,
    minor_units=st.integers(-(2**63), 2**63 - 1),
    decimal=st.sampled_from(["", "1", "1.5", "0.001", "NaN", "-1", "1e3", "99999999999999999"]) | _TEXT,
)


_KEYS = st.sampled_from([ONE, "total|total=2.5", "btts", "", "correct_score", "total|total=2", "next_goal"]) | _TEXT
_OUTCOMES = st.sampled_from(["home", "draw", "over", "yes", "", "0-0", "1-1|x"]) | _TEXT


@st.composite
def _requests(draw: st.DrawFn) -> bs.PlaceBetRequest:
    sels = []
    for _ in range(draw(st.integers(0, 22))):
        s = selection(
            draw(st.sampled_from(["b1", "b2", "nope", ""]) | _TEXT),
            draw(_KEYS),
            draw(_OUTCOMES),
            draw(_ODDS),
            draw(st.integers(0, 2**64 - 1)),
        )
        sels.append(s)
    req = bs.PlaceBetRequest(
        request_id=draw(st.sampled_from(["fz1", "fz2", ""]) | _TEXT),
        selections=sels,
        stake=draw(_MONEY),  # type: ignore[arg-type]
        odds_change_policy=draw(st.integers(0, 6)),  # type: ignore[arg-type]
    )
    if draw(st.booleans()):  # a bet builder
        req.bet_builder_odds.decimal = draw(_ODDS)
    return req


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=_requests())
def test_no_placebet_request_yields_internal_or_unknown(env: Env, req: bs.PlaceBetRequest) -> None:
    try:
        env.bets.PlaceBet(req, metadata=md("fuzz"), timeout=10)
    except grpc.RpcError as err:
        assert err.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), err.details()


def test_an_oversized_request_is_refused_before_it_is_read(env: Env) -> None:
    big = bs.PlaceBetRequest(
        request_id="big", selections=[selection("b1", ONE, "home", "2.00")] * 200_000, stake=eur(100)
    )
    code, _, _ = _refused(lambda: env.bets.PlaceBet(big, metadata=md("big"), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_player_sets_own_stake_limits(env: Env) -> None:
    env.send(fixture("b13"))
    priced(env, "b13")
    deposit(env, "p13", 10_000, "p13-d")
    odds, _ = env.price("b13", ONE, "home")
    r = env.wallet.SetStakeLimits(
        ws.SetStakeLimitsRequest(max_stake=eur(500), max_daily_stake=eur(800)), metadata=md("p13"), timeout=10
    )
    assert r.max_stake.decimal == "5.00" and r.max_daily_stake.decimal == "8.00"
    _, msg, details = _refused(lambda: place(env, "p13", "p13-a", [selection("b13", ONE, "home", odds)], 600))
    assert details[0].reason == "REJECT_REASON_ACCOUNT_LIMIT" and "5.00" in msg  # type: ignore[attr-defined]
    place(env, "p13", "p13-b", [selection("b13", ONE, "home", odds)], 500)
    _, msg, details = _refused(lambda: place(env, "p13", "p13-c", [selection("b13", ONE, "home", odds)], 400))
    assert details[0].reason == "REJECT_REASON_ACCOUNT_LIMIT" and "24 hours" in msg  # type: ignore[attr-defined]
    code, _, _ = _refused(
        lambda: env.wallet.SetStakeLimits(
            ws.SetStakeLimitsRequest(max_stake=eur(10**9)), metadata=md("p13"), timeout=10
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # above the operator's own limit
