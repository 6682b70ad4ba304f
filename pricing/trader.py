"""The trader admin API on the pricing engine (``livebet.odds.v1.TraderService``).

Each action takes effect at once (the engine reprices and publishes under its share's lock), **survives
restarts** (the trader state of a match is kept in the NATS key-value bucket ``pricing-trader``,
under ``match.<share>.<hash of the match id>``, and applied again when the engine rebuilds that
share: a rebuild reads its own share's keys, not every match ever traded; a match's state is
deleted when the engine retires the ended match) and is **logged with who did it**: the actor comes
from the edge's identity header ``x-livebet-account`` (``anonymous`` until the edge sets it). Every
call is idempotent by ``request_id`` for ``REQUEST_TTL_SECONDS`` (7 days; the answers are kept in
the bucket ``pricing-trader-requests``, whose entries expire): the same id with the same request
returns the first answer; with a different request it fails ``ALREADY_EXISTS``.

Any engine replica answers: a call for a match whose share another replica holds is forwarded to
that replica over NATS (``pricing.trader.<partition>``, request/reply) and answered with its result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import nats.errors
import nats.js.errors
from google.protobuf.message import Message
from livebet.common.v1 import common_pb2
from livebet.odds.v1 import trader_service_pb2 as ts
from livebet.odds.v1 import trader_service_pb2_grpc
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from feed.adapters.jetstream import key_value, partition_of
from mesh import access
from pricing.live.book import Delta, LiveMatch
from pricing.live.engine import Engine, market_key

if TYPE_CHECKING:
    from pricing.server import Runner

log = logging.getLogger("pricing.trader")
BUCKET = "pricing-trader"
REQUESTS_BUCKET = "pricing-trader-requests"
REQUEST_TTL_SECONDS = 7 * 24 * 3600.0
FORWARD_TIMEOUT = 5.0


async def trader_store(js: JetStreamContext) -> KeyValue:
    return await key_value(js, BUCKET, history=5)


async def request_store(js: JetStreamContext) -> KeyValue:
    """The trader calls' answers by request id, each kept ``REQUEST_TTL_SECONDS``."""
    return await key_value(js, REQUESTS_BUCKET, ttl=REQUEST_TTL_SECONDS)


def _match_key(match_id: str) -> str:
    """A key-value key for a match, under its share (ids such as ``sr:match:1`` have characters
    keys cannot)."""
    return f"match.{partition_of(match_id)}." + hashlib.sha256(match_id.encode()).hexdigest()[:40]


async def _latest(kv: KeyValue, keys: str) -> list[KeyValue.Entry]:
    """The latest entry of every key matching ``keys`` (a subject pattern), deleted ones left
    out. Read by a pull consumer of the bucket's stream (the last message per key) until the
    server says none is pending. Not ``kv.watch``: nats-py's watch can say "caught up" before
    entries the server had already delivered (it compares the server's pending count with what
    its own callback has processed so far), and a rebuild that stopped there would miss the
    trader's state of the share's matches."""
    js, stream, prefix = kv._js, kv._stream, kv._pre  # nats-py has no public way to them
    sub = await js.pull_subscribe(
        prefix + keys,
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
        ),
    )
    entries = []
    name = None
    try:
        info = await sub.consumer_info()
        name, left = info.name, info.num_pending
        while left:
            for msg in await sub.fetch(min(left, 256), timeout=5):
                meta = msg.metadata
                left = meta.num_pending
                headers = msg.headers or {}
                if headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers:
                    continue  # a deleted key
                entries.append(
                    KeyValue.Entry(
                        bucket=stream.removeprefix("KV_"),
                        key=msg.subject[len(prefix) :],
                        value=msg.data,
                        revision=meta.sequence.stream,
                        delta=left,
                        created=None,
                        operation=None,
                    )
                )
    finally:
        if name is not None:
            with contextlib.suppress(Exception):  # gone by itself after 30 s otherwise
                await js.delete_consumer(stream, name)
        await sub.unsubscribe()
    return entries


async def live_keys(kv: KeyValue) -> list[str]:
    """Every key of ``kv`` that is not deleted (``kv.keys()`` has the same race as ``watch``)."""
    return [entry.key for entry in await _latest(kv, ">")]


async def migrate_keys(kv: KeyValue) -> int:
    """Earlier engines kept a match's state under ``match.<hash>`` (no share) and the request
    answers in the same bucket, for ever: move the states under their share and drop the old
    request answers. At start (any replica; doing it twice changes nothing); only keys of the old
    layout are read (``match.*`` is one token after ``match.``, the new keys are two). How many
    keys were moved or dropped."""
    old = await _latest(kv, "match.*") + await _latest(kv, "req.>")
    for entry in old:
        state = json.loads(entry.value or b"{}") if entry.key.startswith("match.") else {}
        if state.get("match_id"):
            # create, not put: a state a trader set under the new key meanwhile wins
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await kv.create(_match_key(state["match_id"]), entry.value or b"{}")
        await kv.purge(entry.key)
    return len(old)


