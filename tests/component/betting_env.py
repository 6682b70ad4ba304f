"""A betting environment on real servers for the component tests: NATS, Valkey, PostgreSQL, the
feed, the pricing engine and the betting service, plus helpers to call it as an account and to
check the ledger's invariants."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import psycopg
from livebet.betting.v1 import bet_pb2, betting_service_pb2_grpc, wallet_service_pb2_grpc
from livebet.betting.v1 import betting_service_pb2 as bs
from livebet.betting.v1 import wallet_service_pb2 as ws
from livebet.common.v1 import common_pb2
from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc
from livebet.odds.v1 import market_pb2, trader_service_pb2_grpc

from tests.conftest import Server, start_nats, start_postgres, start_valkey
from tests.helpers import Proc, admin_channel, feed_channel, service_spec, wait_for

IN_PLAY_DELAY = 1.5


@dataclass
class Env:
    feed: feed_service_pb2_grpc.FeedServiceStub
    bets: betting_service_pb2_grpc.BettingServiceStub
    wallet: wallet_service_pb2_grpc.WalletServiceStub
    trader: trader_service_pb2_grpc.TraderServiceStub
    betting: Proc
    dsn: str
    nats_url: str
    redis_url: str
    target: str
    servers: list[Server]
    procs: list[Proc]

    def send(self, *events: ev.FeedEvent) -> None:
        self.feed.PublishBatch(fs.PublishBatchRequest(provider="push", events=list(events)), timeout=10)

    def snapshot(self, match_id: str) -> market_pb2.MatchOdds | None:
        import redis

        raw = redis.Redis.from_url(self.redis_url).get("odds:snap:" + match_id)
        return market_pb2.MatchOdds.FromString(raw) if raw else None  # type: ignore[arg-type]

    def price(self, match_id: str, market_key: str, outcome: str) -> tuple[str, int]:
        snap = self.snapshot(match_id)
        assert snap is not None
        for m in snap.markets:
            if m.ref.market_key == market_key:
                for o in m.outcomes:
                    if o.outcome_id == outcome:
                        return o.odds.decimal, m.version
        raise AssertionError(f"{match_id} has no {market_key} {outcome}")

    def settlement_metrics_port(self) -> str:
        """The settlement process's /metrics port (when the environment has one)."""
        (proc,) = [p for p in self.procs if p.spec.name == "settlement"]
        return proc.spec.env["LIVEBET_METRICS_PORT"]

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, args)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def published(self, subject: str) -> list[str]:
        """The ids (``Nats-Msg-Id``) of the events on ``subject`` in the JetStream stream ``BETS``,
        in stream order, once the outbox has none left to publish. The relay takes published
        events off the outbox, so the stream is where an event written twice would show."""
        wait_for(lambda: self.sql("SELECT count(*) FROM betting.outbox") == [(0,)], 20, what="outbox relayed")

        async def read() -> list[str]:
            nc = await nats.connect(self.nats_url)
            try:
                js = nc.jetstream()
                info = await js.stream_info("BETS", subjects_filter=subject)
                stored = sum((info.state.subjects or {}).values())
                sub = await js.subscribe(subject, ordered_consumer=True)
                msgs = [await sub.next_msg(timeout=10) for _ in range(stored)]
                return [m.headers["Nats-Msg-Id"] for m in msgs if m.headers]
            finally:
                await nc.close()

        return asyncio.run(read())

    def counts(self) -> tuple[int, int, int, int]:
        """Rows in bets, selections, ledger transactions and postings."""
        (row,) = self.sql(
            "SELECT (SELECT count(*) FROM betting.bets), (SELECT count(*) FROM betting.selections),"
            " (SELECT count(*) FROM betting.transactions), (SELECT count(*) FROM betting.postings)"
        )
        return row  # type: ignore[return-value]

    def check_ledger(self) -> None:
        """Every transaction balances, every currency sums to zero, every balance equals the replay of
        its postings (and the balance recorded after each posting), no player or held balance < 0."""
        assert self.sql("SELECT transaction_id FROM betting.postings GROUP BY 1 HAVING sum(amount) <> 0") == []
        assert self.sql("SELECT currency FROM betting.ledger_accounts GROUP BY 1 HAVING sum(balance) <> 0") == []
        assert (
            self.sql(
                """SELECT a.account_id FROM betting.ledger_accounts a
                   LEFT JOIN (SELECT account_id, sum(amount) AS s FROM betting.postings GROUP BY 1) p USING (account_id)
                   WHERE a.balance <> coalesce(p.s, 0)"""
            )
            == []
        )
        assert (
            self.sql(
                """SELECT posting_id FROM (
                     SELECT posting_id, balance_after,
                            sum(amount) OVER (PARTITION BY account_id ORDER BY posting_id) AS replay
                     FROM betting.postings) x WHERE balance_after <> replay"""
            )
            == []
        )
        assert self.sql("SELECT 1 FROM betting.ledger_accounts WHERE kind IN ('player', 'held') AND balance < 0") == []


