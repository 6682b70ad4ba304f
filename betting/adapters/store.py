"""Bets and the wallet ledger in PostgreSQL (schema ``betting``, see ``migrations/``).

Every function runs one transaction: a bet row, its legs, the stake hold in the ledger, the
liability and the outbox event are written together or not at all. The database enforces what
must never break even if this code had a bug: balanced ledger transactions, player balances never
negative, append-only ledger rows, one bet per (account, request id).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import random
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import orjson
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from livebet.betting.v1 import bet_pb2
from livebet.common.v1 import common_pb2
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from betting.adapters.protection import DepositLimitExceeded, OnBreak, Suspended, check_deposit, check_withdrawal
from betting.domain.cashout import Part
from betting.domain.money import format_minor
from betting.domain.protection import loss_refusal
from betting.domain.rules import Leg, Ticket, is_builder, specifiers_of
from feed.adapters.jetstream import token
from mesh import tracing

log = logging.getLogger("betting.store")

STATUS = {
    "pending": bet_pb2.BET_STATUS_PENDING,
    "accepted": bet_pb2.BET_STATUS_ACCEPTED,
    "rejected": bet_pb2.BET_STATUS_REJECTED,
    "settled": bet_pb2.BET_STATUS_SETTLED,
    "voided": bet_pb2.BET_STATUS_VOIDED,
    "cashed_out": bet_pb2.BET_STATUS_CASHED_OUT,
}
STATUS_NAME = {v: k for k, v in STATUS.items()}
SUBJECT_ROOT = "bets"


class InsufficientFunds(Exception):
    pass


class LiabilityExceeded(Exception):
    def __init__(self, leg: Leg) -> None:
        super().__init__(f"liability limit reached on {leg.match_id} {leg.market_key} {leg.outcome_id}")

    @classmethod
    def of(cls, message: str) -> LiabilityExceeded:
        err = cls.__new__(cls)
        Exception.__init__(err, message)
        return err


class DailyLimitExceeded(Exception):
    pass


class LossLimitExceeded(Exception):
    """The bet, if lost, would take the player's net losses over a period above their limit."""


class Conflict(Exception):
    """The request id was used for a different request."""


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def money(units: int, currency: str) -> common_pb2.Money:
    m = common_pb2.Money()
    _set_money(m, units, currency)
    return m


#: deposits and withdrawals post against one of this many cash accounts per currency
CASH_SHARDS = 16


def cash_account(owner: str, currency: str) -> str:
    """The cash account of a player's deposits and withdrawals: one of :data:`CASH_SHARDS` per
    currency, by a stable hash of the player, so that deposits of different players do not queue
    for one row until each commits. The reports and the reconciliation add the cash up by kind."""
    return f"cash:{currency}:{zlib.crc32(owner.encode()) % CASH_SHARDS}"


def lock_order(move: tuple[str, int]) -> tuple[bool, str]:
    """The order a movement's accounts are locked in: by name, cash accounts last. Only deposits
    and withdrawals touch cash, and a deposit waiting for its player's row (a settlement may hold
    it until it commits) must not hold a cash row meanwhile, or every other deposit waits too."""
    return move[0].startswith("cash:"), move[0]


def subject(account: str, bet_id: str) -> str:
    return f"{SUBJECT_ROOT}.{token(account)}.{bet_id}"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # bet_proto sets timestamps from it (FromDatetime costs more)


def _set_money(m: common_pb2.Money, units: int, currency: str) -> None:
    m.currency_code, m.minor_units, m.decimal = currency, units, format_minor(units, currency)


async def trace_transaction(cur: psycopg.AsyncCursor[Any]) -> None:
    """In a transaction that writes outbox events: give them the current trace context (when
    tracing is on and a span is recording), so the relay's publication continues the trace."""
    parent = tracing.inject({}).get("traceparent")
    if parent:
        await cur.execute("SELECT set_config('livebet.traceparent', %s, true)", (parent,))


PLACE_BETS = "SELECT * FROM betting.place_bets(%s::jsonb)"  # migrations/0010_place_bets.sql
#: a bet whose write failed with one of these (its subtransaction rolled back, nothing written) is
#: written again, up to WRITE_ATTEMPTS times in all, before the caller gets UNAVAILABLE
RETRIED_STATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
WRITE_ATTEMPTS = 3
RETRY_PAUSE_SECONDS = 0.01  # before writing again: 5-15 ms, then 10-30
MAX_BATCH = 50  # bets per transaction: each is a subtransaction, and PostgreSQL caches 64 per backend
BATCH_WRITERS = 2  # batches in flight at most, each on its own connection
#: a batch in flight longer than this is waiting (on a lock, or a slow disk): another may start beside it
STALL_SECONDS = 0.05


