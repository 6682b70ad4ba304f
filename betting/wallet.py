"""``livebet.betting.v1.WalletService``: deposits, withdrawals, the balance and the ledger, and
player protection (the player's own stake and deposit limits, breaks from betting).

Limits follow :mod:`betting.domain.protection`: tighter at once, looser after the cooling-off
(``LIVEBET_BETTING_LIMIT_COOLING_OFF``, default 24 hours). Errors as in :mod:`betting.service`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.message import Message
from livebet.betting.v1 import bet_pb2, wallet_service_pb2_grpc
from livebet.betting.v1 import wallet_service_pb2 as ws

from betting.adapters.protection import (
    DEPOSIT,
    LOSS,
    STAKE,
    DepositLimitExceeded,
    Kind,
    OnBreak,
    Protection,
    ProtectionStore,
    Suspended,
)
from betting.adapters.store import Conflict, InsufficientFunds, Store, digest, money
from betting.domain.money import EXPONENT, MoneyError, major_to_minor, to_minor
from betting.domain.protection import MAX_BREAK, MIN_BREAK, LimitSet
from betting.domain.rules import Config
from betting.errors import abort_refused
from betting.service import MAX_PAGE, account_of
from mesh.errors import abort_bad_request, duration_seconds

_KINDS = {
    "deposit": ws.TRANSACTION_KIND_DEPOSIT,
    "withdrawal": ws.TRANSACTION_KIND_WITHDRAWAL,
    "stake_hold": ws.TRANSACTION_KIND_STAKE_HOLD,
    "stake_release": ws.TRANSACTION_KIND_STAKE_RELEASE,
    "settlement": ws.TRANSACTION_KIND_SETTLEMENT,
    "correction": ws.TRANSACTION_KIND_CORRECTION,
    "cash_out": ws.TRANSACTION_KIND_CASH_OUT,
}


def timestamp(out: Any, when: datetime) -> None:
    out.FromDatetime(when.astimezone(UTC))


def _fill(message: Message, fields: Sequence[str], amounts: Sequence[int | None], currency: str) -> None:
    for name, amount in zip(fields, amounts, strict=True):
        if amount is not None:
            getattr(message, name).CopyFrom(money(amount, currency))


def _fill_set(
    out: Message, names: tuple[str, str, str], columns: Sequence[str], limits: LimitSet, currency: str
) -> None:
    """A limit set into ``out``: its amounts in force into the field ``names[0]`` ("": ``out``
    itself), the pending ones and their time into ``names[1]`` and ``names[2]``."""
    in_force = getattr(out, names[0]) if names[0] else out
    in_force.SetInParent()
    _fill(in_force, columns, limits.amounts, currency)
    if limits.pending is not None and limits.pending_from is not None:
        pending = getattr(out, names[1])
        pending.SetInParent()
        _fill(pending, columns, limits.pending, currency)
        timestamp(getattr(out, names[2]), limits.pending_from)


def limits_response(found: Protection, currency: str) -> ws.GetLimitsResponse:
    """What GetLimits answers (and the operator's GetPlayer shows per wallet)."""
    out = ws.GetLimitsResponse()
    _fill_set(out, ("stake", "stake_pending", "stake_pending_from"), STAKE.columns, found.stake, currency)
    _fill_set(out, ("deposit", "deposit_pending", "deposit_pending_from"), DEPOSIT.columns, found.deposit, currency)
    _fill_set(out, ("loss", "loss_pending", "loss_pending_from"), LOSS.columns, found.loss, currency)
    if found.break_until is not None:
        timestamp(out.break_until, found.break_until)
    if found.reality_check is not None:
        out.reality_check_interval.FromTimedelta(found.reality_check)
    return out


#: how often a reality check may come: every 15 minutes to every 24 hours
REALITY_CHECK_BOUNDS = (900.0, 86400.0)
#: how far back GetActivity reads, and how far ahead of the service's clock a client's may be
ACTIVITY_WINDOW = timedelta(hours=24)
CLOCK_SLACK = timedelta(minutes=5)


class WalletApi(wallet_service_pb2_grpc.WalletServiceServicer):
    def __init__(self, store: Store, config: Config) -> None:
        self.store, self.config = store, config
        self.protection = ProtectionStore(store.source)
        self.cooling_off = timedelta(seconds=float(config.limit_cooling_off))

    async def _move(self, request: Any, context: grpc.aio.ServicerContext, withdraw: bool) -> tuple[str, int, str]:
        account = await account_of(context)
        bad = []
        if not request.request_id or len(request.request_id) > 128:
            bad.append(("request_id", "is required (at most 128 characters)"))
        currency = request.amount.currency_code
        amount = 0
        try:
            amount = to_minor(currency, request.amount.minor_units, request.amount.decimal)
        except MoneyError as err:
            bad.append(("amount", str(err)))
        if bad:
            await abort_bad_request(context, bad)
        try:
            txn, balance = await self.store.wallet(
                account,
                currency,
                amount,
                request.request_id,
                digest(request.SerializeToString(deterministic=True)),
                withdraw,
            )
        except InsufficientFunds as err:
            await abort_refused(context, bet_pb2.REJECT_REASON_INSUFFICIENT_FUNDS, str(err))
        except OnBreak as err:
            await abort_refused(context, bet_pb2.REJECT_REASON_ACCOUNT_ON_BREAK, str(err))
        except DepositLimitExceeded as err:
            await abort_refused(context, bet_pb2.REJECT_REASON_DEPOSIT_LIMIT, str(err))
        except Suspended as err:
            await abort_refused(context, bet_pb2.REJECT_REASON_ACCOUNT_SUSPENDED, str(err))
        except Conflict as err:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(err))
        return txn, balance, currency

    async def Deposit(self, request: ws.DepositRequest, context: grpc.aio.ServicerContext) -> ws.DepositResponse:
        txn, balance, currency = await self._move(request, context, False)
        return ws.DepositResponse(transaction_id=txn, balance=money(balance, currency))

    async def Withdraw(self, request: ws.WithdrawRequest, context: grpc.aio.ServicerContext) -> ws.WithdrawResponse:
        txn, balance, currency = await self._move(request, context, True)
        return ws.WithdrawResponse(transaction_id=txn, balance=money(balance, currency))

    async def _currency(self, account: str, given: str, context: grpc.aio.ServicerContext) -> str:
        if given:
            if given not in EXPONENT:
                await abort_bad_request(context, [("currency_code", f"currency {given!r} is not supported")])
            return given
        found = await self.store.currencies(account)
        return found[0] if found else "EUR"

    async def _amounts(
        self,
        context: grpc.aio.ServicerContext,
        message: Message,
        fields: Sequence[str],
        prefix: str,
        currency_code: str,
        caps: dict[str, Any] | None = None,
    ) -> tuple[str, tuple[int | None, ...]]:
        """The limits a request asks for, in minor units (None: no limit), and their currency
        (the amounts', or ``currency_code`` when none is set); INVALID_ARGUMENT (field by field)
        for a bad amount, one above the operator's cap, an unknown currency or more than one."""
        bad: list[tuple[str, str]] = []
        amounts: list[int | None] = []
        currencies = {currency_code} if currency_code else set()
        if currency_code and currency_code not in EXPONENT:
            bad.append(("currency_code", f"currency {currency_code!r} is not supported"))
        for name in fields:
            if not message.HasField(name):
                amounts.append(None)
                continue
            m = getattr(message, name)
            currencies.add(m.currency_code)
            try:
                amounts.append(to_minor(m.currency_code, m.minor_units, m.decimal))
                cap = (caps or {}).get(name)
                if cap is not None and amounts[-1] > major_to_minor(cap, m.currency_code):  # type: ignore[operator]
                    bad.append((prefix + name, f"is above the operator's limit of {cap} {m.currency_code}"))
            except MoneyError as err:
                amounts.append(None)
                bad.append((prefix + name, str(err)))
        if not currencies:
            bad.append(("currency_code", "is required when no limit is set"))
        elif len(currencies) > 1:
            bad.append((prefix + fields[0], "the limits and currency_code must all be in one currency"))
        if bad:
            await abort_bad_request(context, bad)
        return currencies.pop(), tuple(amounts)

    async def SetStakeLimits(
        self, request: ws.SetStakeLimitsRequest, context: grpc.aio.ServicerContext
    ) -> ws.SetStakeLimitsResponse:
        account = await account_of(context)
        caps = {"max_stake": self.config.max_stake, "max_daily_stake": self.config.max_daily_stake}
        currency, wanted = await self._amounts(context, request, STAKE.columns, "", request.currency_code, caps)
        after = await self.protection.set_limits(STAKE, account, currency, wanted, self.cooling_off)
        out = ws.SetStakeLimitsResponse()
        _fill_set(out, ("", "pending", "pending_from"), STAKE.columns, after, currency)
        return out

    async def _set_period_limits(
        self, kind: Kind, request: Any, out: Message, context: grpc.aio.ServicerContext
    ) -> None:
        """SetDepositLimits and SetLossLimits: ``request.limits`` over the three periods."""
        account = await account_of(context)
        currency, wanted = await self._amounts(context, request.limits, kind.columns, "limits.", request.currency_code)
        after = await self.protection.set_limits(kind, account, currency, wanted, self.cooling_off)
        _fill_set(out, ("limits", "pending", "pending_from"), kind.columns, after, currency)

    async def SetDepositLimits(
        self, request: ws.SetDepositLimitsRequest, context: grpc.aio.ServicerContext
    ) -> ws.SetDepositLimitsResponse:
        out = ws.SetDepositLimitsResponse()
        await self._set_period_limits(DEPOSIT, request, out, context)
        return out

    async def SetLossLimits(
        self, request: ws.SetLossLimitsRequest, context: grpc.aio.ServicerContext
    ) -> ws.SetLossLimitsResponse:
        out = ws.SetLossLimitsResponse()
        await self._set_period_limits(LOSS, request, out, context)
        return out

    async def GetLimits(self, request: ws.GetLimitsRequest, context: grpc.aio.ServicerContext) -> ws.GetLimitsResponse:
        account = await account_of(context)
        currency = await self._currency(account, request.currency_code, context)
        return limits_response(await self.protection.get(account, currency), currency)

    async def TakeBreak(self, request: ws.TakeBreakRequest, context: grpc.aio.ServicerContext) -> ws.TakeBreakResponse:
        account = await account_of(context)
        bad: list[tuple[str, str]] = []
        bounds = (MIN_BREAK.total_seconds(), MAX_BREAK.total_seconds())
        if not request.HasField("duration"):
            bad.append(("duration", "is required: from 1 day to 1826 days"))
        seconds = duration_seconds(request, "duration", 0.0, bounds, bad)
        if bad:
            await abort_bad_request(context, bad)
        until = await self.protection.take_break(account, timedelta(seconds=seconds))
        out = ws.TakeBreakResponse()
        timestamp(out.until, until)
        return out

    async def SetRealityCheck(
        self, request: ws.SetRealityCheckRequest, context: grpc.aio.ServicerContext
    ) -> ws.SetRealityCheckResponse:
        account = await account_of(context)
        bad: list[tuple[str, str]] = []
        seconds = duration_seconds(request, "interval", 0.0, REALITY_CHECK_BOUNDS, bad)
        if seconds and not bad and seconds % 60:
            bad.append(("interval", f"is {seconds:g} s: it must be whole minutes"))
        if bad:
            await abort_bad_request(context, bad)
        every = timedelta(seconds=seconds) if seconds else None
        await self.protection.set_reality_check(account, every)
        out = ws.SetRealityCheckResponse()
        if every is not None:
            out.interval.FromTimedelta(every)
        return out

    async def GetActivity(
        self, request: ws.GetActivityRequest, context: grpc.aio.ServicerContext
    ) -> ws.GetActivityResponse:
        account = await account_of(context)
        now = datetime.now(UTC)
        bad: list[tuple[str, str]] = []
        since = now
        if not request.HasField("since"):
            bad.append(("since", "is required: at most 24 hours ago"))
        else:
            try:
                since = request.since.ToDatetime(UTC)
            except (ValueError, OverflowError):
                bad.append(("since", "is not a valid time"))
        if not bad and not now - ACTIVITY_WINDOW <= since <= now + CLOCK_SLACK:
            bad.append(("since", f"is {since.isoformat(timespec='seconds')}: it must be within the last 24 hours"))
        currency = await self._currency(account, request.currency_code, context)
        if bad:
            await abort_bad_request(context, bad)
        found = await self.protection.activity(account, currency, since)
        out = ws.GetActivityResponse(
            staked=money(found.staked, currency),
            returned=money(found.returned, currency),
            net=money(found.returned - found.staked, currency),
            open_stakes=money(found.open_stakes, currency),
            bets_placed=found.bets,
        )
        timestamp(out.since, since)
        timestamp(out.until, found.until)
        return out

    async def GetBalance(
        self, request: ws.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> ws.GetBalanceResponse:
        account = await account_of(context)
        currency = await self._currency(account, request.currency_code, context)
        available, held = await self.store.balance(account, currency)
        return ws.GetBalanceResponse(available=money(available, currency), held=money(held, currency))

    async def ListTransactions(
        self, request: ws.ListTransactionsRequest, context: grpc.aio.ServicerContext
    ) -> ws.ListTransactionsResponse:
        account = await account_of(context)
        bad = []
        if request.page_size < 0 or request.page_size > MAX_PAGE:
            bad.append(("page_size", f"must be 0-{MAX_PAGE} (0: the default 20)"))
        before = None
        if request.page_token:
            try:
                before = int(request.page_token)
            except ValueError:
                bad.append(("page_token", "is not a token this service returned"))
        if bad:
            await abort_bad_request(context, bad)
        currency = await self._currency(account, request.currency_code, context)
        size = request.page_size or 20
        rows = await self.store.transactions(account, currency, size + 1, before)
        out = ws.ListTransactionsResponse()
        for r in rows[:size]:
            t = out.transactions.add(
                transaction_id=str(r["transaction_id"]),
                kind=_KINDS.get(r["kind"], ws.TRANSACTION_KIND_UNSPECIFIED),
                amount=money(int(r["amount"]), currency),
                balance_after=money(int(r["balance_after"]), currency),
                bet_id=str(r["bet_id"] or ""),
            )
            timestamp(t.booked_at, r["created_at"])
        if len(rows) > size:
            out.next_page_token = str(rows[size - 1]["posting_id"])
        return out
