"""``livebet.betting.v1.BettingService`` and ``WalletService`` over the rules, the live odds view
and the PostgreSQL store.

The account acting is the one in the ``x-livebet-account`` header, which the edge sets from the
caller's token (and strips from what clients send); a call without it is UNAUTHENTICATED. Nothing
in a request body chooses whose money moves.

Errors: INVALID_ARGUMENT with ``google.rpc.BadRequest`` field violations for malformed requests;
NOT_FOUND for an unknown match, market, outcome or bet; FAILED_PRECONDITION with a
``google.rpc.ErrorInfo`` whose reason is the ``RejectReason`` name (market not open, odds changed,
limits, insufficient funds); ALREADY_EXISTS for a request id reused for another request. In every
one of these cases nothing was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, NoReturn

import grpc
import psycopg
from livebet.betting.v1 import bet_pb2, betting_service_pb2_grpc
from livebet.betting.v1 import betting_service_pb2 as bs
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from redis.exceptions import RedisError

from betting.adapters.odds import MatchView, OddsView
from betting.adapters.protection import OnBreak, Suspended
from betting.adapters.store import (
    STATUS_NAME,
    Conflict,
    DailyLimitExceeded,
    InsufficientFunds,
    LiabilityExceeded,
    LossLimitExceeded,
    Placement,
    Store,
    digest,
    page_token,
    parse_page_token,
)
from betting.cashout import CashOutDesk
from betting.domain.money import major_to_minor
from betting.domain.rules import (
    BadRequest,
    Config,
    Kind,
    Leg,
    Refusal,
    Ticket,
    check_ticket,
    is_builder,
    parse_quote,
    parse_request,
    price_builder,
    price_leg,
)
from betting.errors import abort_refused
from betting.metrics import BetMetrics
from betting.offer_stream import DEFAULT_HEARTBEAT, MAX_HEARTBEAT, MIN_HEARTBEAT, watch_offers
from feed.adapters.jetstream import token
from mesh import access
from mesh.errors import abort_bad_request, duration_seconds

log = logging.getLogger("betting")
MAX_PAGE = 100


async def account_of(context: grpc.aio.ServicerContext) -> str:
    # mesh.access.AccessInterceptor refused a call without one already; this is belt and braces.
    account = access.identity(context.invocation_metadata()).account
    if not account or len(account) > 128:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no authenticated account (sign in through the edge)")
    return str(account)


class Decider:
    """Turns a pending bet into accepted or rejected at the end of its delay."""

    def __init__(self, odds: OddsView, config: Config) -> None:
        self.odds, self.config = odds, config

    async def __call__(self, row: dict[str, Any], legs: list[dict[str, Any]]) -> tuple[Any, ...]:
        prices: list[Decimal] = []
        builder = is_builder(legs)  # its legs carry the builder's requested odds
        quoted: list[tuple[Leg, Any]] = []
        view: MatchView | None = None
        views: dict[str, MatchView] = {}  # one snapshot per match: a bet builder is priced from one
        histories: dict[str, list[Any]] = {}
        for g in legs:
            leg = Leg(g["match_id"], g["market_key"], g["market_type"], g["outcome_id"], g["requested_odds"], 0)
            try:
                view = views.get(leg.match_id) or await self.odds.match(leg.match_id)
                views[leg.match_id] = view
                why = await self.odds.interrupted_since(leg, g["seen_version"], view.version, histories)
                if why:
                    return ("rejected", bet_pb2.REJECT_REASON_SUSPENDED_DURING_DELAY, f"{leg.market_key}: {why}")
                if builder:
                    quoted.append((leg, view.quote(leg)))
                else:
                    prices.append(price_leg(leg, view.quote(leg), row["policy"], self.config))
            except Refusal as r:
                return ("rejected", r.reason or bet_pb2.REJECT_REASON_MARKET_NOT_OPEN, r.message)
        standing = prices  # the odds the bet stands at: the legs', or the builder's own
        if builder and view is not None:
            legs_now, quotes = zip(*quoted, strict=True)
            asked = Decimal(legs[0]["requested_odds"])
            try:
                prices, odds = price_builder(legs_now, quotes, view.model, asked, row["policy"], self.config)
            except Refusal as r:
                return ("rejected", r.reason or bet_pb2.REJECT_REASON_MARKET_NOT_OPEN, r.message)
            standing = [odds]
        ticket = Ticket(row["request_id"], (), row["currency"], row["stake"], row["policy"])
        try:
            combined, win = check_ticket(ticket, standing, self.config)
        except Refusal as r:
            return ("rejected", r.reason, r.message)
        return ("accepted", prices, combined, win, major_to_minor(self.config.max_liability, row["currency"]))


class BettingApi(betting_service_pb2_grpc.BettingServiceServicer):
    def __init__(
        self, store: Store, odds: OddsView, config: Config, nats: Any, metrics: BetMetrics | None = None
    ) -> None:
        self.store, self.odds, self.config, self.nats = store, odds, config, nats
        self.metrics = metrics or BetMetrics()
        self.cash_outs = CashOutDesk(store, odds, config, self.metrics)
        self.placed = 0

    async def _refuse(self, context: grpc.aio.ServicerContext, reason: int, message: str) -> NoReturn:
        self.metrics.refused(reason)
        await abort_refused(context, reason, message)

    async def PlaceBet(self, request: bs.PlaceBetRequest, context: grpc.aio.ServicerContext) -> bs.PlaceBetResponse:
        account = await account_of(context)
        try:
            ticket = parse_request(request, self.config)
        except BadRequest as err:
            await abort_bad_request(context, err.violations)
        request_digest = digest(request.SerializeToString(deterministic=True))
        try:
            return await self._place(account, ticket, request_digest, context)
        except (psycopg.OperationalError, RedisError) as err:
            await _unavailable(context, "PlaceBet", err, "bets are")

    async def _place(
        self, account: str, ticket: Ticket, request_digest: bytes, context: grpc.aio.ServicerContext
    ) -> bs.PlaceBetResponse:
        try:
            by_match: dict[str, MatchView] = {}  # one snapshot per match: a bet builder is priced from one
            for leg in ticket.legs:
                if leg.match_id not in by_match:
                    by_match[leg.match_id] = await self.odds.match(leg.match_id)
            views = [by_match[leg.match_id] for leg in ticket.legs]
            if ticket.builder is None:
                prices = [
                    price_leg(leg, v.quote(leg), ticket.policy, self.config)
                    for leg, v in zip(ticket.legs, views, strict=True)
                ]
                combined, win = check_ticket(ticket, prices, self.config)
            else:  # one match: its legs priced together
                quotes = [v.quote(leg) for leg, v in zip(ticket.legs, views, strict=True)]
                prices, odds = price_builder(
                    ticket.legs, quotes, views[0].model, ticket.builder, ticket.policy, self.config
                )
                combined, win = check_ticket(ticket, [odds], self.config)
        except Refusal as r:
            # a retry of a bet that was placed must get the first answer, whatever the price is now
            try:
                earlier = await self.store.existing(account, ticket.request_id, request_digest)
            except Conflict as err:
                await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(err))
            if earlier is not None:
                return bs.PlaceBetResponse(bet=earlier)
            if r.kind is Kind.NOT_FOUND:
                await context.abort(grpc.StatusCode.NOT_FOUND, r.message)
            await self._refuse(context, r.reason, r.message)
        in_play = any(v.in_play for v in views)
        delay = max(
            self.config.delay(v.sport, leg.market_type, v.in_play) for leg, v in zip(ticket.legs, views, strict=True)
        )
        placement = Placement(
            ticket=ticket,
            account=account,
            request_digest=request_digest,
            odds=prices,
            seen_versions=[v.version for v in views],
            combined=combined,
            potential_payout=win,
            in_play=in_play,
            delay_seconds=delay,
            max_liability=major_to_minor(self.config.max_liability, ticket.currency),
            max_daily_stake=major_to_minor(self.config.max_daily_stake, ticket.currency),
        )
        try:
            bet, created = await self.store.place(placement)
        except InsufficientFunds as err:
            await self._refuse(context, bet_pb2.REJECT_REASON_INSUFFICIENT_FUNDS, str(err))
        except LiabilityExceeded as err:
            await self._refuse(context, bet_pb2.REJECT_REASON_LIABILITY_LIMIT, str(err))
        except DailyLimitExceeded as err:
            await self._refuse(context, bet_pb2.REJECT_REASON_ACCOUNT_LIMIT, str(err))
        except LossLimitExceeded as err:
            await self._refuse(context, bet_pb2.REJECT_REASON_LOSS_LIMIT, str(err))
        except OnBreak as err:
            await self._refuse(context, bet_pb2.REJECT_REASON_ACCOUNT_ON_BREAK, str(err))
        except Suspended as err:
            await self._refuse(context, bet_pb2.REJECT_REASON_ACCOUNT_SUSPENDED, str(err))
        except Conflict as err:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(err))
        if created:
            self.placed += 1
            self.metrics.placed(bet)
            log.info(
                "bet placed",
                extra={"bet_id": bet.bet_id, "account": account, "status": STATUS_NAME[bet.status], "delay": delay},
            )
        return bs.PlaceBetResponse(bet=bet)

    async def QuoteBetBuilder(
        self, request: bs.QuoteBetBuilderRequest, context: grpc.aio.ServicerContext
    ) -> bs.QuoteBetBuilderResponse:
        await account_of(context)
        try:
            legs = parse_quote(request.outcomes)
        except BadRequest as err:
            await abort_bad_request(context, err.violations)
        try:
            view = await self.odds.match(legs[0].match_id)
            quotes = [view.quote(leg) for leg in legs]
            singles, odds = price_builder(
                legs, quotes, view.model, Decimal(0), bet_pb2.ODDS_CHANGE_POLICY_ANY, self.config
            )
        except Refusal as r:
            self.metrics.builders.labels("quote_refused", bet_pb2.RejectReason.Name(r.reason)).inc()
            if r.kind is Kind.NOT_FOUND:
                await context.abort(grpc.StatusCode.NOT_FOUND, r.message)
            await abort_refused(context, r.reason, r.message)
        except RedisError as err:
            await _unavailable(context, "QuoteBetBuilder", err, "bet builder prices are")
        self.metrics.builders.labels("quoted", "").inc()
        out = bs.QuoteBetBuilderResponse(match_version=view.version, market_versions=[q.market_version for q in quotes])
        out.odds.decimal = f"{odds:.2f}"
        for price in singles:
            out.single_odds.add(decimal=f"{price:.2f}")
        return out

    async def GetBet(self, request: bs.GetBetRequest, context: grpc.aio.ServicerContext) -> bs.GetBetResponse:
        account = await account_of(context)
        try:
            uuid.UUID(request.bet_id)
        except ValueError:
            await abort_bad_request(context, [("bet_id", f"{request.bet_id!r} is not a bet id")])
        bet = await self.store.get(account, request.bet_id)
        if bet is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no bet {request.bet_id} for this account")
        return bs.GetBetResponse(bet=bet)

    async def ListBets(self, request: bs.ListBetsRequest, context: grpc.aio.ServicerContext) -> bs.ListBetsResponse:
        account = await account_of(context)
        bad = []
        if request.page_size < 0 or request.page_size > MAX_PAGE:
            bad.append(("page_size", f"must be 0-{MAX_PAGE} (0: the default 20)"))
        after = None
        if request.page_token:
            try:
                after = parse_page_token(request.page_token)
            except (ValueError, UnicodeDecodeError):
                bad.append(("page_token", "is not a token this service returned"))
        if request.status and request.status not in STATUS_NAME:
            bad.append(("status", f"unknown status {request.status}"))
        if bad:
            await abort_bad_request(context, bad)
        size = request.page_size or 20
        bets = await self.store.list_bets(account, size + 1, after, STATUS_NAME.get(request.status))
        more = len(bets) > size
        bets = bets[:size]
        return bs.ListBetsResponse(bets=bets, next_page_token=page_token(bets[-1]) if more else "")

    async def WatchBets(
        self, request: bs.WatchBetsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bs.WatchBetsResponse]:
        """The account's bet events as they happen (pending → accepted/rejected → settled); with
        ``include_open`` first the open bets as they stand; an empty message after ``heartbeat``
        without one. Subscribes before reading, drops repeats
        and anything older than what was sent for a bet."""
        account = await account_of(context)
        bad: list[tuple[str, str]] = []
        heartbeat = duration_seconds(request, "heartbeat", DEFAULT_HEARTBEAT, (MIN_HEARTBEAT, MAX_HEARTBEAT), bad)
        if bad:
            await abort_bad_request(context, bad)
        nc: NatsClient = self.nats.nc
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)

        async def on_msg(msg: Msg) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(msg.data)  # a stream this far behind gets GetBet/ListBets, not a backlog

        sub = await nc.subscribe(f"bets.{token(account)}.*", cb=on_msg)
        rank: dict[str, tuple[int, int]] = {}

        def fresh(bet: bet_pb2.Bet) -> bool:
            # pending, then accepted or rejected, then cashed out (final); settled at each version
            order = {bet_pb2.BET_STATUS_PENDING: 0, bet_pb2.BET_STATUS_CASHED_OUT: 2}.get(bet.status, 1)
            key = (
                (bet.settlement_version, order)
                if bet.status != bet_pb2.BET_STATUS_SETTLED
                else (bet.settlement_version + 1, 0)
            )
            if rank.get(bet.bet_id, (-1, -1)) >= key:
                return False
            rank[bet.bet_id] = key
            return True

        try:
            if request.include_open:
                for bet in await self.store.open_bets(account):
                    if fresh(bet):
                        event = bet_pb2.BetEvent(event_id=f"{bet.bet_id}:{STATUS_NAME[bet.status]}:open", bet=bet)
                        yield bs.WatchBetsResponse(event=event)
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), heartbeat)
                except TimeoutError:
                    yield bs.WatchBetsResponse()  # a heartbeat: nothing changed
                    continue
                event = bet_pb2.BetEvent.FromString(data)
                if fresh(event.bet):
                    yield bs.WatchBetsResponse(event=event)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def GetCashOutOffer(
        self, request: bs.GetCashOutOfferRequest, context: grpc.aio.ServicerContext
    ) -> bs.GetCashOutOfferResponse:
        account = await account_of(context)
        try:
            return await self.cash_outs.get_offer(account, request, context)
        except (psycopg.OperationalError, RedisError) as err:
            await _unavailable(context, "GetCashOutOffer", err, "cash-out is")

    async def WatchCashOutOffers(
        self, request: bs.WatchCashOutOffersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bs.WatchCashOutOffersResponse]:
        """The offers of the caller's bets as the odds move (betting/offer_stream.py)."""
        account = await account_of(context)
        self.metrics.offer_streams.inc()
        try:
            async for message in watch_offers(self.cash_outs, self.nats.nc, account, request, context):
                yield message
        except (psycopg.OperationalError, RedisError) as err:
            log.warning("WatchCashOutOffers: a dependency failed", extra={"error": str(err)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "cash-out offers are unavailable right now; watch again")
        finally:
            self.metrics.offer_streams.dec()

    async def CashOut(self, request: bs.CashOutRequest, context: grpc.aio.ServicerContext) -> bs.CashOutResponse:
        account = await account_of(context)
        try:
            return await self.cash_outs.cash_out(account, request, context)
        except (psycopg.OperationalError, RedisError) as err:
            await _unavailable(context, "CashOut", err, "cash-out is")

    async def SetAutoCashOut(
        self, request: bs.SetAutoCashOutRequest, context: grpc.aio.ServicerContext
    ) -> bs.SetAutoCashOutResponse:
        account = await account_of(context)
        try:
            return await self.cash_outs.set_auto(account, request, context)
        except psycopg.OperationalError as err:
            await _unavailable(context, "SetAutoCashOut", err, "cash-out is")


async def _unavailable(context: grpc.aio.ServicerContext, method: str, err: Exception, what: str) -> NoReturn:
    """PostgreSQL or Redis failed: UNAVAILABLE, which a client retries with the same request id."""
    log.warning(f"{method}: a dependency failed", extra={"error": str(err)})
    await context.abort(grpc.StatusCode.UNAVAILABLE, f"{what} unavailable right now; retry with the same request_id")
    raise AssertionError("unreachable") from err
