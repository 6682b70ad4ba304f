"""The settlement service process: ``python -m settlement.server``.

Depends on PostgreSQL (its schema ``settlement``; the money moves through ``betting.settle_market``)
and NATS. It consumes the FEED stream through the durable consumer ``settlement`` (explicit acks,
each event acknowledged after it was recorded and what it decided was settled), so a restart or a
second replica picks up where the last acknowledgement was, and settling again changes nothing.

SettlementService (manual settle, void, rollback): :mod:`settlement.admin`; ReportService:
:mod:`settlement.reports`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats.errors
import psycopg
from google.protobuf.message import DecodeError
from livebet.feed.v1 import event_pb2 as ev
from livebet.settlement.v1 import report_service_pb2_grpc, settlement_service_pb2_grpc
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import Counter, Gauge, Histogram

from feed.adapters.jetstream import STREAM, ensure_stream
from mesh import tracing
from mesh.deps import NatsDependency, PostgresDependency, Readiness
from mesh.metrics import LATENCY_BUCKETS
from mesh.service import ServiceApp, run
from mesh.settings import seconds
from mesh.tasks import cancel_and_wait
from settlement.adapters.store import Store
from settlement.admin import SettlementApi
from settlement.reports import ReportApi
from settlement.service import Settler, certainty_setting, stale_match_seconds

MIGRATIONS = Path(__file__).with_name("migrations")
DURABLE = "settlement"
BATCH = 200
ACK_WAIT = 6.0
ATTEMPTS = 3  # an event failing this often for a reason of its own is parked (failed_events)
RETRY_SECONDS = 0.5  # between those attempts, doubling
STALE_CHECK_SECONDS = 60.0  # how often the open bets nothing will settle are counted
log = logging.getLogger("settlement")


def transient(err: BaseException) -> bool:
    """A dependency that is down or busy (PostgreSQL lost, a deadlock or serialization failure,
    NATS lost, a timeout): retried without end, never a reason to park an event."""
    return isinstance(err, psycopg.OperationalError | nats.errors.Error | OSError)


async def _keep_in_progress(msg: Msg) -> None:
    while True:
        await asyncio.sleep(ACK_WAIT / 3)
        with contextlib.suppress(Exception):
            await msg.in_progress()


def build(app: ServiceApp) -> None:
    s = app.settings
    pg = app.add_dependency(PostgresDependency(s.postgres_dsn, MIGRATIONS, "settlement", s.health_interval_seconds))
    nats_dep = app.add_dependency(NatsDependency(s.nats_url, s.instance, s.health_interval_seconds))
    ready = app.add_dependency(Readiness("consumer"))
    settler = Settler(Store(pg), certainty_setting())
    registry = app.metrics.registry
    settled = Counter("livebet_settlement_bets_settled_total", "Bets settled from feed results.", registry=registry)
    handled = Histogram(
        "livebet_settlement_event_seconds",
        "Time to apply one FEED event (result, settlement, cancel, rollback) until it is in PostgreSQL.",
        ["kind"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    failed = Counter(
        "livebet_settlement_events_failed_total",
        "FEED events settlement could not apply, parked in settlement.failed_events (python -m settlement.failed).",
        registry=registry,
    )
    stale_bets = Gauge(
        "livebet_settlement_stale_open_bets",
        "Accepted bets open on matches seen in play, not ended, with no state update for "
        "LIVEBET_SETTLEMENT_STALE_MATCH_SECONDS: nothing will settle them; a trader must settle or void.",
        registry=registry,
    )
    stale_matches = Gauge(
        "livebet_settlement_stale_matches",
        "Matches with such bets (see livebet_settlement_stale_open_bets).",
        registry=registry,
    )
    swept = Counter(
        "livebet_settlement_swept_bets_total",
        "Bets of several legs found decided yet open and settled by the sweep (Store.settle_decided): "
        "should stay 0; anything else is a bug to look into.",
        registry=registry,
    )
    stale_after = stale_match_seconds()
    sweep_every = seconds(os.environ, "LIVEBET_SETTLEMENT_SWEEP_SECONDS", STALE_CHECK_SECONDS)
    settle = SettlementApi(settler, pg)
    reports = ReportApi(pg)
    app.add_service(
        "livebet.settlement.v1.SettlementService",
        settle,
        settlement_service_pb2_grpc.add_SettlementServiceServicer_to_server,
    )
    app.add_service(
        "livebet.settlement.v1.ReportService", reports, report_service_pb2_grpc.add_ReportServiceServicer_to_server
    )

    async def consume() -> None:
        js = nats_dep.js
        await ensure_stream(js)
        # a short ack wait so that what a killed settler had in hand comes back within seconds; a
        # long settlement keeps its message with in-progress acks
        config = ConsumerConfig(
            durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=BATCH * 2, ack_wait=ACK_WAIT
        )
        # create the consumer, or bring an existing one to this configuration (e.g. its ack wait)
        await js.add_consumer(STREAM, dataclasses.replace(config, filter_subject="feed.>"))
        sub = await js.pull_subscribe("feed.>", durable=DURABLE, stream=STREAM, config=config)
        ready.set()
        while not app.stopping.is_set():
            try:
                msgs = await sub.fetch(BATCH, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:  # in stream order; each acknowledged once its effect is in PostgreSQL
                keep = asyncio.create_task(_keep_in_progress(msg))
                try:
                    await apply(msg)
                finally:
                    keep.cancel()
                await msg.ack()

    async def apply(msg: Msg) -> None:
        """Apply one event; one it cannot apply (not a FeedEvent, or failing ``ATTEMPTS`` times
        for a reason that is not a dependency being down) is parked in ``failed_events``, logged
        and counted, and settlement goes on with the next. A dependency that is down raises: the
        consumer starts again and the event comes back."""
        seq = msg.metadata.sequence.stream
        e = ev.FeedEvent()
        for attempt in range(1, ATTEMPTS + 1):
            before, started = settler.settled_bets, time.perf_counter()
            try:
                e = ev.FeedEvent.FromString(msg.data)
                with tracing.span("settlement.apply", tracing.extract(msg.headers), match_id=e.match_id):
                    await settler.on_event(e, seq)
            except Exception as err:
                if transient(err):
                    raise
                if attempt < ATTEMPTS and not isinstance(err, DecodeError):
                    await asyncio.sleep(RETRY_SECONDS * 2 ** (attempt - 1))
                    continue
                kind = e.WhichOneof("payload") or ""
                await settler.store.park(
                    seq, msg.subject, msg.data, f"{type(err).__name__}: {err}", attempt, e.match_id, e.event_id, kind
                )
                failed.inc()
                log.error(
                    "FEED event parked: settlement cannot apply it (python -m settlement.failed lists it)",
                    exc_info=err,
                    extra={"stream_seq": seq, "event_id": e.event_id, "match_id": e.match_id, "attempts": attempt},
                )
                return
            handled.labels(e.WhichOneof("payload") or "none").observe(time.perf_counter() - started)
            settled.inc(settler.settled_bets - before)
            return

    async def supervise() -> None:
        delay = 0.2
        while not app.stopping.is_set():
            try:
                await consume()
            except asyncio.CancelledError:
                raise
            except Exception:
                ready.set(False)
                log.warning("settlement consumer stopped; restarting it", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def every(seconds: float, what: str, step: Callable[[], Awaitable[None]]) -> None:
        """``step`` now and then every ``seconds`` until shutdown; a PostgreSQL error is logged (health
        says PostgreSQL is down) and the next round tries again."""
        while not app.stopping.is_set():
            try:
                await step()
            except psycopg.Error as err:
                log.warning(f"could not {what}", extra={"error": str(err)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(app.stopping.wait(), seconds)

    async def count_stale() -> None:
        """The open bets nothing will settle (``Store.stale_open_bets``)."""
        bets, matches = await settler.store.stale_open_bets(stale_after)
        stale_bets.set(bets)
        stale_matches.set(matches)

    async def sweep_decided() -> None:
        """Bets decided yet open, settled (``Store.settle_decided``)."""
        n = await settler.store.settle_decided()
        if n:
            swept.inc(n)
            log.warning("bets decided but left open were settled by the sweep", extra={"bets": n})

    async def start() -> None:
        await pg.wait_ready()
        await nats_dep.wait_ready()
        app.spawn(every(STALE_CHECK_SECONDS, "count stale open bets", count_stale))
        app.spawn(every(sweep_every, "sweep decided bets", sweep_decided))
        task = app.spawn(supervise())
        app.spawn(app.metrics.watch_consumers(lambda: nats_dep.js, STREAM, lambda: [DURABLE], app.stopping))

        async def stop() -> None:
            await cancel_and_wait(task)

        app.on_stop(stop)

    async def on_start() -> None:
        app.spawn(start())

    app.on_start(on_start)


if __name__ == "__main__":
    run("settlement", build)
