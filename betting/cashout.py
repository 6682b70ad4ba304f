"""``GetCashOutOffer`` and ``CashOut``: an accepted bet closed before its result is known.

The offer is priced by :func:`betting.domain.cashout.offer` from the bet's legs as stored and the
live odds of its open legs (the same Redis snapshots PlaceBet reads). There is an offer only while
every open leg's market is open; a leg that lost leaves none.

CashOut decides as PlaceBet does for an in-play bet, but holds the call instead of storing a
pending state: the amount asked must be covered by the offer now; in play the call then waits out
the legs' in-play delay, checks that no open leg's market was suspended since it was priced
(the delta log, as the bet decision does), and prices the bet again. Only then is anything written:
``betting.cash_out`` locks the bet, checks it is still accepted and its open legs still unsettled,
and moves the money in one transaction. A call cut short (a restart, a client gone) wrote nothing,
and the same request id may be sent again. The bettor gets the offer at the decision, which is
never less than the amount asked.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration
from livebet.betting.v1 import bet_pb2
from livebet.betting.v1 import betting_service_pb2 as bs

from betting.adapters.odds import MatchView, OddsView
from betting.adapters.store import Conflict, Store, digest, money
from betting.domain.cashout import CashOutLeg, Part, builder_offer, offer, part_problem, split
from betting.domain.money import MoneyError, format_minor, major_to_minor, to_minor
from betting.domain.rules import MAX_ID, Config, Kind, Leg, Refusal, is_builder
from betting.errors import abort_refused
from betting.metrics import BetMetrics
from mesh.errors import abort_bad_request
from pricing import builder as bb

log = logging.getLogger("betting.cashout")


@dataclass(frozen=True)
class Priced:
    amount: int  # minor units
    delay: float  # seconds: the longest in-play delay of the open legs
    open_legs: list[int]  # the legs priced from the live odds (not settled yet)
    seen: list[tuple[Leg, int]]  # each open leg with the match version it was priced at
    stake: int  # the bet's stake it was priced on
    part: Part | None = None  # a partial cash-out's part; None: the whole bet


def _unavailable(message: str) -> Refusal:
    return Refusal(Kind.FAILED_PRECONDITION, bet_pb2.REJECT_REASON_CASH_OUT_UNAVAILABLE, message)


def not_open(status: str) -> Refusal:
    return _unavailable(f"the bet is {status.replace('_', ' ')}: only an accepted bet can be cashed out")


def same_views(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Whether two :meth:`CashOutDesk.views` are of the same snapshots (then the offer is the same)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def open_matches(bets: Iterable[tuple[dict[str, Any], list[dict[str, Any]]]]) -> set[str]:
    """The matches of the open (unsettled) legs of these bets (row, legs)."""
    return {leg["match_id"] for _, legs in bets for leg in legs if leg["return_per_unit"] is None}


class CashOutDesk:
    def __init__(self, store: Store, odds: OddsView, config: Config, metrics: BetMetrics) -> None:
        self.store, self.odds, self.config, self.metrics = store, odds, config, metrics
        #: called when SetAutoCashOut changed a rule here (the watcher then reads the rules at once)
        self.on_auto_change: Callable[[str], None] = lambda bet_id: None

    async def price(self, row: dict[str, Any], legs: list[dict[str, Any]], part: int | None = None) -> Priced:
        """The bet's offer now (for ``part`` of its stake: a partial cash-out), or a Refusal: not
        accepted, a leg lost, a leg's market not open, a part no longer less than the stake."""
        if row["status"] != "accepted":
            raise not_open(row["status"])
        stake = int(row["stake"])
        if part is not None and part >= stake:
            message = f"the bet's stake is now {format_minor(stake, row['currency'])}: ask for a new offer"
            raise Refusal(Kind.FAILED_PRECONDITION, bet_pb2.REJECT_REASON_ODDS_CHANGED, message)
        items: list[CashOutLeg] = []
        open_legs: list[int] = []
        seen: list[tuple[Leg, int]] = []
        delay = 0.0
        builder = is_builder(legs)
        model: bb.ModelInputs | None = None
        views: dict[str, MatchView] = {}  # one snapshot per match: a bet builder is priced from one
        for g in legs:
            if builder and g["return_per_unit"] is not None:
                if g["return_per_unit"] == 0:
                    raise _unavailable("a leg has lost")
                if g["result"] != bet_pb2.BET_RESULT_WON or g["return_per_unit"] != g["odds"]:
                    raise _unavailable("a leg is void: the bet builder is settled void, its stake returned")
                continue  # won: certain
            accepted = Decimal(g["odds"])
            if g["return_per_unit"] is not None:
                items.append(CashOutLeg(accepted, settled_return=Decimal(g["return_per_unit"])))
                continue
            leg = Leg(g["match_id"], g["market_key"], g["market_type"], g["outcome_id"], accepted, 0)
            where = f"{leg.match_id} {leg.market_key} {leg.outcome_id}"
            try:
                view = views.get(leg.match_id) or await self.odds.match(leg.match_id)
                views[leg.match_id] = view
                quote = view.quote(leg)
            except Refusal as r:  # the match or market is no longer priced
                raise Refusal(Kind.FAILED_PRECONDITION, bet_pb2.REJECT_REASON_MARKET_NOT_OPEN, r.message) from None
            if not quote.open or quote.odds is None:
                why = f" ({quote.status_reason})" if quote.status_reason else ""
                message = f"{where} is not open{why}: no cash-out offer until it is"
                raise Refusal(Kind.FAILED_PRECONDITION, bet_pb2.REJECT_REASON_MARKET_NOT_OPEN, message)
            items.append(CashOutLeg(accepted, current=quote.odds))
            open_legs.append(int(g["leg"]))
            seen.append((leg, view.version))
            delay = max(delay, self.config.delay(view.sport, leg.market_type, view.in_play))
            model = view.model
        margin = self.config.cash_out_margin
        if builder:
            p = self._builder_probability([leg for leg, _ in seen], model)

            def worth(stake_part: int, payout: int) -> int:  # the part's payout if every leg wins, now
                return builder_offer(payout, p, margin)
        else:

            def worth(stake_part: int, payout: int) -> int:
                return offer(stake_part, items, margin, payout)

        payout = int(row["potential_payout"])
        if part is None:
            return Priced(worth(stake, payout), delay, open_legs, seen, stake)
        closed = split(stake, payout, Decimal(row["odds"]), part)
        return Priced(worth(part, closed.released), delay, open_legs, seen, stake, closed)

    @staticmethod
    def _builder_probability(open_legs: list[Leg], model: bb.ModelInputs | None) -> float:
        """The model's probability now that a bet builder's open legs all win (its won legs are
        certain): what betting.domain.cashout.builder_offer prices it from."""
        if model is None:
            raise _unavailable("the match is priced from a provider's odds now: no bet builder cash-out")
        try:
            return bb.joint_probability(model.score_model(), [bb.Pick(g.market_key, g.outcome_id) for g in open_legs])
        except bb.NotCombinable as err:  # cannot happen for a bet PlaceBet took
            raise _unavailable(str(err)) from None

    async def _part(
        self,
        request: bs.GetCashOutOfferRequest | bs.CashOutRequest,
        row: dict[str, Any],
        context: grpc.aio.ServicerContext,
    ) -> int | None:
        """The part of the stake asked for (None: the whole bet); INVALID_ARGUMENT when it is not
        an amount in the bet's currency, or not one that can be cashed out of this bet."""
        if not request.HasField("stake"):
            return None
        currency = row["currency"]
        try:
            if request.stake.currency_code != currency:
                raise MoneyError(f"the bet is in {currency}")
            part = to_minor(currency, request.stake.minor_units, request.stake.decimal)
        except MoneyError as err:
            await abort_bad_request(context, [("stake", str(err))])
            raise AssertionError("unreachable") from None
        if row["status"] != "accepted":
            return None  # refused as not open, whatever the part
        stake = int(row["stake"])
        problem = part_problem(stake, part, major_to_minor(self.config.min_stake, currency), currency)
        if problem is not None:
            await abort_bad_request(context, [("stake", problem)])
        return None if part == stake else part

    async def views(self, legs: list[dict[str, Any]]) -> tuple[object, ...] | None:
        """The odds views the bet's open legs are priced from (None when one is missing). The odds
        view returns the same object while a match's snapshot is unchanged, so the same objects as
        last time mean the same offer."""
        views: list[object] = []
        for leg in legs:
            if leg["return_per_unit"] is None:
                try:
                    views.append(self.odds.kept(leg["match_id"]) or await self.odds.match(leg["match_id"]))
                except Refusal:
                    return None
        return tuple(views)

    async def _refuse(self, context: grpc.aio.ServicerContext, r: Refusal) -> NoReturn:
        self.metrics.cash_outs.labels("refused", bet_pb2.RejectReason.Name(r.reason)).inc()
        await abort_refused(context, r.reason, r.message)

    async def get_offer(
        self, account: str, request: bs.GetCashOutOfferRequest, context: grpc.aio.ServicerContext
    ) -> bs.GetCashOutOfferResponse:
        row, legs = await self._bet(account, request.bet_id, context)
        part = await self._part(request, row, context)
        try:
            priced = await self.price(row, legs, part)
        except Refusal as r:
            await self._refuse(context, r)
        delay = Duration()
        delay.FromMilliseconds(round(priced.delay * 1000))
        return bs.GetCashOutOfferResponse(amount=money(priced.amount, row["currency"]), delay=delay)

    async def _bet(
        self, account: str, bet_id: str, context: grpc.aio.ServicerContext
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            uuid.UUID(bet_id)
        except ValueError:
            await abort_bad_request(context, [("bet_id", f"{bet_id!r} is not a bet id")])
        found = await self.store.bet_rows(account, bet_id)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no bet {bet_id} for this account")
            raise AssertionError("unreachable")
        return found

    async def cash_out(
        self, account: str, request: bs.CashOutRequest, context: grpc.aio.ServicerContext
    ) -> bs.CashOutResponse:
        bad: list[tuple[str, str]] = []
        if not request.request_id:
            bad.append(("request_id", "is required (an idempotency key chosen by the client)"))
        elif len(request.request_id) > MAX_ID:
            bad.append(("request_id", f"is longer than {MAX_ID} characters"))
        try:
            uuid.UUID(request.bet_id)
        except ValueError:
            bad.append(("bet_id", f"{request.bet_id!r} is not a bet id"))
        asked = 0
        try:
            asked = to_minor(request.amount.currency_code, request.amount.minor_units, request.amount.decimal)
        except MoneyError as err:
            bad.append(("amount", str(err)))
        if bad:
            await abort_bad_request(context, bad)
        request_digest = digest(request.SerializeToString(deterministic=True))
        earlier = await self._earlier(account, request.request_id, request_digest, context)
        if earlier is not None:  # the same request again: its first answer
            return earlier
        row, legs = await self._bet(account, request.bet_id, context)
        currency = row["currency"]
        if request.amount.currency_code != currency:
            await abort_bad_request(context, [("amount.currency_code", f"the bet is in {currency}")])
        part = await self._part(request, row, context)
        try:
            outcome, bet = await self.execute(
                account, request.bet_id, request.request_id, request_digest, row, legs, asked, part=part
            )
        except Refusal as r:
            again = await self._earlier(account, request.request_id, request_digest, context)
            if again is not None:  # the same request, in flight twice: the other one cashed it out
                return again
            await self._refuse(context, r)
        except Conflict as err:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(err))
        if bet is not None:
            return bs.CashOutResponse(bet=bet)
        again = await self._earlier(account, request.request_id, request_digest, context)
        if again is not None:
            return again
        if outcome == "changed":
            message = "the bet changed meanwhile (a leg settled or a part cashed out): ask for a new offer"
            await self._refuse(context, Refusal(Kind.FAILED_PRECONDITION, bet_pb2.REJECT_REASON_ODDS_CHANGED, message))
        if outcome.startswith("not_open:"):
            await self._refuse(context, not_open(outcome.partition(":")[2]))
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no bet {request.bet_id} for this account")
        raise AssertionError("unreachable")

    async def execute(
        self,
        account: str,
        bet_id: str,
        request_id: str,
        request_digest: bytes,
        row: dict[str, Any],
        legs: list[dict[str, Any]],
        asked: int,
        rule: int | None = None,
        part: int | None = None,
    ) -> tuple[str, bet_pb2.Bet | None]:
        """Cash the bet out at its offer if that is at least ``asked`` (after the in-play delay):
        (outcome, bet) as :meth:`Store.cash_out` gives them; a Refusal when the offer fell below or
        a market was suspended in the delay; Conflict for a request id used for another request.
        Both CashOut and the automatic cash-out (:mod:`betting.auto_cashout`, with its ``rule``,
        which must still be the bet's at the end of the delay) come through here; ``part``: a
        partial cash-out of that much of the stake."""
        priced = await self._decide(account, bet_id, row, legs, asked, rule, part)
        outcome, bet = await self.store.cash_out(
            account, bet_id, request_id, request_digest, priced.amount, priced.open_legs, priced.stake, priced.part
        )
        if bet is not None and outcome == "cashed_out":
            self.metrics.cash_outs.labels("cashed_out", "").inc()
            log.info(
                "bet cashed out",
                extra={
                    "bet_id": bet.bet_id,
                    "account": account,
                    "amount": format_minor(priced.amount, row["currency"]),
                    "part": "" if priced.part is None else format_minor(priced.part.stake, row["currency"]),
                    "auto": request_id.startswith("auto:"),
                },
            )
        return outcome, bet

    async def set_auto(
        self, account: str, request: bs.SetAutoCashOutRequest, context: grpc.aio.ServicerContext
    ) -> bs.SetAutoCashOutResponse:
        """``SetAutoCashOut``: validate, then store the rule (the watcher takes it from there)."""
        bad: list[tuple[str, str]] = []
        try:
            uuid.UUID(request.bet_id)
        except ValueError:
            bad.append(("bet_id", f"{request.bet_id!r} is not a bet id"))
        amount: int | None = None
        if request.HasField("amount"):
            try:
                amount = to_minor(request.amount.currency_code, request.amount.minor_units, request.amount.decimal)
            except MoneyError as err:
                bad.append(("amount", str(err)))
        if bad:
            await abort_bad_request(context, bad)
        outcome, row, bet = await self.store.set_auto_cash_out(
            account, request.bet_id, amount, request.amount.currency_code
        )
        currency = row["currency"] if row is not None else ""
        if outcome == "currency":
            await abort_bad_request(context, [("amount.currency_code", f"the bet is in {currency}")])
        if outcome.startswith("not_open:"):
            await self._refuse(context, not_open(outcome.partition(":")[2]))
        if outcome == "above_payout" and row is not None and amount is not None:
            payout = format_minor(int(row["potential_payout"]), currency)
            await abort_bad_request(
                context,
                [("amount", f"{format_minor(amount, currency)} {currency} is above the potential payout {payout}")],
            )
        if bet is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no bet {request.bet_id} for this account")
            raise AssertionError("unreachable")
        if outcome == "set":
            self.on_auto_change(bet.bet_id)
            log.info(
                "auto cash-out set",
                extra={
                    "bet_id": bet.bet_id,
                    "account": account,
                    "amount": "" if amount is None else format_minor(amount, currency),
                },
            )
        return bs.SetAutoCashOutResponse(bet=bet)

    async def _earlier(
        self, account: str, request_id: str, request_digest: bytes, context: grpc.aio.ServicerContext
    ) -> bs.CashOutResponse | None:
        try:
            bet = await self.store.cashed_out(account, request_id, request_digest)
        except Conflict as err:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(err))
        return None if bet is None else bs.CashOutResponse(bet=bet)

    async def _decide(
        self,
        account: str,
        bet_id: str,
        row: dict[str, Any],
        legs: list[dict[str, Any]],
        asked: int,
        rule: int | None = None,
        part: int | None = None,
    ) -> Priced:
        """The offer to pay, after the in-play delay when there is one; a Refusal when it falls
        below the amount asked, a leg's market was suspended meanwhile, or the bet changed (for an
        automatic cash-out, ``rule``: its rule changed or removed meanwhile)."""
        priced = self.price_covers(await self.price(row, legs, part), asked, row["currency"])
        if priced.delay > 0:
            await asyncio.sleep(priced.delay)
            current: dict[str, int] = {}  # each match's version now, and its price history, read once
            histories: dict[str, list[Any]] = {}
            for leg, version in priced.seen:
                if leg.match_id not in current:
                    current[leg.match_id] = (await self.odds.match(leg.match_id)).version
                why = await self.odds.interrupted_since(leg, version, current[leg.match_id], histories)
                if why:
                    reason = bet_pb2.REJECT_REASON_SUSPENDED_DURING_DELAY
                    raise Refusal(Kind.FAILED_PRECONDITION, reason, f"{leg.market_key}: {why}")
        elif rule is None:
            return priced
        # the bet read again: after the delay, or for a rule (which the watcher read up to a
        # second ago: the bettor may have changed it since, on another replica)
        found = await self.store.bet_rows(account, bet_id)
        if found is None:  # cannot happen: bets are never deleted
            raise _unavailable("the bet is gone")
        if rule is not None and found[0]["auto_cash_out"] != rule:
            raise _unavailable("the automatic cash-out was changed or removed")
        return self.price_covers(await self.price(*found, part), asked, row["currency"])

    @staticmethod
    def price_covers(priced: Priced, asked: int, currency: str) -> Priced:
        if priced.amount < asked:
            message = (
                f"the cash-out offer is now {format_minor(priced.amount, currency)} {currency},"
                f" below the {format_minor(asked, currency)} asked"
            )
            raise Refusal(Kind.FAILED_PRECONDITION, bet_pb2.REJECT_REASON_ODDS_CHANGED, message)
        return priced
