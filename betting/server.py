"""The betting service process: ``python -m betting.server``.

Depends on PostgreSQL (bets and the wallet ledger; migrations run on start), Redis (the live odds
bets are checked against) and NATS (the BETS stream the outbox relay publishes to, and WatchBets).
Besides the gRPC services it runs two loops, safe to run in every replica at once:

- the **decider**: pending in-play bets whose delay is over are accepted or rejected, each in its
  own transaction with the bet row locked (``SKIP LOCKED``), so a bet is decided exactly once even
  across replicas and restarts (a bet pending when the service stopped is decided when it is back);
- the **outbox relay** (:mod:`betting.adapters.outbox`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from livebet.betting.v1 import bet_pb2, betting_service_pb2_grpc, player_admin_service_pb2_grpc, wallet_service_pb2_grpc
from redis.exceptions import RedisError

from betting.adapters.odds import OddsView
from betting.adapters.outbox import ensure_stream, run_relay
from betting.adapters.store import STATUS_NAME, Store
from betting.auto_cashout import AutoCashOuts
from betting.domain.rules import Config
from betting.metrics import BetMetrics
from betting.player_admin import PlayerAdminApi
from betting.service import BettingApi, Decider
from betting.wallet import WalletApi
from mesh.deps import NatsDependency, PostgresDependency, RedisDependency
from mesh.service import ServiceApp, run
from mesh.tasks import cancel_and_wait

MIGRATIONS = Path(__file__).with_name("migrations")
log = logging.getLogger("betting")
MAX_SLEEP = 0.5
RETRY_FAILED_SECONDS = 5.0  # a bet whose decision failed is tried again this much later
MAX_REQUEST_BYTES = 64 * 1024  # a 20-leg bet slip is about 3 KiB


async def decide_due(
    store: Store,
    decider: Decider,
    metrics: BetMetrics | None = None,
    with_rule: Callable[[str], None] = lambda bet_id: None,
) -> int:
    """Decide the bets whose delay is over; how many. A bet whose decision fails for a reason of
    its own (not a dependency that is down) stays pending, is logged and tried again
    ``RETRY_FAILED_SECONDS`` later, and the bets behind it are decided: one bad bet (or a hundred,
    a round's worth) must not hold every player's bet pending. ``with_rule`` is told of each bet
    accepted with an automatic cash-out (the watchers take it from there)."""
    done = 0
    for bet_id in await store.due():
        try:
            bet = await store.decide(bet_id, decider)
        except (psycopg.OperationalError, RedisError, OSError):
            raise  # PostgreSQL or Redis is down: the whole round is tried again
        except Exception:
            if metrics is not None:
                metrics.decide_failures.inc()
            log.error(
                "deciding a bet failed; it stays pending and is tried again later",
                exc_info=True,
                extra={"bet_id": str(bet_id), "retry_in_seconds": RETRY_FAILED_SECONDS},
            )
            await store.postpone(bet_id, RETRY_FAILED_SECONDS)
            continue
        if bet is not None:
            done += 1
            if bet.status == bet_pb2.BET_STATUS_ACCEPTED and bet.HasField("auto_cash_out"):
                with_rule(bet.bet_id)
            if metrics is not None:
                metrics.decided(bet)
            log.info(
                "bet decided",
                extra={"bet_id": bet.bet_id, "status": STATUS_NAME[bet.status], "detail": bet.reject_detail},
            )
    return done


def build(app: ServiceApp) -> None:
    s = app.settings
    config = Config.from_env()
    app.max_receive_bytes = MAX_REQUEST_BYTES
    pg = app.add_dependency(
        PostgresDependency(
            s.postgres_dsn,
            MIGRATIONS,
            "betting",
            s.health_interval_seconds,
            max_size=20,
            autocommit=True,  # a batch of bets is one statement (betting.place_bets): no BEGIN/COMMIT round trips
            check_on_checkout=False,  # a dead connection fails UNAVAILABLE once; the client retries
        )
    )
    nats_dep = app.add_dependency(NatsDependency(s.nats_url, s.instance, s.health_interval_seconds))
    redis_dep = app.add_dependency(RedisDependency(s.redis_url, s.health_interval_seconds))
    store = Store(pg)
    metrics = BetMetrics(app.metrics.registry)
    odds = OddsView(redis_dep, reads=metrics.odds_read)
    relay_wake = asyncio.Event()  # the outbox relay: woken by each batch of bets this process commits

    def batch_written(size: int) -> None:
        metrics.batch.observe(size)
        relay_wake.set()

    store.batcher.on_batch = batch_written
    bets = BettingApi(store, odds, config, nats_dep, metrics)
    auto = AutoCashOuts(bets.cash_outs, store, metrics, nats_dep)
    bets.cash_outs.on_auto_change = auto.changed
    wallet = WalletApi(store, config)
    decider = Decider(odds, config)
    app.add_service(
        "livebet.betting.v1.BettingService", bets, betting_service_pb2_grpc.add_BettingServiceServicer_to_server
    )
    app.add_service(
        "livebet.betting.v1.WalletService", wallet, wallet_service_pb2_grpc.add_WalletServiceServicer_to_server
    )
    app.add_service(
        "livebet.betting.v1.PlayerAdminService",
        PlayerAdminApi(store),
        player_admin_service_pb2_grpc.add_PlayerAdminServiceServicer_to_server,
    )

    async def decide_loop() -> None:
        counted = 0.0  # the pending-bets gauge is refreshed once a second, not every round
        while not app.stopping.is_set():
            try:
                await decide_due(store, decider, metrics, auto.changed)
                nxt = await store.next_due()
                if time.monotonic() - counted >= 1.0:
                    metrics.pending.set(await store.pending_count())
                    counted = time.monotonic()
                wait = MAX_SLEEP
                if nxt is not None:
                    wait = min(MAX_SLEEP, max(0.0, (nxt - datetime.now(UTC)).total_seconds()))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("deciding pending bets failed; retrying", exc_info=True)
                wait = 1.0
            await asyncio.sleep(wait)

    async def auto_loop() -> None:
        while not app.stopping.is_set():
            try:
                await auto.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("watching automatic cash-outs failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)

    async def start() -> None:
        await pg.wait_ready()
        await redis_dep.wait_ready()
        await nats_dep.wait_ready()
        await ensure_stream(nats_dep.js)
        relay = run_relay(pg.pool, s.postgres_dsn, nats_dep, app.stopping, relay_wake, metrics)
        tasks = [app.spawn(decide_loop()), app.spawn(relay), app.spawn(auto_loop())]

        async def stop() -> None:
            await cancel_and_wait(*tasks)

        app.on_stop(stop)

    async def on_start() -> None:
        app.spawn(start())

    app.on_start(on_start)


if __name__ == "__main__":
    run("betting", build)