def md(account: str) -> tuple[tuple[str, str], ...]:
    return (("x-livebet-account", account),)


def eur(units: int) -> common_pb2.Money:
    return common_pb2.Money(currency_code="EUR", minor_units=units)


def deposit(env: Env, account: str, units: int, request_id: str) -> ws.DepositResponse:
    return env.wallet.Deposit(
        ws.DepositRequest(request_id=request_id, amount=eur(units)), metadata=md(account), timeout=10
    )


def selection(match_id: str, market_key: str, outcome: str, odds: str, version: int = 0) -> bet_pb2.Selection:
    s = bet_pb2.Selection(market_version=version)
    s.outcome.market.match_id = match_id
    s.outcome.market.market_key = market_key
    s.outcome.market.market_type = market_key.split("|")[0]
    s.outcome.outcome_id = outcome
    s.requested_odds.decimal = odds
    return s


def place(
    env: Env,
    account: str,
    request_id: str,
    selections: list[bet_pb2.Selection],
    stake: int,
    policy: int = bet_pb2.ODDS_CHANGE_POLICY_NONE,
) -> bet_pb2.Bet:
    req = bs.PlaceBetRequest(request_id=request_id, selections=selections, stake=eur(stake), odds_change_policy=policy)
    return env.bets.PlaceBet(req, metadata=md(account), timeout=10).bet


def balance(env: Env, account: str) -> tuple[int, int]:
    r = env.wallet.GetBalance(ws.GetBalanceRequest(currency_code="EUR"), metadata=md(account), timeout=10)
    return r.available.minor_units, r.held.minor_units


def start(root: Path, name: str, extra_env: dict[str, str] | None = None, settlement: bool = False) -> Iterator[Env]:
    n, r, p = start_nats(root, f"nats-{name}"), start_valkey(root, f"redis-{name}"), start_postgres(root, f"pg-{name}")
    env = {
        "LIVEBET_NATS_URL": n.url,
        "LIVEBET_REDIS_URL": r.url,
        "LIVEBET_POSTGRES_DSN": p.url,
        "LIVEBET_FEED_PROVIDER_SILENCE_SECONDS": "300",
        "LIVEBET_FEED_MATCH_SILENCE_SECONDS": "3600",
        "LIVEBET_BETTING_IN_PLAY_DELAY": f"football={IN_PLAY_DELAY}",
        **(extra_env or {}),
    }
    procs = [
        Proc(service_spec("feed", "feed.server", env), root / f"{name}-feed.log").start(),
        Proc(service_spec("pricing", "pricing.server", env), root / f"{name}-pricing.log").start(),
        Proc(service_spec("betting", "betting.server", env), root / f"{name}-betting.log").start(),
    ]
    if settlement:
        procs.append(
            Proc(service_spec("settlement", "settlement.server", env), root / f"{name}-settlement.log").start()
        )
    feed, pricing = feed_channel(procs[0].spec.health_target), admin_channel(procs[1].spec.health_target)
    betting = grpc.insecure_channel(procs[2].spec.health_target)
    out = Env(
        feed_service_pb2_grpc.FeedServiceStub(feed),
        betting_service_pb2_grpc.BettingServiceStub(betting),
        wallet_service_pb2_grpc.WalletServiceStub(betting),
        trader_service_pb2_grpc.TraderServiceStub(pricing),
        procs[2],
        p.url,
        n.url,
        r.url,
        procs[2].spec.health_target,
        [n, r, p],
        procs,
    )
    yield out
    for proc in reversed(procs):
        proc.stop()
    for s in (p, r, n):
        s.proc.stop()


def priced(env: Env, match_id: str, minute: int | None = None) -> None:
    def ok() -> bool:
        s = env.snapshot(match_id)
        return s is not None and (minute is None or s.minute == minute)

    wait_for(ok, 30, what=f"{match_id} priced")


def state_event(match_id: str, seq: int, minute: int, home: int = 0, away: int = 0) -> ev.FeedEvent:
    from tests.component.test_feed_service import state

    return state(match_id, seq, home, away, minute)
