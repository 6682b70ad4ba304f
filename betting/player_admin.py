"""``livebet.betting.v1.PlayerAdminService``: the operator's side of player protection (admin
role, checked by Envoy and by :mod:`mesh.access`). A player's wallets, own limits, break,
suspension and protection log; suspending and resuming an account. Every suspension and resume
is logged with the operator's account and reason."""

from __future__ import annotations

import grpc
import orjson
from livebet.betting.v1 import player_admin_service_pb2 as pa
from livebet.betting.v1 import player_admin_service_pb2_grpc

from betting.adapters.protection import ProtectionStore, Suspension
from betting.adapters.store import Store, money
from betting.wallet import limits_response, timestamp
from mesh import access
from mesh.errors import abort_bad_request

MAX_REASON = 500


def _suspension(out: pa.Suspension, s: Suspension) -> None:
    out.reason, out.suspended_by, out.withdrawals_frozen = s.reason, s.suspended_by, s.withdrawals_frozen
    timestamp(out.since, s.since)


async def _request(context: grpc.aio.ServicerContext, account_id: str, reason: str | None) -> str:
    """The operator acting; INVALID_ARGUMENT for a missing account id or reason."""
    bad = []
    if not account_id or len(account_id) > 128:
        bad.append(("account_id", "is required (at most 128 characters)"))
    if reason is not None and not 1 <= len(reason.strip()) <= MAX_REASON:
        bad.append(("reason", f"is required (1 to {MAX_REASON} characters)"))
    if bad:
        await abort_bad_request(context, bad)
    return access.identity(context.invocation_metadata()).account or "operator"


class PlayerAdminApi(player_admin_service_pb2_grpc.PlayerAdminServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store
        self.protection = ProtectionStore(store.source)

    async def GetPlayer(self, request: pa.GetPlayerRequest, context: grpc.aio.ServicerContext) -> pa.GetPlayerResponse:
        await _request(context, request.account_id, None)
        account = request.account_id
        currencies = await self.store.currencies(account)
        if not currencies:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"account {account!r} has no wallet")
        out = pa.GetPlayerResponse(account_id=account)
        for currency in currencies:
            available, held = await self.store.balance(account, currency)
            limits = limits_response(await self.protection.get(account, currency), currency)
            limits.ClearField("break_until")  # said once, below
            out.wallets.add(available=money(available, currency), held=money(held, currency), limits=limits)
        until, suspension, log = await self.protection.player(account)
        if until is not None:
            timestamp(out.break_until, until)
        if suspension is not None:
            _suspension(out.suspension, suspension)
        for row in log:
            entry = out.log.add(action=row["action"], detail_json=orjson.dumps(row["detail"]).decode())
            timestamp(entry.at, row["created_at"])
        return out

    async def SuspendPlayer(
        self, request: pa.SuspendPlayerRequest, context: grpc.aio.ServicerContext
    ) -> pa.SuspendPlayerResponse:
        by = await _request(context, request.account_id, request.reason)
        suspension = await self.protection.suspend(
            request.account_id, request.reason.strip(), by, request.freeze_withdrawals
        )
        out = pa.SuspendPlayerResponse()
        _suspension(out.suspension, suspension)
        return out

    async def ResumePlayer(
        self, request: pa.ResumePlayerRequest, context: grpc.aio.ServicerContext
    ) -> pa.ResumePlayerResponse:
        by = await _request(context, request.account_id, request.reason)
        lifted = await self.protection.resume(request.account_id, request.reason.strip(), by)
        return pa.ResumePlayerResponse(was_suspended=lifted)