class PlaceBatcher:
    """Group commit for new bets: the bets that arrive while a batch is being written go together
    in the next one, one statement (``betting.place_bets``) and one commit for all of them. Nothing
    waits for a batch to fill: with no batch in flight a bet is written at once, alone; under load
    the batches grow by themselves, and a round trip, a statement and a commit (with its WAL flush)
    are shared by up to ``MAX_BATCH`` bets.

    One batch is written at a time, which keeps the batches big (two side by side halved them,
    and cost PostgreSQL a fifth more per bet). Another starts beside it only once it has been in
    flight for ``STALL_SECONDS`` (a batch waiting on a player's lock, held by a settlement, must not
    hold every other player's bet), up to ``writers`` at once.

    Each bet runs in its own subtransaction, so one refused bet (funds, limits, a deadlock) leaves
    the others of its batch written; it gets its SQLSTATE and message back, as if alone. A batch
    that fails as a whole (the connection was lost) fails every bet in it, and none was written.
    Within a batch bets are ordered by the liability rows they lock, so batches in flight at once
    take those locks in the same order."""

    def __init__(
        self, store: Store, writers: int = BATCH_WRITERS, max_batch: int = MAX_BATCH, stall: float = STALL_SECONDS
    ) -> None:
        self.store, self.writers, self.max_batch, self.stall = store, writers, max_batch, stall
        self._queue: deque[tuple[dict[str, Any], tuple[str, ...], asyncio.Future[tuple[Any, ...]]]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: dict[asyncio.Future[None], float] = {}  # a batch being written: since when
        self.on_batch: Callable[[int], None] | None = None  # told each batch's size once it is written

    async def place(self, bet: dict[str, Any], locks: tuple[str, ...]) -> tuple[Any, ...]:
        """``bet``: ``betting.place_bet``'s parameters (see :func:`write`); ``locks``: the
        liability rows it updates. Returns its (outcome, request_digest, sqlstate, message, detail)."""
        if not self._tasks or any(t.done() for t in self._tasks):
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks += [asyncio.create_task(self._writer()) for _ in range(self.writers - len(self._tasks))]
        fut: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self._queue.append((bet, locks, fut))
        self._wake.set()
        return await fut

    async def _writer(self) -> None:
        # each writer keeps one connection of the pool between its batches (taking one from the
        # pool and giving it back cost ~5 % of the betting process's CPU per lone bet); it gives it
        # back when a batch fails (the pool replaces a broken one) and when the writer stops
        loop = asyncio.get_running_loop()
        held: tuple[AsyncConnectionPool, psycopg.AsyncConnection[Any]] | None = None
        try:
            while True:
                await self._wake.wait()
                if not self._queue:
                    self._wake.clear()
                    continue
                if self._in_flight:  # wait for a batch in flight to end, unless every one of them stalled
                    left = max(self._in_flight.values()) + self.stall - loop.time()
                    if left > 0:
                        await asyncio.wait(list(self._in_flight), timeout=left)
                        continue
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                if not self._queue:
                    self._wake.clear()
                batch.sort(key=lambda item: item[1])
                done: asyncio.Future[None] = loop.create_future()
                self._in_flight[done] = loop.time()
                try:
                    if held is None:
                        pool = self.store.pool
                        held = (pool, await pool.getconn())
                    rows = await write(held[1], [bet for bet, _, _ in batch])
                except Exception as err:  # nothing of the batch was written: each caller gets the error
                    if held is not None:
                        (pool, conn), held = held, None
                        await pool.putconn(conn)
                    _fail(batch, err)
                    continue
                except BaseException:  # cancelled: the service is stopping
                    _fail(
                        batch,
                        psycopg.OperationalError("the betting service is stopping; retry with the same request_id"),
                    )
                    raise
                finally:
                    del self._in_flight[done]
                    done.set_result(None)
                if self.on_batch is not None:
                    self.on_batch(len(batch))
                for (_, _, fut), row in zip(batch, rows, strict=True):
                    if not fut.done():
                        fut.set_result(row)
        finally:
            if held is not None:
                with contextlib.suppress(Exception):  # a pool closed meanwhile closes it
                    await held[0].putconn(held[1])


def _fail(batch: list[tuple[Any, Any, asyncio.Future[tuple[Any, ...]]]], err: Exception) -> None:
    for _, _, fut in batch:
        if not fut.done():
            fut.set_exception(err)


async def write(
    conn: psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any], bets: list[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """Place ``bets`` with ``betting.place_bets``: one statement, one JSON document (a document
    is several times cheaper for psycopg to send than nineteen parameters per bet). Returns each
    bet's (outcome, request_digest, sqlstate, message, detail), in the order given."""
    cur = await conn.execute(PLACE_BETS, (orjson.dumps(bets).decode(),))
    rows = await cur.fetchall()
    if len(rows) != len(bets):
        raise psycopg.DataError(f"betting.place_bets returned {len(rows)} rows for {len(bets)} bets")
    return [tuple(row[1:]) for row in sorted(rows, key=lambda row: row[0])]


async def _with_legs(
    cur: psycopg.AsyncCursor[Any], rows: list[dict[str, Any]]
) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Bet rows by id, each with its legs (one more statement)."""
    found: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {str(row["bet_id"]): (row, []) for row in rows}
    if found:
        await cur.execute(
            "SELECT * FROM betting.selections WHERE bet_id = ANY(%s) ORDER BY bet_id, leg",
            ([uuid.UUID(b) for b in found],),
        )
        for leg in await cur.fetchall():
            found[str(leg["bet_id"])][1].append(leg)
    return found


def bet_proto(row: dict[str, Any], legs: Sequence[dict[str, Any]]) -> bet_pb2.Bet:
    cur = row["currency"]
    # fields set in place: a message handed to a constructor is copied, and PlaceBet builds one per bet
    b = bet_pb2.Bet(
        bet_id=str(row["bet_id"]),
        request_id=row["request_id"],
        account_id=row["account_id"],
        odds_change_policy=row["policy"],
        status=STATUS[row["status"]],
        reject_reason=row["reject_reason"],
        reject_detail=row["reject_detail"],
        result=row["result"],
        settlement_version=row["settlement_version"],
    )
    _set_money(b.stake, row["stake"], cur)
    b.accepted_odds.decimal = f"{row['odds']:.2f}"
    _set_money(b.potential_payout, row["potential_payout"], cur)
    _set_money(b.payout, row["payout"], cur)
    if row.get("auto_cash_out") is not None:
        _set_money(b.auto_cash_out, row["auto_cash_out"], cur)
    if row.get("cashed_out_stake"):
        _set_money(b.cashed_out_stake, row["cashed_out_stake"], cur)
        _set_money(b.cashed_out_amount, row["cashed_out_amount"], cur)
    for name in ("placed_at", "decided_at", "settled_at", "decide_at"):
        value = row.get(name)
        if value is not None:
            d = value - EPOCH
            t = getattr(b, name)
            t.seconds, t.nanos = d.days * 86400 + d.seconds, d.microseconds * 1000
    b.bet_builder = is_builder(legs)
    for leg in legs:
        s = b.selections.add(market_version=leg["market_version"], result=leg["result"])
        s.requested_odds.decimal = f"{leg['requested_odds']:.2f}"
        s.accepted_odds.decimal = f"{leg['odds']:.2f}"
        s.outcome.outcome_id = leg["outcome_id"]
        ref = s.outcome.market
        ref.match_id, ref.market_type, ref.market_key = leg["match_id"], leg["market_type"], leg["market_key"]
        for k, v in specifiers_of(leg["market_key"]):
            ref.specifiers.add(key=k, value=v)
    return b


def _refusal(state: str | None, message: str, detail: str | None, t: Ticket) -> Exception | None:
    """The refusal ``betting.place_bet`` raised (SQLSTATEs LB001-LB006), or None for another error."""
    currency = t.currency
    if state == "LB001":
        return InsufficientFunds(
            f"stake {format_minor(t.stake, currency)} {currency} is more than the available balance"
        )
    if state == "LB002":
        return LiabilityExceeded.of(message)
    if state == "LB005":
        return Suspended()
    if state == "LB004" and detail:
        with contextlib.suppress(ValueError):
            return OnBreak(datetime.fromtimestamp(float(detail), UTC))
    if state == "LB006" and detail:
        with contextlib.suppress(ValueError):
            period, limit, lost = (int(x) for x in detail.split(":"))
            return LossLimitExceeded(loss_refusal(period, limit, lost, t.stake, currency))
    if state == "LB003":
        if detail and detail.isdigit():
            message = f"stake is above your limit of {format_minor(int(detail), currency)} {currency} a bet"
        return DailyLimitExceeded(message)
    return None


def _postgres_error(state: str | None, message: str) -> psycopg.Error:
    """The psycopg exception a statement failing with ``state`` raises (a deadlock or a lost
    connection is an OperationalError, which callers answer with UNAVAILABLE)."""
    try:
        cls = psycopg.errors.lookup(state or "")
    except KeyError:
        cls = psycopg.Error
    return cls(f"{message} (SQLSTATE {state})")


@dataclass(frozen=True)
class Placement:
    """What to write for a new bet (decided by the rules before the transaction)."""

    ticket: Ticket
    account: str
    request_digest: bytes
    odds: list[Decimal]  # per leg, the price it stands at
    seen_versions: list[int]  # per leg, the match version it was checked against
    combined: Decimal
    potential_payout: int
    in_play: bool
    delay_seconds: float
    max_liability: int  # minor units
    max_daily_stake: int  # minor units (a per-account row overrides it)


class PoolSource(Protocol):
    @property
    def pool(self) -> AsyncConnectionPool: ...


@dataclass(frozen=True)
class Pooled:
    """A :class:`PoolSource` for a pool opened by hand (the tools and the benchmarks)."""

    pool: AsyncConnectionPool


class Store:
    """``source``: anything with a ``pool`` (the service's PostgreSQL dependency, which has one
    once connected)."""

    def __init__(self, source: PoolSource) -> None:
        self.source = source
        self.batcher = PlaceBatcher(self)

    @property
    def pool(self) -> AsyncConnectionPool:
        return self.source.pool

    # --- wallet -------------------------------------------------------------------------------
    @staticmethod
    async def _ensure_accounts(cur: psycopg.AsyncCursor[Any], owner: str, currency: str) -> None:
        """The player's accounts in ``currency``, their cash account (:func:`cash_account`) and
        the house's, created if new."""
        await cur.execute(
            """INSERT INTO betting.ledger_accounts (account_id, kind, owner, currency) VALUES
               (%(p)s, 'player', %(o)s, %(c)s), (%(h)s, 'held', %(o)s, %(c)s),
               (%(house)s, 'house', '', %(c)s), (%(cash)s, 'cash', '', %(c)s)
               ON CONFLICT (account_id) DO NOTHING""",
            {
                "p": f"player:{owner}:{currency}",
                "h": f"held:{owner}:{currency}",
                "house": f"house:{currency}",
                "cash": cash_account(owner, currency),
                "o": owner,
                "c": currency,
            },
        )

    @staticmethod
    async def _post(
        cur: psycopg.AsyncCursor[Any],
        kind: str,
        owner: str,
        currency: str,
        moves: list[tuple[str, int]],
        bet_id: uuid.UUID | None = None,
        request_id: str | None = None,
        request_digest: bytes | None = None,
        reason: str = "",
    ) -> tuple[uuid.UUID, int]:
        """One balanced ledger transaction; returns its id and the player's balance after it."""
        txn = uuid.uuid4()
        await cur.execute(
            """INSERT INTO betting.transactions
               (transaction_id, kind, owner, currency, bet_id, request_id, request_digest, reason)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            (txn, kind, owner, currency, bet_id, request_id, request_digest, reason),
        )
        player = f"player:{owner}:{currency}"
        ordered = sorted(moves, key=lock_order)  # accounts locked in one order by every movement: no deadlock cycles
        rows = ", ".join(["(%s, %s, %s, %s)"] * len(ordered))
        await cur.execute(
            f"INSERT INTO betting.postings (transaction_id, account_id, amount, bet_id) VALUES {rows}"
            " RETURNING account_id, balance_after",
            [x for account, amount in ordered for x in (txn, account, amount, bet_id)],
        )
        balance = None
        for row in await cur.fetchall():
            if row["account_id"] == player:
                balance = row["balance_after"]
        if balance is None:
            await cur.execute("SELECT balance FROM betting.ledger_accounts WHERE account_id = %s", (player,))
            found = await cur.fetchone()
            balance = found["balance"] if found else 0
        return txn, int(balance)

    async def wallet(
        self, owner: str, currency: str, amount: int, request_id: str, request_digest: bytes, withdraw: bool
    ) -> tuple[str, int]:
        """Deposit or withdraw; idempotent by request id. Returns (transaction id, balance after)."""
        kind = "withdrawal" if withdraw else "deposit"
        sign = -1 if withdraw else 1
        try:
            async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                if not withdraw:
                    await check_deposit(cur, owner, currency, amount)
                await self._ensure_accounts(cur, owner, currency)
                txn, balance = await self._post(
                    cur,
                    kind,
                    owner,
                    currency,
                    [(f"player:{owner}:{currency}", sign * amount), (cash_account(owner, currency), -sign * amount)],
                    request_id=request_id,
                    request_digest=request_digest,
                )
                if withdraw:
                    await check_withdrawal(cur, owner)
                return str(txn), balance
        except psycopg.errors.CheckViolation as err:
            raise InsufficientFunds(f"balance is below {format_minor(amount, currency)} {currency}") from err
        except psycopg.errors.UniqueViolation:
            refused = None
        except (OnBreak, Suspended, DepositLimitExceeded) as err:
            refused = err  # unless it repeats a request made before: that gets its first answer
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """SELECT t.transaction_id, t.kind, t.currency, t.request_digest, p.balance_after
                   FROM betting.transactions t JOIN betting.postings p USING (transaction_id)
                   WHERE t.owner = %s AND t.request_id = %s AND t.kind IN ('deposit', 'withdrawal')
                     AND p.account_id LIKE 'player:%%'""",
                (owner, request_id),
            )
            row = await cur.fetchone()
        if row is None and refused is not None:
            raise refused
        if row is None or row["request_digest"] != request_digest:
            raise Conflict(f"request_id {request_id!r} was used for a different request")
        return str(row["transaction_id"]), int(row["balance_after"])

    async def balance(self, owner: str, currency: str) -> tuple[int, int]:
        """(available, held) in minor units."""
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT kind, balance FROM betting.ledger_accounts WHERE account_id = ANY(%s)",
                ([f"player:{owner}:{currency}", f"held:{owner}:{currency}"],),
            )
            found: dict[str, int] = {kind: balance for kind, balance in await cur.fetchall()}
        return int(found.get("player", 0)), int(found.get("held", 0))

    async def currencies(self, owner: str) -> list[str]:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT currency FROM betting.ledger_accounts WHERE owner = %s AND kind = 'player' ORDER BY created_at",
                (owner,),
            )
            return [r[0] for r in await cur.fetchall()]

    async def transactions(self, owner: str, currency: str, limit: int, before: int | None) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """SELECT p.posting_id, t.transaction_id, t.kind, coalesce(t.bet_id, p.bet_id) AS bet_id, t.created_at,
                          p.amount, p.balance_after
                   FROM betting.postings p JOIN betting.transactions t USING (transaction_id)
                   WHERE p.account_id = %s AND (%s::bigint IS NULL OR p.posting_id < %s)
                   ORDER BY p.posting_id DESC LIMIT %s""",
                (f"player:{owner}:{currency}", before, before, limit),
            )
            return list(await cur.fetchall())

    # --- bets ---------------------------------------------------------------------------------
    async def existing(self, account: str, request_id: str, request_digest: bytes) -> bet_pb2.Bet | None:
        """The bet an earlier call with this request id placed (Conflict if it was another request)."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM betting.bets WHERE account_id = %s AND request_id = %s", (account, request_id)
            )
            row = await cur.fetchone()
            if row is None:
                return None
            if bytes(row["request_digest"]) != request_digest:
                raise Conflict(f"request_id {request_id!r} was used for a different request")
            return await self._load(cur, row)

    @staticmethod
    async def _load(cur: psycopg.AsyncCursor[Any], row: dict[str, Any]) -> bet_pb2.Bet:
        await cur.execute("SELECT * FROM betting.selections WHERE bet_id = %s ORDER BY leg", (row["bet_id"],))
        return bet_proto(row, await cur.fetchall())

    async def place(self, p: Placement) -> tuple[bet_pb2.Bet, bool]:
        """Write a new bet, PENDING (in-play delay) or ACCEPTED (no delay), with its stake held and
        its event in the outbox, by ``betting.place_bet`` in one transaction (shared with the bets
        placed meanwhile, see :class:`PlaceBatcher`; a traced bet goes alone). Returns
        (bet, created); an earlier bet under the same request id is returned as it is (Conflict when
        that was another request)."""
        t = p.ticket
        bet_id = str(uuid.uuid4())
        status = "pending" if p.delay_seconds > 0 else "accepted"
        legs = [
            {
                "match_id": leg.match_id,
                "market_key": leg.market_key,
                "market_type": leg.market_type,
                "outcome_id": leg.outcome_id,
                "requested_odds": str(leg.requested_odds),
                "market_version": leg.market_version,
                "seen_version": p.seen_versions[i],
                "odds": str(p.odds[i]),
            }
            for i, leg in enumerate(t.legs)
        ]
        now = datetime.now(UTC)
        bet = bet_proto(
            {
                "bet_id": bet_id,
                "request_id": t.request_id,
                "account_id": p.account,
                "currency": t.currency,
                "stake": t.stake,
                "odds": p.combined,
                "potential_payout": p.potential_payout,
                "policy": t.policy,
                "status": status,
                "reject_reason": 0,
                "reject_detail": "",
                "result": 0,
                "payout": 0,
                "settlement_version": 0,
                "placed_at": now,
                "decided_at": now if status == "accepted" else None,
                "settled_at": None,
                "decide_at": now + timedelta(seconds=p.delay_seconds),  # as betting.place_bet stores it
            },
            [
                {**leg, "requested_odds": t.legs[i].requested_odds, "odds": p.odds[i], "result": 0}
                for i, leg in enumerate(legs)
            ],
        )
        event = bet_pb2.BetEvent(event_id=f"{bet_id}:{status}:0", bet=bet, occurred_at=bet.placed_at)
        item = {
            "bet_id": bet_id,
            "account": p.account,
            "request_id": t.request_id,
            "digest": p.request_digest.hex(),
            "currency": t.currency,
            "stake": t.stake,
            "policy": t.policy,
            "status": status,
            "odds": str(p.combined),
            "payout": p.potential_payout,
            "in_play": p.in_play,
            "delay": p.delay_seconds,
            "legs": legs,
            "max_liability": p.max_liability,
            "max_daily": p.max_daily_stake,
            "now": now.isoformat(),
            "subject": subject(p.account, bet_id),
            "msg_id": event.event_id,
            "event": event.SerializeToString().hex(),
        }
        locks = tuple(sorted(f"{g.match_id}\x00{g.market_key}\x00{g.outcome_id}" for g in t.legs))
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            outcome, found_digest, state, message, detail = await self._write(item, locks)
            if outcome != "failed" or state not in RETRIED_STATES or attempt == WRITE_ATTEMPTS:
                break
            # it lost a deadlock (two batches, or a batch and a settlement, each waiting on a row
            # the other holds): its subtransaction was rolled back, nothing of it was written
            log.info(
                "a bet's write lost a deadlock; writing it again",
                extra={"bet_id": str(bet_id), "sqlstate": state, "attempt": attempt},
            )
            # a moment first, so that the transaction it yielded to takes the rows it was waiting
            # for and ends, instead of meeting the same bet again in the same order
            await asyncio.sleep(random.uniform(0.5, 1.5) * RETRY_PAUSE_SECONDS * attempt)
        if outcome == "failed":
            refused = _refusal(state, message, detail, t)
            if refused is not None:
                raise refused
            raise _postgres_error(state, message)
        if outcome == "placed":
            return bet, True
        if bytes(found_digest) != p.request_digest:
            raise Conflict(f"request_id {t.request_id!r} was used for a different request")
        earlier = await self.existing(p.account, t.request_id, p.request_digest)
        assert earlier is not None
        return earlier, False

    async def _write(self, item: dict[str, Any], locks: tuple[str, ...]) -> tuple[Any, ...]:
        if tracing.inject({}).get("traceparent"):  # traced: the outbox row carries the trace, alone
            async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as tcur:
                await trace_transaction(tcur)
                (row,) = await write(tcur, [item])
            return row
        return await self.batcher.place(item, locks)  # with the bets arriving meanwhile: one commit

    @staticmethod
    async def _add_liability(cur: psycopg.AsyncCursor[Any], t: Ticket, win: int, limit: int) -> None:
        for leg in t.legs:
            await cur.execute(
                """INSERT INTO betting.liability (match_id, market_key, outcome_id, currency, amount)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (match_id, market_key, outcome_id, currency)
                   DO UPDATE SET amount = betting.liability.amount + excluded.amount
                   RETURNING amount""",
                (leg.match_id, leg.market_key, leg.outcome_id, t.currency, win),
            )
            row = await cur.fetchone()
            if row is not None and row["amount"] > limit:
                raise LiabilityExceeded(leg)

    @staticmethod
    async def _outbox(
        cur: psycopg.AsyncCursor[Any] | psycopg.AsyncConnection[Any], bet: bet_pb2.Bet, balance: int
    ) -> None:
        now = Timestamp()
        now.GetCurrentTime()
        event = bet_pb2.BetEvent(
            event_id=f"{bet.bet_id}:{STATUS_NAME[bet.status]}:{bet.settlement_version}",
            bet=bet,
            balance=money(balance, bet.stake.currency_code),
            occurred_at=now,
        )
        await cur.execute(
            "INSERT INTO betting.outbox (subject, msg_id, payload) VALUES (%s, %s, %s)",
            (subject(bet.account_id, bet.bet_id), event.event_id, event.SerializeToString()),
        )
        await cur.execute("NOTIFY betting_outbox")

    async def due(self, limit: int = 100) -> list[uuid.UUID]:
        """Pending bets whose delay is over (nothing locked: each is decided in its own transaction)."""
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT bet_id FROM betting.bets WHERE status = 'pending' AND decide_at <= clock_timestamp()"
                " ORDER BY decide_at LIMIT %s",
                (limit,),
            )
            return [r[0] for r in await cur.fetchall()]

    async def next_due(self) -> datetime | None:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute("SELECT min(decide_at) FROM betting.bets WHERE status = 'pending'")
            row = await cur.fetchone()
            return row[0] if row else None

    async def postpone(self, bet_id: uuid.UUID, seconds: float) -> None:
        """Decide a pending bet ``seconds`` from now instead (its decision failed): the bets due
        after it get their turn. Its market is then checked over a longer window, never a shorter."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE betting.bets SET decide_at = clock_timestamp() + %s * interval '1 second'"
                " WHERE bet_id = %s AND status = 'pending'",
                (seconds, bet_id),
            )

    async def pending_count(self) -> int:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute("SELECT count(*) FROM betting.bets WHERE status = 'pending'")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def decide(self, bet_id: uuid.UUID, decide: Any) -> bet_pb2.Bet | None:
        """Decide one pending bet exactly once: ``decide(row, legs)`` (async) returns
        ``("accepted", odds per leg, combined, payout, max_liability)`` or ``("rejected", reason, detail)``.
        The bet row is locked (SKIP LOCKED: another replica deciding it is left alone)."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM betting.bets WHERE bet_id = %s AND status = 'pending' FOR UPDATE SKIP LOCKED",
                (bet_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return None  # decided already, or being decided elsewhere
            await cur.execute("SELECT * FROM betting.selections WHERE bet_id = %s ORDER BY leg", (bet_id,))
            legs = await cur.fetchall()
            outcome = await decide(row, legs)
            owner, cur_code, stake = row["account_id"], row["currency"], row["stake"]
            if outcome[0] == "accepted":
                _, odds, combined, win, max_liability = outcome
                try:
                    async with conn.transaction():  # a savepoint: the liability may refuse it
                        for i, o in enumerate(odds):
                            await cur.execute(
                                "UPDATE betting.selections SET odds = %s WHERE bet_id = %s AND leg = %s",
                                (o, bet_id, i),
                            )
                        ticket = _ticket_of(row, legs)
                        await self._add_liability(cur, ticket, win, max_liability)
                        await cur.execute(
                            """UPDATE betting.bets SET status = 'accepted', odds = %s, potential_payout = %s,
                               decided_at = clock_timestamp() WHERE bet_id = %s RETURNING *""",
                            (combined, win, bet_id),
                        )
                        row = await cur.fetchone()
                    await cur.execute(
                        "SELECT balance FROM betting.ledger_accounts WHERE account_id = %s",
                        (f"player:{owner}:{cur_code}",),
                    )
                    bal = await cur.fetchone()
                    balance = int(bal["balance"]) if bal else 0
                except LiabilityExceeded as err:
                    outcome = ("rejected", bet_pb2.REJECT_REASON_LIABILITY_LIMIT, str(err))
            if outcome[0] == "rejected":
                _, reason, detail = outcome
                await cur.execute(
                    """UPDATE betting.bets SET status = 'rejected', reject_reason = %s, reject_detail = %s,
                       decided_at = clock_timestamp() WHERE bet_id = %s RETURNING *""",
                    (reason, detail, bet_id),
                )
                row = await cur.fetchone()
                assert row is not None
                await cur.execute(  # a rejected stake no longer counts towards the daily limit
                    """UPDATE betting.stake_buckets SET staked = greatest(staked - %s, 0)
                       WHERE account_id = %s AND currency = %s AND hour = date_trunc('hour', %s, 'UTC')""",
                    (stake, owner, cur_code, row["placed_at"]),
                )
                _, balance = await self._post(
                    cur,
                    "stake_release",
                    owner,
                    cur_code,
                    [(f"held:{owner}:{cur_code}", -stake), (f"player:{owner}:{cur_code}", stake)],
                    bet_id=bet_id,
                )
            assert row is not None
            bet = await self._load(cur, row)
            await self._outbox(cur, bet, balance)
            return bet

    async def get(self, account: str, bet_id: str) -> bet_pb2.Bet | None:
        found = await self.bet_rows(account, bet_id)
        return None if found is None else bet_proto(*found)

    async def list_bets(
        self, account: str, limit: int, after: tuple[datetime, uuid.UUID] | None, status: str | None
    ) -> list[bet_pb2.Bet]:
        """The account's bets, newest first, after a keyset position."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """SELECT * FROM betting.bets
                   WHERE account_id = %(a)s AND (%(s)s::text IS NULL OR status = %(s)s)
                     AND (%(t)s::timestamptz IS NULL OR (placed_at, bet_id) < (%(t)s, %(b)s::uuid))
                   ORDER BY placed_at DESC, bet_id DESC LIMIT %(n)s""",
                {
                    "a": account,
                    "s": status,
                    "t": after[0] if after else None,
                    "b": after[1] if after else None,
                    "n": limit,
                },
            )
            rows = await cur.fetchall()
            if not rows:
                return []
            await cur.execute(
                "SELECT * FROM betting.selections WHERE bet_id = ANY(%s) ORDER BY bet_id, leg",
                ([r["bet_id"] for r in rows],),
            )
            legs: dict[uuid.UUID, list[dict[str, Any]]] = {}
            for leg in await cur.fetchall():
                legs.setdefault(leg["bet_id"], []).append(leg)
            return [bet_proto(r, legs.get(r["bet_id"], [])) for r in rows]

    async def bet_rows(self, account: str, bet_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """One of the account's bets and its legs as stored (None when it has no such bet)."""
        try:
            key = uuid.UUID(bet_id)
        except ValueError:
            return None
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM betting.bets WHERE bet_id = %s AND account_id = %s", (key, account))
            row = await cur.fetchone()
            if row is None:
                return None
            await cur.execute("SELECT * FROM betting.selections WHERE bet_id = %s ORDER BY leg", (key,))
            return row, list(await cur.fetchall())

    async def bets_with_legs(
        self, account: str, bet_ids: Sequence[uuid.UUID] | None, limit: int
    ) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
        """The account's bets named by ``bet_ids`` (whatever their status), or with None its open
        ones (pending, accepted; the newest ``limit``), each with its legs: two statements in all."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            if bet_ids is None:
                await cur.execute(
                    "SELECT * FROM betting.bets WHERE account_id = %s AND status IN ('pending', 'accepted')"
                    " ORDER BY placed_at DESC, bet_id LIMIT %s",
                    (account, limit),
                )
            else:
                await cur.execute(
                    "SELECT * FROM betting.bets WHERE account_id = %s AND bet_id = ANY(%s)", (account, list(bet_ids))
                )
            return await _with_legs(cur, await cur.fetchall())

    # --- cash-out -----------------------------------------------------------------------------
    async def cashed_out(self, account: str, request_id: str, request_digest: bytes) -> bet_pb2.Bet | None:
        """The bet an earlier CashOut with this request id cashed out (Conflict if it was another request)."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT bet_id, request_digest FROM betting.cash_outs WHERE account_id = %s AND request_id = %s",
                (account, request_id),
            )
            found = await cur.fetchone()
            if found is None:
                return None
            if bytes(found["request_digest"]) != request_digest:
                raise Conflict(f"request_id {request_id!r} was used for a different request")
            await cur.execute("SELECT * FROM betting.bets WHERE bet_id = %s", (found["bet_id"],))
            row = await cur.fetchone()
            assert row is not None
            return await self._load(cur, row)

    async def cash_out(
        self,
        account: str,
        bet_id: str,
        request_id: str,
        request_digest: bytes,
        amount: int,
        open_legs: list[int],
        stake: int,
        part: Part | None = None,
    ) -> tuple[str, bet_pb2.Bet | None]:
        """Cash the bet out for ``amount`` (``betting.cash_out``, one transaction; with ``part``,
        that part of its stake) if it is still accepted, its stake still ``stake`` and the legs
        priced as open (``open_legs``) still unsettled. Returns (outcome, bet): ``cashed_out`` or
        ``exists`` (this request id did it before) with the bet, ``not_found``,
        ``not_open:<status>`` or ``changed`` (a leg settled or a part cashed out since) without
        one; Conflict when the request id was used for another request."""
        try:
            async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                await trace_transaction(cur)
                await cur.execute(
                    "SELECT * FROM betting.cash_out(%s, %s, %s, %s, %s, %s::smallint[], %s, %s, %s)",
                    (
                        uuid.UUID(bet_id),
                        account,
                        request_id,
                        request_digest,
                        amount,
                        open_legs,
                        stake,
                        None if part is None else part.stake,
                        None if part is None else part.left_payout,
                    ),
                )
                row = await cur.fetchone()
                assert row is not None
                outcome = row["outcome"]
                if outcome == "exists" and bytes(row["request_digest"]) != request_digest:
                    raise Conflict(f"request_id {request_id!r} was used for a different request")
                if outcome not in ("cashed_out", "exists"):
                    return outcome, None
                # the bet as it is now, read in the same transaction (the digest names the bet)
                await cur.execute("SELECT * FROM betting.bets WHERE bet_id = %s", (uuid.UUID(bet_id),))
                bet = await cur.fetchone()
                assert bet is not None
                return outcome, await self._load(cur, bet)
        except psycopg.errors.UniqueViolation:  # the request id, at once on another bet
            raise Conflict(f"request_id {request_id!r} was used for a different request") from None

    async def set_auto_cash_out(
        self, account: str, bet_id: str, amount: int | None, currency: str
    ) -> tuple[str, dict[str, Any] | None, bet_pb2.Bet | None]:
        """Set (or with None remove) the bet's automatic cash-out, if the bet is the account's, in
        ``currency`` (the amount's; ignored without one), still pending or accepted, and ``amount``
        is at most its potential payout. Returns (outcome, bet row, bet): ``set`` (an event goes to
        the outbox, for WatchBets) or ``unchanged`` with the bet, ``not_found``, or with the row
        ``currency``, ``not_open:<status>`` or ``above_payout``."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM betting.bets WHERE bet_id = %s AND account_id = %s FOR UPDATE",
                (uuid.UUID(bet_id), account),
            )
            row = await cur.fetchone()
            if row is None:
                return "not_found", None, None
            if amount is not None and row["currency"] != currency:
                return "currency", row, None
            if row["status"] not in ("pending", "accepted"):
                return f"not_open:{row['status']}", row, None
            if amount is not None and amount > row["potential_payout"]:
                return "above_payout", row, None
            if row["auto_cash_out"] == amount:
                return "unchanged", row, await self._load(cur, row)
            await cur.execute(
                "UPDATE betting.bets SET auto_cash_out = %s WHERE bet_id = %s RETURNING *", (amount, row["bet_id"])
            )
            row = await cur.fetchone()
            assert row is not None
            await cur.execute(
                """INSERT INTO betting.outbox (subject, msg_id, payload, bet_id)
                   VALUES (%s, %s || ':auto_cash_out:' || gen_random_uuid(), NULL, %s)""",
                (f"bets.{token(account)}.{row['bet_id']}", str(row["bet_id"]), row["bet_id"]),
            )
            await cur.execute("SELECT pg_notify('betting_outbox', '')")
            return "set", row, await self._load(cur, row)

    async def auto_cash_out_rules(
        self, limit: int, bet_ids: Sequence[str] | None = None
    ) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
        """The accepted bets with an automatic cash-out (the oldest ``limit``; of ``bet_ids`` only,
        when given), each with its legs."""
        query = "SELECT * FROM betting.bets WHERE auto_cash_out IS NOT NULL AND status = 'accepted'"
        params: tuple[object, ...] = (limit,)
        if bet_ids is not None:
            query += " AND bet_id = ANY(%s::uuid[])"
            params = (list(bet_ids), limit)
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query + " ORDER BY placed_at LIMIT %s", params)
            return await _with_legs(cur, await cur.fetchall())

    async def open_bets(self, account: str) -> list[bet_pb2.Bet]:
        return [b for s in ("pending", "accepted") for b in await self.list_bets(account, 1000, None, s)]


def _ticket_of(row: dict[str, Any], legs: Sequence[dict[str, Any]]) -> Ticket:
    return Ticket(
        row["request_id"],
        tuple(
            Leg(g["match_id"], g["market_key"], g["market_type"], g["outcome_id"], g["requested_odds"], 0) for g in legs
        ),
        row["currency"],
        row["stake"],
        row["policy"],
    )


def page_token(bet: bet_pb2.Bet) -> str:
    raw = f"{bet.placed_at.ToDatetime(tzinfo=UTC).isoformat()}|{bet.bet_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def parse_page_token(text: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError for a token this service did not make."""
    at, _, bet_id = base64.urlsafe_b64decode(text.encode()).decode().partition("|")
    return datetime.fromisoformat(at), uuid.UUID(bet_id)


DAY = timedelta(days=1)
