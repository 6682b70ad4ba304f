"""``livebet.settlement.v1.SettlementService``: a trader settles, voids or rolls back a market by
hand, with a reason; who did it is the ``x-livebet-account`` the edge sets (admin role required at
the edge). Each call is idempotent by ``request_id`` (the first answer again; ALREADY_EXISTS for
another request under the same id) and uses the same settlement paths as the feed's results."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc
from livebet.settlement.v1 import settlement_pb2 as sp
from livebet.settlement.v1 import settlement_service_pb2 as ss
from livebet.settlement.v1 import settlement_service_pb2_grpc

from betting.adapters.store import PoolSource
from betting.domain.rules import ref_key
from mesh import access
from settlement.adapters.store import ORIGINS, settlement_message
from settlement.domain.results import provider_results
from settlement.service import Settler

log = logging.getLogger("settlement.admin")


class SettlementApi(settlement_service_pb2_grpc.SettlementServiceServicer):
    def __init__(self, settler: Settler, source: PoolSource) -> None:
        self.settler, self.store, self.source = settler, settler.store, source

    async def _begin(self, context: grpc.aio.ServicerContext, request: Any) -> tuple[str, bytes, sp.Settlement | None]:
        actor = access.actor(context)
        if not request.request_id or len(request.request_id) > 128:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request_id is required (at most 128 characters)")
        if not request.market.match_id or not ref_key(request.market):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "market.match_id and market.market_key are required")
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
        async with self.source.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT digest, response FROM settlement.requests WHERE request_id = %s", (request.request_id,)
            )
            row = await cur.fetchone()
        if row is None:
            return actor, digest, None
        if bytes(row[0]) != digest:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"request_id {request.request_id!r} was used for another request"
            )
        return actor, digest, sp.Settlement.FromString(bytes(row[1]))

    async def _finish(self, request_id: str, digest: bytes, actor: str, settlement: sp.Settlement) -> sp.Settlement:
        async with self.source.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO settlement.requests (request_id, digest, response, actor) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (request_id) DO NOTHING",
                (request_id, digest, settlement.SerializeToString(), actor),
            )
        extra = {
            "actor": actor,
            "action": sp.SettlementAction.Name(settlement.action),
            "match_id": settlement.market.match_id,
            "market": settlement.market.market_key,
            "bets": settlement.bets_affected,
            "reason": settlement.reason,
        }
        log.info("manual settlement", extra=extra)
        return settlement

    def _settlement(self, request: Any, action: int, actor: str, version: int, bets: int, payout: int) -> sp.Settlement:
        key = ref_key(request.market)
        s = settlement_message(
            request.request_id, request.market.match_id, key, action, sp.SETTLEMENT_ORIGIN_MANUAL, version, bets,
            payout, actor=actor, reason=request.reason,
        )  # fmt: skip
        s.market.CopyFrom(request.market)  # the reference as the trader gave it, with its canonical key
        s.market.market_key = key
        return s

    async def SettleMarket(
        self, request: ss.SettleMarketRequest, context: grpc.aio.ServicerContext
    ) -> ss.SettleMarketResponse:
        actor, digest, earlier = await self._begin(context, request)
        if earlier is not None:
            return ss.SettleMarketResponse(settlement=earlier)
        bad = []
        if not request.outcomes:
            bad.append("outcomes: at least one outcome result is required")
        for i, o in enumerate(request.outcomes):
            if o.result not in (1, 2, 3, 4, 5):
                bad.append(f"outcomes[{i}].result: must be win, lose, void, half win or half lose")
            for name in ("void_factor", "dead_heat_factor"):
                text = getattr(o, name)
                try:
                    if text and not Decimal(text).is_finite():
                        raise InvalidOperation
                except InvalidOperation:
                    bad.append(f"outcomes[{i}].{name}: {text!r} is not a decimal")
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(bad))
        key, match_id = ref_key(request.market), request.market.match_id
        legs = await self.store.open_legs(match_id, include_settled=True)
        outcomes = [(o.outcome_id, o.result, o.void_factor, o.dead_heat_factor) for o in request.outcomes]
        results = provider_results(outcomes, legs, key)
        version, count, payout = 0, 0, 0
        if results:
            version, count, payout = await self.store.settle(
                match_id,
                key,
                results,
                datetime.now(UTC),
                "manual",
                correct_any=True,
                actor=actor,
                reason=request.reason,
            )
        out = self._settlement(request, sp.SETTLEMENT_ACTION_SETTLE, actor, version, count, payout)
        out.outcomes.extend(request.outcomes)
        return ss.SettleMarketResponse(settlement=await self._finish(request.request_id, digest, actor, out))

    async def VoidMarket(
        self, request: ss.VoidMarketRequest, context: grpc.aio.ServicerContext
    ) -> ss.VoidMarketResponse:
        actor, digest, earlier = await self._begin(context, request)
        if earlier is not None:
            return ss.VoidMarketResponse(settlement=earlier)
        start = (
            request.start_time.ToDatetime(tzinfo=UTC)
            if request.HasField("start_time")
            else datetime(1970, 1, 1, tzinfo=UTC)
        )
        end = request.end_time.ToDatetime(tzinfo=UTC) if request.HasField("end_time") else None
        if end is not None and end <= start:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "end_time must be after start_time")
        key = ref_key(request.market)
        count = await self.settler.cancel(
            f"manual:{request.request_id}", request.market.match_id, key, start, end, request.reason, actor
        )
        out = self._settlement(request, sp.SETTLEMENT_ACTION_VOID, actor, 0, count, 0)
        return ss.VoidMarketResponse(settlement=await self._finish(request.request_id, digest, actor, out))

    async def RollbackSettlement(
        self, request: ss.RollbackSettlementRequest, context: grpc.aio.ServicerContext
    ) -> ss.RollbackSettlementResponse:
        actor, digest, earlier = await self._begin(context, request)
        if earlier is not None:
            return ss.RollbackSettlementResponse(settlement=earlier)
        version, reopened = await self.store.rollback(
            request.market.match_id, ref_key(request.market), f"manual: {request.reason}", actor
        )
        if version == 0:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the market has no settlement to roll back")
        out = self._settlement(request, sp.SETTLEMENT_ACTION_ROLLBACK_SETTLEMENT, actor, version, reopened, 0)
        return ss.RollbackSettlementResponse(settlement=await self._finish(request.request_id, digest, actor, out))

    async def GetSettlement(
        self, request: ss.GetSettlementRequest, context: grpc.aio.ServicerContext
    ) -> ss.GetSettlementResponse:
        async with self.source.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT response FROM settlement.requests WHERE request_id = %s", (request.settlement_id,)
            )
            row = await cur.fetchone()
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no manual settlement {request.settlement_id!r}")
            raise AssertionError("unreachable")
        return ss.GetSettlementResponse(settlement=sp.Settlement.FromString(bytes(row[0])))

    async def ListSettlements(
        self, request: ss.ListSettlementsRequest, context: grpc.aio.ServicerContext
    ) -> ss.ListSettlementsResponse:
        """Every settlement version of a match's markets (score, provider and manual), newest first."""
        size = request.page_size or 50
        if not 0 < size <= 500:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be 1-500")
        try:
            offset = int(request.page_token or "0")
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not a token this service returned")
        async with self.source.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                """SELECT settlement_id, market_key, version, origin, results, bets_settled, total_payout, actor,
                          reason, created_at, rolled_back_at
                   FROM settlement.settlements WHERE match_id = %s
                   ORDER BY created_at DESC, settlement_id LIMIT %s OFFSET %s""",
                (request.match_id, size + 1, offset),
            )
            rows = await cur.fetchall()
        out = ss.ListSettlementsResponse()
        for sid, key, version, origin, results, bets, payout, actor, reason, created, rolled in rows[:size]:
            settlement = settlement_message(
                str(sid), request.match_id, key, sp.SETTLEMENT_ACTION_SETTLE, ORIGINS[origin], version, bets,
                int(payout), results, actor, reason + (" (rolled back)" if rolled else ""), created,
            )  # fmt: skip
            out.settlements.append(settlement)
        if len(rows) > size:
            out.next_page_token = str(offset + size)
        return out
