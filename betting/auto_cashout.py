"""Automatic cash-out: a bettor's rule "cash this bet out once its offer reaches X" (``SetAutoCashOut``),
carried out by the betting service whether or not the bettor is connected.

- **The rule** is a column of the bet (``betting.bets.auto_cash_out``, minor units): set, changed or
  removed by its owner while the bet is pending or accepted; at most the bet's potential payout.
- **Watching:** every betting process keeps the accepted bets that have a rule, prices each one with
  the code ``GetCashOutOffer`` uses (:meth:`betting.cashout.CashOutDesk.price`, the kept odds
  snapshots), and looks again as soon as Valkey tells of a change of one of their matches' odds
  (``CLIENT TRACKING``, as ``WatchCashOutOffers``), else every ``poll`` seconds.
- **Knowing the rules without polling for them:** all of them are read from PostgreSQL at the start,
  after a NATS reconnect, and every ``reload`` seconds as a safety net. Between those, one bet is
  read again when something may have changed it:

  - its own bet events (``bets.*.<bet>``: settled, cashed out, voided, its rule changed), to which
    the process subscribes for each watched bet;
  - a hint on ``betting.auto_cash_out`` (the bet id), which a process publishes after it set or
    removed a rule, or accepted a pending bet that has one, so that the other replicas watch it
    too. The hint is core NATS, sent after the commit: a hint lost with a crash in between reaches
    the others at their next ``reload``.
- **Cashing out:** an offer at or above the rule is taken through the same path as ``CashOut``,
  asking for the rule's amount: the in-play delay, a suspension meanwhile refusing it, the offer
  again at the end of the delay, one transaction. Its request id is ``auto:<bet>:<amount>``, the
  same in every process, so replicas that see the same offer cash the bet out once (the others get
  the first answer). A refusal leaves the rule in place: it is tried again at the next offer that
  reaches it. The cash-out removes the rule in its own statement (a trigger, migration 0017).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from livebet.betting.v1 import betting_service_pb2 as bs
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from betting.adapters.store import Conflict, Store, digest, money
from betting.cashout import CashOutDesk, open_matches, same_views
from betting.domain.rules import Refusal
from betting.metrics import BetMetrics
from mesh.deps import NatsDependency

log = logging.getLogger("betting.auto_cashout")

BACKOFF_SECONDS = 1.0  # after a failure, the bet is left alone this long
RELOAD_SECONDS = 30.0  # every rule read again from PostgreSQL at least this often (the safety net)
POLL_SECONDS = 0.25  # how often the offers are priced while Valkey does not tell of odds changes
MAX_RULES = 10_000  # watched per process (the oldest bets first)
HINTS = "betting.auto_cash_out"  # a rule set or removed, or a bet with one accepted (the bet id)

Rules = dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]


def request_id(bet_id: str, target: int) -> str:
    """The cash-out's idempotency key: the same for every replica acting on the same rule."""
    return f"auto:{bet_id}:{target}"


