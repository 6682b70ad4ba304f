"""The outbox relay: bet events written in the same transaction as the change they report are
published to the JetStream stream ``BETS`` (subjects ``bets.<account>.<bet_id>``) with
``Nats-Msg-Id`` = the event id, and taken off the outbox in the transaction that took them for
publishing, which commits once JetStream has acknowledged them.

At-least-once: a relay that dies after publishing and before committing leaves the events in the
outbox, they are published again, and the stream's duplicate window (10 minutes) drops the copy;
consumers also key on the event id. Several relays (one per betting replica) share the work with
``FOR UPDATE SKIP LOCKED``. A round's events are sent back to back on one connection and their
acknowledgements awaited together (``feed.adapters.jetstream.Pipeline``).

What wakes a relay: the betting process wakes its own once a batch of bets is committed (the
``wake`` event, set by ``PlaceBatcher.on_batch``); writers in other processes (settlement, market
rollbacks) and the delayed decisions send ``NOTIFY betting_outbox`` in their transaction, which
wakes every relay; and each relay polls every ``POLL_SECONDS`` (a bet whose process died before
publishing it is published by another replica's relay at its next poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
from livebet.betting.v1 import bet_pb2
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from opentelemetry.trace import SpanKind
from psycopg_pool import AsyncConnectionPool

from betting.adapters.store import bet_proto, money
from betting.metrics import BetMetrics
from feed.adapters import jetstream
from feed.adapters.jetstream import Pipeline
from mesh import tracing
from mesh.settings import jetstream_replicas
from mesh.tasks import cancel_and_wait
from pricing.live.codec import length_delimited

log = logging.getLogger("betting.outbox")
#: what JetStream or the client says about an event itself: no stream takes its subject, a bad
#: request (too large), a payload over the server's limit, a malformed subject
REFUSALS = (
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.BadRequestError,
    nats.errors.MaxPayloadError,
    nats.errors.BadSubjectError,
)
STREAM = "BETS"
#: bet events (bets.<account>.<bet>) and the settlement service's SettlementEvents (settlements.<match>)
SUBJECT_PREFIXES = ("bets.", "settlements.")
#: an event refused is tried again after 1 s, then 2, 4 ... at most a minute apart
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
BATCH = 500
POLL_SECONDS = 1.0
COALESCE_SECONDS = 0.05


def stream_config(replicas: int | None = None) -> StreamConfig:
    replicas = replicas or jetstream_replicas()
    return StreamConfig(
        name=STREAM,
        subjects=[prefix + ">" for prefix in SUBJECT_PREFIXES],
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=600.0,
        max_age=30 * 24 * 3600.0,
        discard=DiscardPolicy.OLD,
    )


async def ensure_stream(js: JetStreamContext) -> None:
    await jetstream.ensure_stream(js, stream_config())


async def relay_once(
    pool: AsyncConnectionPool, pipeline: Pipeline, failed: Callable[[str, BaseException], None] | None = None
) -> int:
    """Publish one batch of unpublished events in order; how many were taken (published or not).

    The round takes its events off the outbox (``DELETE … RETURNING``, ``SKIP LOCKED`` so that
    relays share the work) and publishes them before it commits: events published are gone with
    the commit, and a round that fails (the relay or PostgreSQL died, NATS is down) rolls back and
    leaves every event of it where it was (at-least-once; JetStream drops a copy by its id).

    An event JetStream refuses (a subject no stream takes, a message too large: ``REFUSALS``), or
    that fails while others of the round go through, is put back as it was, is reported to
    ``failed`` with its error and is tried again later (``retry_at``: 1 s, then doubling up to a
    minute): it does not hold up the events behind it, nor take their places in the rounds
    meanwhile. Refused because the ``BETS`` stream is gone, it has the stream created again. When
    none goes through for another reason (the connection), NATS itself is the trouble: the round
    raises and nothing changes."""
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute(TAKE, (BATCH,))
        found = sorted(await cur.fetchall())  # by id: the order the events were written in
        if not found:
            return 0
        built = await _events(cur, [(r[0], r[2], r[6]) for r in found if r[3] is None])
        # sent in order on one connection, so stored in order; the acks are awaited together
        with contextlib.ExitStack() as spans:
            messages = []
            for r in found:
                headers = {"Nats-Msg-Id": r[2]}
                if r[7]:  # a traced bet: its event's publish is a span of the bet's trace
                    spans.enter_context(
                        tracing.span(
                            "betting.outbox.publish",
                            tracing.extract({"traceparent": r[7]}),
                            kind=SpanKind.PRODUCER,
                        )
                    )
                    headers = tracing.inject(headers)
                data = built[r[0]] if r[3] is None else _with_balance(bytes(r[3]), r[4], r[5])
                messages.append((r[1], data, headers))
            sent = await pipeline.send(messages)
        refused = [(r, err) for i, r in enumerate(found) if (err := sent.error(i)) is not None]
        if len(refused) == len(found) and not all(isinstance(err, REFUSALS) for _, err in refused):
            raise refused[0][1]  # none went through, not for its own reasons: NATS itself is the trouble
        for r, err in refused:
            (failed or _log_failure)(r[2], err)
            if isinstance(err, nats.js.errors.NoStreamResponseError) and r[1].startswith(SUBJECT_PREFIXES):
                await _restore_stream(pipeline.nc.jetstream())
        if refused:  # back in the outbox as they were, under the same id, to be tried again later
            await cur.executemany(PUT_BACK, [(*r, RETRY_FIRST_SECONDS, r[9], RETRY_MAX_SECONDS) for r, _ in refused])
        return len(found)


#: a round's events, taken off the outbox (the columns PUT_BACK writes back, in its order)
TAKE = (
    "DELETE FROM betting.outbox WHERE id IN ("
    " SELECT id FROM betting.outbox WHERE published_at IS NULL AND (retry_at IS NULL OR retry_at <= now())"
    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
    " RETURNING id, subject, msg_id, payload, balance, currency, bet_id, traceparent, created_at, attempts"
)
#: a refused event, written back with one more attempt and when to try it again
PUT_BACK = (
    "INSERT INTO betting.outbox"
    " (id, subject, msg_id, payload, balance, currency, bet_id, traceparent, created_at, attempts, retry_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s + 1,"
    " now() + least(%s * power(2, %s), %s) * interval '1 second')"
)


_last: dict[str, float] = {}  # what was last done when (_once_a_minute)


def _once_a_minute(what: str) -> bool:
    """Whether ``what`` (the stream's restoration, an event's log line) was not done in the last
    minute; if so, it counts as done now."""
    now = time.monotonic()
    if now - _last.get(what, -60.0) < 60.0:
        return False
    if len(_last) > 10_000:
        _last.clear()
    _last[what] = now
    return True


async def _restore_stream(js: JetStreamContext) -> None:
    """No stream takes ``bets.>`` or ``settlements.>`` any more (the stream was deleted while the
    service ran, or a replica of an older version set it up without a subject): create it again,
    as the service does at start (at most once a minute), so bet events flow again without a
    restart. The events refused meanwhile are published at their next attempt."""
    if not _once_a_minute("restore the stream"):
        return
    try:
        await ensure_stream(js)
    except Exception as err:  # NATS is in trouble: the next attempt tries again
        log.warning("could not create the BETS stream again", extra={"error": repr(err)})
        return
    log.error("the BETS stream was missing and has been created again; bet events refused meanwhile follow")


def _log_failure(msg_id: str, err: BaseException) -> None:
    """Log a refused event, at most once a minute each (it is tried again up to once a second)."""
    if _once_a_minute(msg_id):
        log.error(
            "an outbox event was refused by JetStream; it stays unpublished and is tried again",
            extra={"msg_id": msg_id, "error": repr(err)},
        )


async def _events(cur: psycopg.AsyncCursor[Any], wanted: list[tuple[int, str, Any]]) -> dict[int, bytes]:
    """Events written without a payload (by set-based SQL such as betting.settle_market), as
    (outbox id, msg id, bet id): built here from the bet as it is, with the player's balance."""
    if not wanted:
        return {}
    await cur.execute(
        """SELECT b.bet_id, to_jsonb(b) AS bet, a.balance
           FROM betting.bets b
           LEFT JOIN betting.ledger_accounts a ON a.account_id = 'player:' || b.account_id || ':' || b.currency
           WHERE b.bet_id = ANY(%s::uuid[])""",
        (list({bet_id for _, _, bet_id in wanted}),),
    )
    bets = {bet_id: (bet, balance) for bet_id, bet, balance in await cur.fetchall()}
    await cur.execute(
        "SELECT to_jsonb(s) FROM betting.selections s WHERE bet_id = ANY(%s::uuid[]) ORDER BY bet_id, leg",
        (list(bets),),
    )
    legs: dict[str, list[dict[str, Any]]] = {}
    for (leg,) in await cur.fetchall():
        leg["requested_odds"], leg["odds"] = Decimal(str(leg["requested_odds"])), Decimal(str(leg["odds"]))
        legs.setdefault(leg["bet_id"], []).append(leg)
    out = {}
    for outbox_id, msg_id, bet_id in wanted:
        bet, balance = bets[bet_id]
        bet = {**bet, "odds": Decimal(str(bet["odds"]))}
        for name in ("placed_at", "decided_at", "settled_at", "decide_at"):
            bet[name] = datetime.fromisoformat(bet[name]) if bet[name] else None
        proto = bet_proto(bet, legs.get(bet["bet_id"], []))
        event = bet_pb2.BetEvent(event_id=msg_id, bet=proto)
        event.occurred_at.GetCurrentTime()
        if balance is not None:
            event.balance.CopyFrom(money(int(balance), bet["currency"]))
        out[outbox_id] = event.SerializeToString()
    return out


