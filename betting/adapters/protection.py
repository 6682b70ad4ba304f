"""Player protection in PostgreSQL (migrations 0014, 0015, 0020): the player's own stake, deposit
and loss limits with their pending (cooling-off) sets, breaks, the operator's suspensions, and the
append-only log of every change. The
rules are :mod:`betting.domain.protection`'s; this module reads and writes rows.

The limits of a bet are checked by ``betting.place_bet`` itself (R_place_bet.sql), in the bet's
transaction; a deposit's by :func:`check_deposit`, in the deposit's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from betting.domain.protection import DEPOSIT_PERIODS, LimitSet, break_until, deposit_refusal


@dataclass(frozen=True)
class Kind:
    """One kind of limit set: its table and its columns (each with a ``pending_`` twin)."""

    name: str
    table: str
    columns: tuple[str, ...]


STAKE = Kind("stake_limits", "betting.account_limits", ("max_stake", "max_daily_stake"))
DEPOSIT = Kind("deposit_limits", "betting.deposit_limits", ("max_daily", "max_weekly", "max_monthly"))
LOSS = Kind("loss_limits", "betting.loss_limits", ("max_daily", "max_weekly", "max_monthly"))


class OnBreak(Exception):
    """The player is on a break until ``until``."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"you are on a break from betting until {until.isoformat(timespec='seconds')}")
        self.until = until


class DepositLimitExceeded(Exception):
    pass


class Suspended(Exception):
    """The operator suspended the account."""

    def __init__(self, message: str = "your account is suspended: contact customer support") -> None:
        super().__init__(message)


class WithdrawalsFrozen(Suspended):
    """The operator's suspension freezes withdrawals too."""

    def __init__(self) -> None:
        super().__init__("withdrawals from your account are on hold: contact customer support")


@dataclass(frozen=True)
class Suspension:
    reason: str
    suspended_by: str
    since: datetime
    withdrawals_frozen: bool = False


@dataclass(frozen=True)
class Protection:
    """What GetLimits shows: each set as it stands now (a due pending set already in force)."""

    stake: LimitSet
    deposit: LimitSet
    loss: LimitSet
    break_until: datetime | None
    reality_check: timedelta | None = None


@dataclass(frozen=True)
class Activity:
    """The player's bets placed since a time, as they stand (minor units)."""

    until: datetime
    staked: int
    returned: int
    open_stakes: int
    bets: int


def _limit_set(kind: Kind, row: dict[str, Any] | None) -> LimitSet:
    if row is None:
        return LimitSet((None,) * len(kind.columns))
    pending = None
    if row["pending_from"] is not None:
        pending = tuple(row[f"pending_{c}"] for c in kind.columns)
    return LimitSet(tuple(row[c] for c in kind.columns), pending, row["pending_from"])


def _select(kind: Kind, lock: bool) -> str:
    cols = ", ".join([*kind.columns, *(f"pending_{c}" for c in kind.columns), "pending_from"])
    return f"SELECT {cols} FROM {kind.table} WHERE account_id = %s AND currency = %s" + (" FOR UPDATE" if lock else "")


async def _now(cur: psycopg.AsyncCursor[Any]) -> datetime:
    """The transaction's time: every service and replica judges by the database's clock."""
    await cur.execute("SELECT now() AS now")
    row = await cur.fetchone()
    assert row is not None
    return row["now"]


async def _locked_break(cur: psycopg.AsyncCursor[Any], owner: str) -> datetime | None:
    """The end of the player's break row, locked (it may be over already); None: no row."""
    await cur.execute("SELECT until FROM betting.breaks WHERE account_id = %s FOR UPDATE", (owner,))
    row = await cur.fetchone()
    return row["until"] if row else None


async def _standing(cur: psycopg.AsyncCursor[Any], owner: str) -> tuple[datetime, datetime | None, Suspension | None]:
    """In one statement: the transaction's time, the end of the player's break (None when they
    are not on one) and the operator's suspension (None when there is none)."""
    await cur.execute(
        """SELECT now() AS now, k.until, s.reason, s.suspended_by, s.since, s.withdrawals_frozen
           FROM (SELECT 1) AS one
           LEFT JOIN betting.breaks k ON k.account_id = %s AND k.until > now()
           LEFT JOIN betting.suspensions s ON s.account_id = %s""",
        (owner, owner),
    )
    row = await cur.fetchone()
    assert row is not None
    return row["now"], row["until"], _suspension_of(row) if row["since"] else None


def _suspension_of(row: dict[str, Any]) -> Suspension:
    return Suspension(row["reason"], row["suspended_by"], row["since"], row["withdrawals_frozen"])


async def _suspension(cur: psycopg.AsyncCursor[Any], owner: str) -> Suspension | None:
    await cur.execute(
        "SELECT reason, suspended_by, since, withdrawals_frozen FROM betting.suspensions WHERE account_id = %s",
        (owner,),
    )
    row = await cur.fetchone()
    return _suspension_of(row) if row else None