class AutoCashOuts:
    def __init__(
        self,
        desk: CashOutDesk,
        store: Store,
        metrics: BetMetrics,
        nats: NatsDependency,
        reload: float = RELOAD_SECONDS,
        poll: float = POLL_SECONDS,
    ) -> None:
        self.desk, self.store, self.metrics, self.nats = desk, store, metrics, nats
        self.reload, self.poll = reload, poll
        self.wake = asyncio.Event()
        self.rules: Rules = {}
        self._busy: set[str] = set()
        #: per bet last priced below its rule: (its rule and legs' returns, the odds views)
        self._below: dict[str, tuple[tuple[object, ...], tuple[object, ...]]] = {}
        self._all = True  # every rule to be read again
        self._stale: set[str] = set()  # bets to be read again
        self._announce: set[str] = set()  # bets to tell the other replicas of
        self._follow: dict[str, Subscription] = {}  # each watched bet's events
        self._tasks: set[asyncio.Task[None]] = set()
        nats.on_change(self._nats_changed)

    def changed(self, bet_id: str) -> None:
        """A rule was set or removed here, or a bet with one accepted: read it again now, and tell
        the other replicas."""
        self._stale.add(bet_id)
        self._announce.add(bet_id)
        self.wake.set()

    def _nats_changed(self) -> None:
        if self.nats.up:  # back after a disconnection: events may have been missed
            self._all = True
            self.wake.set()

    async def _on_message(self, msg: Msg) -> None:
        """A hint (the bet id) or one of a watched bet's events (``bets.<account>.<bet>``)."""
        self._stale.add(msg.data.decode() if msg.subject == HINTS else msg.subject.rpartition(".")[2])
        self.wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        nc = self.nats.nc
        hints = await nc.subscribe(HINTS, cb=self._on_message)
        matches: set[str] = set()
        self._all, loaded = True, -self.reload
        try:
            while True:
                self.wake.clear()
                await self._tell(nc)
                if self._all or loop.time() - loaded >= self.reload:
                    told = self._all  # the start or a reconnect, not the safety net's round
                    self._all, loaded = False, loop.time()  # a failed read is tried again a reload later
                    if await self._read(None) and told:
                        log.info("auto cash-out: watching the rules", extra={"rules": len(self.rules)})
                if self._stale:
                    await self._read(self._stale)
                followed = await self._subscribe(nc)
                if followed:  # read again once subscribed: nothing between the first read and now is missed
                    await self._read(set(followed))
                now = open_matches(self.rules.values())
                self.desk.odds.stop_waiting(matches - now, self.wake)
                self.desk.odds.wait_for_changes(now - matches, self.wake)
                matches = now
                self.metrics.auto_cash_out_rules.set(len(self.rules))
                for bet_id, (row, legs) in list(self.rules.items()):
                    if bet_id not in self._busy and not await self._look(bet_id, row, legs):
                        break  # pricing failed (Valkey down?): the next round tries again
                timeout = max(0.0, loaded + self.reload - loop.time())
                if not self.desk.odds.tells_changes() or self._stale:
                    timeout = min(timeout, self.poll)  # _stale: a read that failed is tried again soon
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
        finally:
            self.desk.odds.stop_waiting(matches, self.wake)
            for sub in [hints, *self._follow.values()]:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self._follow.clear()
            for task in list(self._tasks):
                task.cancel()

    async def _read(self, stale: set[str] | None) -> bool:
        """Read every rule (``stale`` None) or those bets' again; a failure keeps what was known
        (False)."""
        ids = None
        if stale is not None:
            ids = list(stale)
            stale.clear()
        try:
            found = await self.store.auto_cash_out_rules(MAX_RULES, ids)
        except Exception as err:
            if ids is not None:
                self._stale.update(ids)
            log.warning("auto cash-out: reading the rules failed", extra={"error": str(err)})
            return False
        if ids is None:
            self.rules = found
        else:
            for bet_id in ids:
                if bet_id in found and (bet_id in self.rules or len(self.rules) < MAX_RULES):
                    self.rules[bet_id] = found[bet_id]
                else:
                    self.rules.pop(bet_id, None)
        self._below = {b: v for b, v in self._below.items() if b in self.rules}
        return True

    async def _tell(self, nc: NatsClient) -> None:
        while self._announce:
            bet_id = self._announce.pop()
            try:
                await nc.publish(HINTS, bet_id.encode())
            except Exception as err:  # the others learn of it at their next reload
                log.warning("auto cash-out: the hint was not sent", extra={"bet_id": bet_id, "error": str(err)})

    async def _subscribe(self, nc: NatsClient) -> list[str]:
        """Follow the events of the bets watched, and no others; the bets newly followed."""
        for bet_id in [b for b in self._follow if b not in self.rules]:
            with contextlib.suppress(Exception):
                await self._follow.pop(bet_id).unsubscribe()
        new: list[str] = []
        for bet_id in [b for b in self.rules if b not in self._follow]:
            try:
                self._follow[bet_id] = await nc.subscribe(f"bets.*.{bet_id}", cb=self._on_message)
            except Exception as err:  # tried again next round
                log.warning("auto cash-out: following a bet failed", extra={"bet_id": bet_id, "error": str(err)})
                break
            new.append(bet_id)
        return new

    async def _look(self, bet_id: str, row: dict[str, Any], legs: list[dict[str, Any]]) -> bool:
        """Price the bet and start its cash-out if the offer reaches the rule; False when pricing
        failed (not a Refusal: no offer now is normal). A bet whose rule, legs and odds are as when
        it was last priced below its rule is not priced again (as WatchCashOutOffers does)."""
        try:
            views = await self.desk.views(legs)
            key = (row["auto_cash_out"], tuple(g["return_per_unit"] for g in legs))
            last = self._below.get(bet_id)
            if views is not None and last is not None and last[0] == key and same_views(last[1], views):
                return True
            priced = await self.desk.price(row, legs)
        except Refusal:
            return True  # no offer now (a market suspended, a leg lost): nothing to do
        except Exception as err:
            log.warning("auto cash-out: pricing failed", extra={"bet_id": bet_id, "error": str(err)})
            return False
        if priced.amount < int(row["auto_cash_out"]):
            if views is not None:
                self._below[bet_id] = (key, views)
            return True
        self._below.pop(bet_id, None)
        self._busy.add(bet_id)
        task = asyncio.create_task(self._cash_out(bet_id, row, legs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _cash_out(self, bet_id: str, row: dict[str, Any], legs: list[dict[str, Any]]) -> None:
        target, account, currency = int(row["auto_cash_out"]), row["account_id"], row["currency"]
        request = bs.CashOutRequest(
            request_id=request_id(bet_id, target), bet_id=bet_id, amount=money(target, currency)
        )
        try:
            outcome, _ = await self.desk.execute(
                account, bet_id, request.request_id, digest(request.SerializeToString(deterministic=True)), row, legs,
                target, rule=target,
            )  # fmt: skip
            if outcome in ("cashed_out", "exists"):  # the rule went with the cash-out (migration 0017)
                self._stale.add(bet_id)
            self.metrics.auto_cash_outs.labels(outcome if outcome in ("cashed_out", "exists") else "bet_changed").inc()
        except Refusal as r:  # the offer fell back, or a suspension in the delay: the rule stays
            self.metrics.auto_cash_outs.labels("refused").inc()
            log.info("auto cash-out refused", extra={"bet_id": bet_id, "why": r.message})
        except Conflict:  # cannot happen: the request is the same for the same rule
            self.metrics.auto_cash_outs.labels("failed").inc()
            log.error("auto cash-out request id used for another request", extra={"bet_id": bet_id})
            await asyncio.sleep(BACKOFF_SECONDS)
        except Exception:
            self.metrics.auto_cash_outs.labels("failed").inc()
            log.warning("auto cash-out failed; tried again later", extra={"bet_id": bet_id}, exc_info=True)
            await asyncio.sleep(BACKOFF_SECONDS)
        finally:
            self._busy.discard(bet_id)
            self.wake.set()