async def forget(kv: KeyValue, match_ids: list[str]) -> None:
    """Delete the trader state of matches the engine retired (ended a while ago)."""
    for match_id in match_ids:
        await kv.purge(_match_key(match_id))


def _state(m: LiveMatch) -> dict[str, Any]:
    return {
        "match_id": m.match_id,
        "suspended": "trader" in {h.value for h in m.holds},
        "markets": sorted(m.trader_markets),
        "margin": m.margin,
        "margins": m.margins_by_type,
        "mode": m.mode,
    }


async def apply_trader_state(engine: Engine, kv: KeyValue, share: int | None = None) -> int:
    """Apply the stored trader state of share ``share``'s matches (every share's with None) to the
    engine's matches (nothing published): to a fresh engine after a replay, or to one loaded from
    a checkpoint taken before the latest actions. One consumer reads the share's latest states."""
    from pricing.live.book import Hold

    count = 0
    for entry in await _latest(kv, f"match.{share}.*" if share is not None else "match.>"):
        state = json.loads(entry.value or b"{}")
        m = engine.matches.get(state.get("match_id", ""))
        if m is None:
            continue
        if state.get("suspended"):
            m.holds.add(Hold.TRADER)
        else:  # resumed since: an engine loaded from a checkpoint may still hold it
            m.holds.discard(Hold.TRADER)
        m.trader_markets = set(state.get("markets", []))
        m.margin = float(state.get("margin", m.margin))
        m.margins_by_type = {k: float(v) for k, v in state.get("margins", {}).items()}
        m.mode = state.get("mode", m.mode)
        count += 1
    return count


@dataclass(frozen=True)
class TraderError(Exception):
    code: grpc.StatusCode
    message: str


def _market(m: LiveMatch, ref: common_pb2.MarketRef) -> str:
    key = market_key(ref)
    if key not in m.quotes:
        raise KeyError(f"match {m.match_id} has no market {ref.market_key or ref.market_type!r}")
    return key