async def check_withdrawal(cur: psycopg.AsyncCursor[Any], owner: str) -> None:
    """Raise :class:`WithdrawalsFrozen` if the operator froze the player's withdrawals. Called
    after the withdrawal's postings, which hold the player's balance row: a freeze takes that row
    before it commits, so either this withdrawal committed first or this read sees the freeze."""
    await cur.execute("SELECT 1 FROM betting.suspensions WHERE account_id = %s AND withdrawals_frozen", (owner,))
    if await cur.fetchone() is not None:
        raise WithdrawalsFrozen()


async def _log(cur: psycopg.AsyncCursor[Any], owner: str, action: str, detail: dict[str, Any]) -> None:
    await cur.execute(
        "INSERT INTO betting.protection_log (account_id, action, detail) VALUES (%s, %s, %s)",
        (owner, action, orjson.dumps(detail).decode()),
    )


async def check_deposit(cur: psycopg.AsyncCursor[Any], owner: str, currency: str, amount: int) -> None:
    """Raise :class:`OnBreak`, :class:`Suspended` or :class:`DepositLimitExceeded` if the player may not deposit
    ``amount`` now. Locks the player's deposit limits row first, so that deposits made at the
    same time are added up one after the other."""
    now, until, suspension = await _standing(cur, owner)
    if until is not None:
        raise OnBreak(until)
    if suspension is not None:
        raise Suspended()
    await cur.execute(_select(DEPOSIT, lock=True), (owner, currency))
    limits = _limit_set(DEPOSIT, await cur.fetchone()).at(now).amounts
    if all(limit is None for limit in limits):
        return
    sums = ", ".join(
        f"coalesce(sum(p.amount) FILTER (WHERE t.created_at > now() - interval '{int(d.total_seconds())} seconds'), 0)"
        f" AS d{i}"
        for i, (_, d) in enumerate(DEPOSIT_PERIODS)
    )
    longest = int(max(d for _, d in DEPOSIT_PERIODS).total_seconds())
    await cur.execute(
        f"""SELECT {sums}
            FROM betting.transactions t
            JOIN betting.postings p ON p.transaction_id = t.transaction_id AND p.account_id = %s
            WHERE t.owner = %s AND t.currency = %s AND t.kind = 'deposit'
              AND t.created_at > now() - interval '{longest} seconds'""",
        (f"player:{owner}:{currency}", owner, currency),
    )
    row = await cur.fetchone()
    assert row is not None
    deposited = [int(row[f"d{i}"]) for i in range(len(DEPOSIT_PERIODS))]
    why = deposit_refusal(limits, deposited, amount, currency)
    if why:
        raise DepositLimitExceeded(why)