def _with_balance(payload: bytes, balance: int | None, currency: str | None) -> bytes:
    """Events written by ``betting.place_bet`` carry the balance beside them (their payload has
    none): put it in. Appending a field to a message's bytes is how protobuf sets it, so the event
    is not parsed and written again."""
    if balance is None or currency is None:
        return payload
    value = money(balance, currency).SerializeToString()
    return payload + length_delimited(bet_pb2.BetEvent.BALANCE_FIELD_NUMBER, value)


async def run_relay(
    pool: AsyncConnectionPool,
    dsn: str,
    js_of: object,
    stopping: asyncio.Event,
    wake: asyncio.Event | None = None,
    metrics: BetMetrics | None = None,
) -> None:
    """Relay until ``stopping``; survives NATS or PostgreSQL outages (retries with backoff).
    ``wake``: set by this process when it wrote events (see the module's doc)."""
    wake = wake if wake is not None else asyncio.Event()

    def failed(msg_id: str, err: BaseException) -> None:
        if metrics is not None:
            metrics.outbox_failures.inc()
        _log_failure(msg_id, err)

    async def listen() -> None:
        while not stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute("LISTEN betting_outbox")
                    async for _ in conn.notifies():
                        wake.set()
            except (psycopg.Error, OSError):
                await asyncio.sleep(1.0)

    listener = asyncio.create_task(listen())
    pipeline = Pipeline(js_of.nc)  # type: ignore[attr-defined]
    delay = 0.2
    try:
        while not stopping.is_set():
            wake.clear()  # before the round: events written during it wake the next one at once
            try:
                sent = await relay_once(pool, pipeline, failed)
                delay = 0.2
                if sent == BATCH:
                    continue
                await _cleanup(pool)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("outbox relay failed; retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL_SECONDS)
            # events come in bursts (every batch of bets wakes it): gather 50 ms of them into one
            # round instead of a transaction and a JetStream round trip per event or two (a round
            # costs ~1 ms of CPU here and ~0.6 ms in PostgreSQL whatever its size); a bet's event
            # reaches BETS and WatchBets ~50 ms after its commit, its PlaceBet answer at once
            await asyncio.sleep(COALESCE_SECONDS)
    finally:
        await cancel_and_wait(listener)


_last_cleanup = 0.0


async def _cleanup(pool: AsyncConnectionPool) -> None:
    """Drop events an earlier version of the relay marked published instead of taking them off
    (at most once a minute; a replica of that version may still run during a rolling upgrade)."""
    global _last_cleanup
    now = asyncio.get_running_loop().time()
    if now - _last_cleanup < 60:
        return
    _last_cleanup = now
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM betting.outbox WHERE published_at IS NOT NULL")