def _margin(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        message = f"margin must be a decimal like 0.05, got {text!r}"
        raise TraderError(grpc.StatusCode.INVALID_ARGUMENT, message) from None


# name -> (request type, its match id, the action on the match)
_Action = Callable[[LiveMatch], Delta | None]


def _mode_action(mode: int) -> _Action:
    name = {ts.PRICING_MODE_MODEL: "model", ts.PRICING_MODE_PROVIDER: "provider"}.get(mode)  # type: ignore[call-overload]
    if name is None:
        raise TraderError(grpc.StatusCode.INVALID_ARGUMENT, "mode must be PRICING_MODE_MODEL or PRICING_MODE_PROVIDER")
    return lambda m: m.set_mode(name)


_ACTIONS: dict[str, tuple[type[Message], Callable[[Any], str], Callable[[Any], _Action]]] = {
    "suspend_market": (
        ts.SuspendMarketRequest,
        lambda r: r.market.match_id,
        lambda r: lambda m: m.trader_suspend(_market(m, r.market)),
    ),
    "resume_market": (
        ts.ResumeMarketRequest,
        lambda r: r.market.match_id,
        lambda r: lambda m: m.trader_resume(_market(m, r.market)),
    ),
    "suspend_match": (ts.SuspendMatchRequest, lambda r: r.match_id, lambda r: lambda m: m.trader_suspend()),
    "resume_match": (ts.ResumeMatchRequest, lambda r: r.match_id, lambda r: lambda m: m.trader_resume()),
    "set_margin": (
        ts.SetMarginRequest,
        lambda r: r.match_id,
        lambda r: (lambda margin: lambda m: m.set_margin(margin, r.market_type))(_margin(r.margin)),
    ),
    "set_pricing_mode": (ts.SetPricingModeRequest, lambda r: r.match_id, lambda r: _mode_action(r.mode)),
}


class TraderApi(trader_service_pb2_grpc.TraderServiceServicer):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def execute(self, name: str, request: Any, actor: str) -> int:
        """Run a trader action on this replica (which holds the match's share); the new version."""
        _, match_of, make = _ACTIONS[name]
        request_id, match_id = request.request_id, match_of(request)
        if not request_id:
            raise TraderError(grpc.StatusCode.INVALID_ARGUMENT, "request_id is required")
        if not match_id:
            raise TraderError(grpc.StatusCode.INVALID_ARGUMENT, "match_id is required")
        kv, requests, share = self.runner.kv, self.runner.requests, self.runner.local(match_id)
        if kv is None or requests is None or share is None:
            raise TraderError(grpc.StatusCode.UNAVAILABLE, f"no engine is pricing match {match_id!r} right now; retry")
        action = make(request)
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        req_key = "req." + hashlib.sha256(request_id.encode()).hexdigest()[:40]
        async with share.lock:
            try:
                seen = json.loads((await requests.get(req_key)).value or b"{}")
            except nats.js.errors.KeyNotFoundError:
                seen = None
            if seen is not None:
                if seen["digest"] != digest:
                    raise TraderError(
                        grpc.StatusCode.ALREADY_EXISTS, f"request_id {request_id!r} was used for a different request"
                    )
                return int(seen["version"])
            m = share.engine.matches.get(match_id)
            if m is None:
                raise TraderError(grpc.StatusCode.NOT_FOUND, f"no priced match {match_id!r}")
            try:
                delta = action(m)
            except (KeyError, ValueError) as exc:
                raise TraderError(grpc.StatusCode.INVALID_ARGUMENT, str(exc).strip("'\"")) from exc
            await kv.put(_match_key(match_id), json.dumps(_state(m)).encode())
            await self.runner.publish(share, [delta] if delta else [])
            await requests.put(req_key, json.dumps({"digest": digest, "version": m.version}).encode())
            log.info(
                "trader action",
                extra={
                    "actor": actor,
                    "action": name,
                    "match_id": match_id,
                    "version": m.version,
                    "request_id": request_id,
                },
            )
            return m.version

    async def on_forwarded(self, msg: Msg) -> None:
        """A call forwarded by another replica: run it here and reply with the version or the error."""
        headers = msg.headers or {}
        name = headers.get("action", "")
        try:
            if name not in _ACTIONS:
                raise TraderError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown trader action {name!r}")
            request = _ACTIONS[name][0].FromString(msg.data)
            version = await self.execute(name, request, headers.get("actor", "anonymous"))
            await msg.respond(str(version).encode())
        except TraderError as err:
            await self.runner.nats_dep.nc.publish(
                msg.reply, b"", headers={"code": err.code.name, "message": err.message}
            )

    async def _call(self, context: grpc.aio.ServicerContext, name: str, request: Any) -> int:
        actor = access.actor(context)
        match_id = _ACTIONS[name][1](request)
        try:
            if not match_id or self.runner.local(match_id) is not None:
                return await self.execute(name, request, actor)
            return await self._forward(name, request, actor, match_id)
        except TraderError as err:
            await context.abort(err.code, err.message)
            raise AssertionError("unreachable") from err

    async def _forward(self, name: str, request: Any, actor: str, match_id: str) -> int:
        nc = self.runner.nats_dep.nc
        try:
            reply = await nc.request(
                f"pricing.trader.{partition_of(match_id)}",
                request.SerializeToString(),
                timeout=FORWARD_TIMEOUT,
                headers={"action": name, "actor": actor},
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
            raise TraderError(
                grpc.StatusCode.UNAVAILABLE, f"no engine is pricing match {match_id!r} right now; retry"
            ) from None
        headers = reply.headers or {}
        if "code" in headers:
            raise TraderError(grpc.StatusCode[headers["code"]], headers.get("message", ""))
        return int(reply.data)

    async def SuspendMarket(
        self, request: ts.SuspendMarketRequest, context: grpc.aio.ServicerContext
    ) -> ts.SuspendMarketResponse:
        return ts.SuspendMarketResponse(version=await self._call(context, "suspend_market", request))

    async def ResumeMarket(
        self, request: ts.ResumeMarketRequest, context: grpc.aio.ServicerContext
    ) -> ts.ResumeMarketResponse:
        return ts.ResumeMarketResponse(version=await self._call(context, "resume_market", request))

    async def SuspendMatch(
        self, request: ts.SuspendMatchRequest, context: grpc.aio.ServicerContext
    ) -> ts.SuspendMatchResponse:
        return ts.SuspendMatchResponse(version=await self._call(context, "suspend_match", request))

    async def ResumeMatch(
        self, request: ts.ResumeMatchRequest, context: grpc.aio.ServicerContext
    ) -> ts.ResumeMatchResponse:
        return ts.ResumeMatchResponse(version=await self._call(context, "resume_match", request))

    async def SetMargin(self, request: ts.SetMarginRequest, context: grpc.aio.ServicerContext) -> ts.SetMarginResponse:
        return ts.SetMarginResponse(version=await self._call(context, "set_margin", request))

    async def SetPricingMode(
        self, request: ts.SetPricingModeRequest, context: grpc.aio.ServicerContext
    ) -> ts.SetPricingModeResponse:
        return ts.SetPricingModeResponse(version=await self._call(context, "set_pricing_mode", request))
