"""``WatchCashOutOffers``: the cash-out offers of a player's bets, pushed as the live odds move.

A client that asked ``GetCashOutOffer`` for each open bet every few seconds saw an offer up to that
old and cost one call per bet; a stream costs one per player and sends only what changed.

- **Which bets:** the ones named (at most ``MAX_BETS``), or the player's open bets (pending and
  accepted, the newest ``MAX_BETS`` at the start, then every new one as it comes).
- **Their rows** (status, stake, legs) are read from PostgreSQL at the start, again at once when one
  of the player's bet events arrives (``bets.<account>.*``, what WatchBets sends: accepted,
  rejected, settled, cashed out), every ``CLOSED_MARKET_RELOAD_SECONDS`` while a bet has no offer
  because a market is not open (it may be a leg of an accumulator that was settled: the bet stays
  open and no event comes), and every ``RELOAD_SECONDS`` in any case.
- **When to look:** the stream sleeps until Valkey tells the odds view of a change of one of its
  matches' snapshots (:meth:`betting.adapters.odds.OddsView.wait_for_changes`, the same
  ``CLIENT TRACKING`` pushes that drop kept snapshots), a bet event comes, or a reading or the
  heartbeat is due; while Valkey does not tell of changes (tracking refused, the connection not
  fresh) it looks every interval instead. Woken, it waits ``GATHER_SECONDS`` for the changes that
  come with the first, and messages stay at least an interval apart.
- **The offers:** a bet is priced again, by the same code as ``GetCashOutOffer``
  (:meth:`betting.cashout.CashOutDesk.price`), only when its row was read again or the odds of one
  of its open legs' matches changed (the kept odds snapshots: the same view object while Valkey
  says a match's snapshot is unchanged, and no Redis read). The offers that differ from what the
  stream last sent go out in one message; the first message has them all, even when there are none.
- **A closed bet** (settled, cashed out, rejected, voided) is sent once with ``closed`` set and then
  no more (unless it opens again: a settlement rolled back). A pending bet is followed, without an
  offer, until it is decided.
- **Heartbeat:** an empty message when nothing was sent for the request's ``heartbeat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from livebet.betting.v1 import bet_pb2
from livebet.betting.v1 import betting_service_pb2 as bs
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from betting.adapters.store import money
from betting.cashout import CashOutDesk, not_open, open_matches, same_views
from betting.domain.rules import Refusal
from feed.adapters.jetstream import token
from mesh.errors import abort_bad_request, duration_seconds

MAX_BETS = 100
DEFAULT_INTERVAL = 0.5
MIN_INTERVAL, MAX_INTERVAL = 0.1, 60.0
#: after a change wakes a stream, it waits this long for the changes that come with it (an engine
#: rewrites a match's snapshot at each reprice; a stream's matches may move together)
GATHER_SECONDS = 0.01
RELOAD_SECONDS = 60.0  # the bets' rows read again at least this often
CLOSED_MARKET_RELOAD_SECONDS = 2.0  # and this often while a bet has no offer for a market not open
#: a message (empty when nothing changed) at least this often by default: a proxy that closes
#: streams silent for minutes (Envoy's stream_idle_timeout, 300 s here) sees this one alive
DEFAULT_HEARTBEAT = 30.0
MIN_HEARTBEAT, MAX_HEARTBEAT = 1.0, 300.0
CLOSED = frozenset({"settled", "cashed_out", "rejected", "voided"})

Rows = dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]


async def _request(
    request: bs.WatchCashOutOffersRequest, context: grpc.aio.ServicerContext
) -> tuple[list[str], float, float]:
    """The bet ids named (in order, once each), the interval and the heartbeat in seconds;
    INVALID_ARGUMENT with every field that is wrong."""
    bad: list[tuple[str, str]] = []
    if len(request.bet_ids) > MAX_BETS:
        bad.append(("bet_ids", f"names {len(request.bet_ids)} bets: at most {MAX_BETS}"))
    ids: list[str] = []
    for i, bet_id in enumerate(request.bet_ids[: MAX_BETS + 1]):
        try:
            ids.append(str(uuid.UUID(bet_id)))
        except ValueError:
            bad.append((f"bet_ids[{i}]", f"{bet_id!r} is not a bet id"))
    interval = duration_seconds(request, "interval", DEFAULT_INTERVAL, (MIN_INTERVAL, MAX_INTERVAL), bad)
    heartbeat = duration_seconds(request, "heartbeat", DEFAULT_HEARTBEAT, (MIN_HEARTBEAT, MAX_HEARTBEAT), bad)
    if bad:
        await abort_bad_request(context, bad)
    return list(dict.fromkeys(ids)), interval, heartbeat


def _none(bet_id: str, r: Refusal, closed: bool = False) -> bs.CashOutOffer:
    reason = bet_pb2.RejectReason.ValueType(r.reason)
    return bs.CashOutOffer(bet_id=bet_id, unavailable_reason=reason, unavailable_message=r.message, closed=closed)


async def _offer(desk: CashOutDesk, bet_id: str, row: dict[str, Any], legs: list[dict[str, Any]]) -> bs.CashOutOffer:
    if row["status"] in CLOSED:
        return _none(bet_id, not_open(row["status"]), closed=True)
    try:
        priced = await desk.price(row, legs)
    except Refusal as r:
        return _none(bet_id, r)
    out = bs.CashOutOffer(bet_id=bet_id)
    out.amount.CopyFrom(money(priced.amount, row["currency"]))
    out.delay.FromMilliseconds(round(priced.delay * 1000))
    return out


async def watch_offers(
    desk: CashOutDesk,
    nc: NatsClient,
    account: str,
    request: bs.WatchCashOutOffersRequest,
    context: grpc.aio.ServicerContext,
) -> AsyncIterator[bs.WatchCashOutOffersResponse]:
    named, interval, heartbeat = await _request(request, context)
    changed = asyncio.Event()  # one of the player's bet events came: read the rows again
    wake = asyncio.Event()  # that, or a change of the odds of a match followed

    async def on_event(msg: Msg) -> None:
        changed.set()
        wake.set()

    # subscribed before the first read: an event between the two reloads once more, none is missed
    sub = await nc.subscribe(f"bets.{token(account)}.*", cb=on_event)
    loop = asyncio.get_running_loop()
    followed, waiting_on = set(named), set[str]()
    try:

        async def load() -> Rows:
            nonlocal waiting_on
            changed.clear()
            ids = [uuid.UUID(b) for b in followed]
            rows = await desk.store.bets_with_legs(account, ids, MAX_BETS) if ids else {}
            if not named:  # every open bet: the ones followed so far, and any new one
                more = await desk.store.bets_with_legs(account, None, MAX_BETS)
                rows.update({b: r for b, r in more.items() if b not in rows})
            matches = open_matches(rows.values())  # told of their changes before they are read
            desk.odds.stop_waiting(waiting_on - matches, wake)
            desk.odds.wait_for_changes(matches - waiting_on, wake)
            waiting_on = matches
            return rows

        bets = await load()
        missing = [b for b in named if b not in bets]
        if missing:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no bet {', '.join(missing)} for this account")
        loaded, sent, first = loop.time(), dict[str, bs.CashOutOffer](), True
        last_message = loop.time()
        basis: dict[str, tuple[dict[str, Any], tuple[object, ...]]] = {}  # what each offer sent was priced from
        while True:
            wake.clear()  # a change from here on makes another round
            offers = []
            for bet_id, (row, legs) in bets.items():
                views = () if row["status"] in CLOSED else await desk.views(legs)
                last = basis.get(bet_id)
                if views is not None and last is not None and last[0] is row and same_views(last[1], views):
                    continue  # neither the bet nor its matches' odds changed: nor did its offer
                offer = await _offer(desk, bet_id, row, legs)
                if views is not None:
                    basis[bet_id] = (row, views)
                if first or sent.get(bet_id) != offer:
                    offers.append(offer)
                    sent[bet_id] = offer
            if not named:  # a closed bet leaves (a rolled-back settlement brings it back as open)
                for offer in offers:
                    if offer.closed:
                        del bets[offer.bet_id], sent[offer.bet_id]
                        basis.pop(offer.bet_id, None)
                followed = set(bets)
            if offers or first or loop.time() - last_message >= heartbeat:
                yield bs.WatchCashOutOffersResponse(offers=offers)
                first, last_message = False, loop.time()
            # a market not open may be a leg settled (an accumulator stays open, with no event)
            reload = RELOAD_SECONDS
            if any(o.unavailable_reason == bet_pb2.REJECT_REASON_MARKET_NOT_OPEN for o in sent.values()):
                reload = CLOSED_MARKET_RELOAD_SECONDS
            # sleep until something changes, the heartbeat or the next reading is due, or (while
            # Redis does not tell of changes) the next look; then keep the messages an interval apart
            due = min(last_message + heartbeat, loaded + reload)
            if not desk.odds.tells_changes():
                due = min(due, loop.time() + interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.0, due - loop.time()))
            await asyncio.sleep(max(GATHER_SECONDS, last_message + interval - loop.time()))
            if changed.is_set() or loop.time() - loaded >= reload:
                bets, loaded = await load(), loop.time()
    finally:
        desk.odds.stop_waiting(waiting_on, wake)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
