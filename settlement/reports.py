"""``livebet.settlement.v1.ReportService``: turnover, payouts, GGR and bet counts, and the open
liability per outcome, read set-based from the betting tables.

Definitions (per currency): **turnover** = stakes of bets placed in the window that were not
rejected; **payouts** = what those bets paid once settled (a void returns its stake, so it counts
as a payout); **GGR** = turnover - payouts over the *settled* bets (open bets have no result yet,
so they are in turnover and ``bets`` but not in GGR). A cashed-out bet counts as settled, its
cash-out amount as its payout; a part closed by a partial cash-out counts as settled at once (its
stake in turnover and settled stakes, its amount in payouts) while the rest of its bet is open.
Per market an accumulator counts once for each of its legs' markets; per match and per day it
counts once. The house ledger account holds exactly the settled GGR (a test reconciles them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from livebet.settlement.v1 import report_service_pb2 as rs
from livebet.settlement.v1 import report_service_pb2_grpc

from betting.adapters.store import PoolSource, money
from betting.domain.money import EXPONENT

_KEY = {
    rs.REPORT_GROUPING_MATCH: "s.match_id",
    rs.REPORT_GROUPING_MARKET: "s.match_id || '/' || s.market_key",
    rs.REPORT_GROUPING_DAY: "to_char(b.placed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


class ReportApi(report_service_pb2_grpc.ReportServiceServicer):
    def __init__(self, source: PoolSource) -> None:
        self.source = source

    async def GetTurnoverReport(
        self, request: rs.GetTurnoverReportRequest, context: grpc.aio.ServicerContext
    ) -> rs.GetTurnoverReportResponse:
        currency = request.currency_code or "EUR"
        if currency not in EXPONENT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"currency_code {currency!r} is not supported")
        grouping = request.grouping or rs.REPORT_GROUPING_MATCH
        if grouping not in _KEY:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown grouping {request.grouping}")
        start = (
            request.from_time.ToDatetime(tzinfo=UTC)
            if request.HasField("from_time")
            else datetime(1970, 1, 1, tzinfo=UTC)
        )
        end = (
            request.to_time.ToDatetime(tzinfo=UTC) if request.HasField("to_time") else datetime(9999, 1, 1, tzinfo=UTC)
        )
        if end <= start:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "to_time must be after from_time")
        key = _KEY[grouping]
        # per market, a bet counts once per market it has a leg in; per match and day, once
        done = "status IN ('settled', 'cashed_out')"  # a cash-out settled the bet
        # a part closed by a partial cash-out is settled at once, whatever the rest of its bet does
        figures = f"""sum(stake + cashed_out_stake),
                      coalesce(sum(payout) FILTER (WHERE {done}), 0) + sum(cashed_out_amount),
                      coalesce(sum(stake) FILTER (WHERE {done}), 0) + sum(cashed_out_stake),
                      count(*), count(*) FILTER (WHERE {done})"""
        query = f"""
            SELECT key, {figures}
            FROM (SELECT DISTINCT {key} AS key, b.bet_id, b.stake, b.payout, b.status, b.cashed_out_stake,
                         b.cashed_out_amount
                    FROM betting.bets b JOIN betting.selections s ON s.bet_id = b.bet_id
                   WHERE b.currency = %s AND b.placed_at >= %s AND b.placed_at < %s
                     AND b.status <> 'rejected') x
            GROUP BY key ORDER BY key"""
        async with self.source.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(query, (currency, start, end))
            rows = await cur.fetchall()
            await cur.execute(
                f"""SELECT {figures}
                   FROM betting.bets WHERE currency = %s AND placed_at >= %s AND placed_at < %s
                     AND status <> 'rejected'""",
                (currency, start, end),
            )
            total = await cur.fetchone()
        out = rs.GetTurnoverReportResponse(rows=[_row(r[0], r[1:], currency) for r in rows])
        assert total is not None
        out.total.CopyFrom(_row("", total, currency))
        return out

    async def GetOpenLiability(
        self, request: rs.GetOpenLiabilityRequest, context: grpc.aio.ServicerContext
    ) -> rs.GetOpenLiabilityResponse:
        if not request.match_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "match_id is required")
        currency = request.currency_code or "EUR"
        async with self.source.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                """SELECT s.market_key, s.market_type, s.outcome_id, sum(b.stake), sum(b.potential_payout), count(*)
                   FROM betting.bets b JOIN betting.selections s ON s.bet_id = b.bet_id
                   WHERE s.match_id = %s AND b.currency = %s AND b.status IN ('accepted', 'pending')
                   GROUP BY 1, 2, 3 ORDER BY sum(b.potential_payout) DESC""",
                (request.match_id, currency),
            )
            rows = await cur.fetchall()
        out = rs.GetOpenLiabilityResponse()
        for market_key, market_type, outcome_id, stakes, payout, bets in rows:
            o = out.outcomes.add(stakes=money(int(stakes), currency), potential_payout=money(int(payout), currency))
            o.bets = int(bets)
            o.outcome.outcome_id = outcome_id
            m = o.outcome.market
            m.match_id, m.market_type, m.market_key = request.match_id, market_type, market_key
        return out


def _row(key: str, values: Any, currency: str) -> rs.TurnoverRow:
    turnover, payouts, settled_stakes, bets, settled = (int(v or 0) for v in values)
    return rs.TurnoverRow(
        key=key,
        turnover=money(turnover, currency),
        payouts=money(payouts, currency),
        ggr=money(settled_stakes - payouts, currency),
        bets=bets,
        settled_bets=settled,
    )