class ProtectionStore:
    """``source``: anything with a ``pool`` (as :class:`betting.adapters.store.Store`'s)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    @property
    def pool(self) -> AsyncConnectionPool:
        return self.source.pool

    async def get(self, owner: str, currency: str) -> Protection:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            now, until, _ = await _standing(cur, owner)
            sets = []
            for kind in (STAKE, DEPOSIT, LOSS):
                await cur.execute(_select(kind, lock=False), (owner, currency))
                sets.append(_limit_set(kind, await cur.fetchone()).at(now))
            await cur.execute("SELECT interval_seconds FROM betting.reality_checks WHERE account_id = %s", (owner,))
            row = await cur.fetchone()
        every = timedelta(seconds=row["interval_seconds"]) if row else None
        return Protection(sets[0], sets[1], sets[2], until, every)

    async def set_reality_check(self, owner: str, every: timedelta | None) -> None:
        """How often the player's reality checks come (None: never); logged."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            if every is None:
                await cur.execute("DELETE FROM betting.reality_checks WHERE account_id = %s", (owner,))
            else:
                await cur.execute(
                    """INSERT INTO betting.reality_checks (account_id, interval_seconds) VALUES (%s, %s)
                       ON CONFLICT (account_id) DO UPDATE SET interval_seconds = excluded.interval_seconds,
                                                              set_at = now()""",
                    (owner, int(every.total_seconds())),
                )
            await _log(cur, owner, "reality_check", {"seconds": None if every is None else every.total_seconds()})

    async def activity(self, owner: str, currency: str, since: datetime) -> Activity:
        """The player's bets placed since ``since`` in ``currency``: staked (rejected ones not
        counted; with the parts closed by partial cash-outs), returned so far (``betting.bet_returned``,
        migration 0020, and what partial cash-outs paid, 0023), still open (what is left at risk)."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """SELECT now() AS until,
                          coalesce(sum(b.stake + b.cashed_out_stake) FILTER (WHERE b.status <> 'rejected'), 0)
                            AS staked,
                          coalesce(sum(betting.bet_returned(b.status, b.stake, b.payout) + b.cashed_out_amount), 0)
                            AS returned,
                          coalesce(sum(b.stake) FILTER (WHERE b.status IN ('pending', 'accepted')), 0) AS open,
                          count(*) FILTER (WHERE b.status <> 'rejected') AS bets
                   FROM betting.bets b
                   WHERE b.account_id = %s AND b.currency = %s AND b.placed_at >= %s""",
                (owner, currency, since),
            )
            row = await cur.fetchone()
        assert row is not None
        return Activity(row["until"], int(row["staked"]), int(row["returned"]), int(row["open"]), int(row["bets"]))

    async def set_limits(
        self, kind: Kind, owner: str, currency: str, wanted: tuple[int | None, ...], cooling_off: timedelta
    ) -> LimitSet:
        """The player asks for ``wanted``: tighter at once, looser after ``cooling_off``. Returns
        the set as it now stands."""
        cols = kind.columns
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            now = await _now(cur)
            # the row first, then its lock: two changes at once are applied one after the other
            await cur.execute(
                f"INSERT INTO {kind.table} (account_id, currency) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (owner, currency),
            )
            await cur.execute(_select(kind, lock=True), (owner, currency))
            before = _limit_set(kind, await cur.fetchone())
            after = before.change(wanted, now, cooling_off)
            pending = after.pending or (None,) * len(cols)
            assignments = ", ".join(
                [*(f"{c} = %s" for c in cols), *(f"pending_{c} = %s" for c in cols), "pending_from = %s"]
            )
            await cur.execute(
                f"UPDATE {kind.table} SET {assignments} WHERE account_id = %s AND currency = %s",
                (*after.amounts, *pending, after.pending_from, owner, currency),
            )
            await _log(
                cur,
                owner,
                kind.name,
                {
                    "currency": currency,
                    "asked": dict(zip(cols, wanted, strict=True)),
                    "in_force": dict(zip(cols, after.amounts, strict=True)),
                    "pending": dict(zip(cols, after.pending, strict=True)) if after.pending else None,
                    "pending_from": after.pending_from.isoformat() if after.pending_from else None,
                },
            )
        return after

    async def take_break(self, owner: str, duration: timedelta) -> datetime:
        """Start or lengthen the player's break; returns its end."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            now = await _now(cur)
            current = await _locked_break(cur, owner)
            until = break_until(current if current is not None and current > now else None, now, duration)
            await cur.execute(
                """INSERT INTO betting.breaks (account_id, until, taken_at) VALUES (%s, %s, now())
                   ON CONFLICT (account_id) DO UPDATE SET until = excluded.until, taken_at = excluded.taken_at""",
                (owner, until),
            )
            await _log(cur, owner, "break", {"asked_seconds": duration.total_seconds(), "until": until.isoformat()})
        return until

    # --- the operator's side (PlayerAdminService) ---------------------------------------------
    async def player(self, owner: str) -> tuple[datetime | None, Suspension | None, list[dict[str, Any]]]:
        """A player's break end (None: not on one), suspension and latest 50 log entries."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            _, until, suspension = await _standing(cur, owner)
            await cur.execute(
                """SELECT action, detail, created_at FROM betting.protection_log
                   WHERE account_id = %s ORDER BY id DESC LIMIT 50""",
                (owner,),
            )
            log = list(await cur.fetchall())
        return until, suspension, log

    async def suspend(self, owner: str, reason: str, by: str, freeze_withdrawals: bool = False) -> Suspension:
        """Suspend the account (a suspended one keeps its first suspension, and gains the freeze
        when asked); returns it. A freeze first waits for the player's withdrawals in flight: it
        locks the player's balance rows, which a withdrawal holds until it commits."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            if freeze_withdrawals:
                await cur.execute(
                    """SELECT 1 FROM betting.ledger_accounts WHERE owner = %s AND kind = 'player'
                       ORDER BY account_id FOR UPDATE""",
                    (owner,),
                )
            await cur.execute(
                """INSERT INTO betting.suspensions (account_id, reason, suspended_by, withdrawals_frozen)
                   VALUES (%s, %s, %s, %s)
                   ON CONFLICT (account_id) DO UPDATE
                   SET withdrawals_frozen = suspensions.withdrawals_frozen OR excluded.withdrawals_frozen""",
                (owner, reason, by, freeze_withdrawals),
            )
            suspension = await _suspension(cur, owner)
            assert suspension is not None
            detail: dict[str, Any] = {"reason": reason, "by": by}
            if freeze_withdrawals:
                detail["freeze_withdrawals"] = True
            await _log(cur, owner, "suspend", detail)
        return suspension

    async def resume(self, owner: str, reason: str, by: str) -> bool:
        """Lift the suspension; False when there was none."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("DELETE FROM betting.suspensions WHERE account_id = %s", (owner,))
            lifted = cur.rowcount > 0
            await _log(cur, owner, "resume", {"reason": reason, "by": by, "was_suspended": lifted})
        return lifted
