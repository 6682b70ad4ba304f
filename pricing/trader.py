"""The trader admin API on the pricing engine (``livebet.odds.v1.TraderService``).

Each action takes effect at once (the engine reprices and publishes under its lock), **survives
restarts** (the trader state of a match is kept in the NATS key-value bucket ``pricing-trader``
and applied again when the engine rebuilds) and is **logged with who did it**: the actor comes from
the edge's identity header ``x-livebet-account`` (``anonymous`` until the edge sets it). Every call
is idempotent by ``request_id``: the same id with the same request returns the first answer; with a
different request it fails ``ALREADY_EXISTS``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import nats.js.errors
from google.protobuf.message import Message
from livebet.common.v1 import common_pb2
from livebet.odds.v1 import trader_service_pb2 as ts
from livebet.odds.v1 import trader_service_pb2_grpc
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from pricing.live.book import Delta, LiveMatch
from pricing.live.engine import Engine

if TYPE_CHECKING:
    from pricing.server import Runner

log = logging.getLogger("pricing.trader")
BUCKET = "pricing-trader"
ACTOR_HEADER = "x-livebet-account"


async def trader_store(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=5, storage=StorageType.FILE))


def _match_key(match_id: str) -> str:
    """A key-value key for a match (ids such as ``sr:match:1`` have characters keys cannot)."""
    return "match." + hashlib.sha256(match_id.encode()).hexdigest()[:40]


def engine_key(ref: common_pb2.MarketRef) -> str:
    """``total|total=2.5`` → ``total:2.5`` (the engine's and the CLI's key)."""
    parts = ref.market_key.split("|") if ref.market_key else [ref.market_type]
    values = [p.partition("=")[2] for p in parts[1:]]
    return ":".join([parts[0], *values]) if values else parts[0]


def _state(m: LiveMatch) -> dict[str, Any]:
    return {
        "match_id": m.match_id,
        "suspended": "trader" in {h.value for h in m.holds},
        "markets": sorted(m.trader_markets),
        "margin": m.margin,
        "margins": m.margins_by_type,
    }


async def apply_trader_state(engine: Engine, kv: KeyValue) -> int:
    """Apply the stored trader state to the engine's matches (nothing published)."""
    from pricing.live.book import Hold

    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return 0
    count = 0
    for key in keys:
        if not key.startswith("match."):
            continue
        entry = await kv.get(key)
        state = json.loads(entry.value or b"{}")
        m = engine.matches.get(state.get("match_id", ""))
        if m is None:
            continue
        if state.get("suspended"):
            m.holds.add(Hold.TRADER)
        m.trader_markets = set(state.get("markets", []))
        m.margin = float(state.get("margin", m.margin))
        m.margins_by_type = {k: float(v) for k, v in state.get("margins", {}).items()}
        count += 1
    return count


class TraderApi(trader_service_pb2_grpc.TraderServiceServicer):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def _act(
        self,
        context: grpc.aio.ServicerContext,
        request: Message,
        request_id: str,
        match_id: str,
        name: str,
        action: Callable[[LiveMatch], Delta | None],
    ) -> int:
        if not request_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request_id is required")
        if not match_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "match_id is required")
        kv = self.runner.kv
        if kv is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the engine is starting; retry")
            raise AssertionError("unreachable")
        actor = dict(context.invocation_metadata() or ()).get(ACTOR_HEADER, "anonymous")
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        req_key = "req." + hashlib.sha256(request_id.encode()).hexdigest()[:40]
        async with self.runner.lock:
            try:
                seen = json.loads((await kv.get(req_key)).value or b"{}")
            except nats.js.errors.KeyNotFoundError:
                seen = None
            if seen is not None:
                if seen["digest"] != digest:
                    await context.abort(
                        grpc.StatusCode.ALREADY_EXISTS, f"request_id {request_id!r} was used for a different request"
                    )
                return int(seen["version"])
            m = self.runner.engine.matches.get(match_id)
            if m is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no priced match {match_id!r}")
                raise AssertionError("unreachable")
            try:
                delta = action(m)
            except (KeyError, ValueError) as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                raise AssertionError("unreachable") from exc
            await kv.put(_match_key(match_id), json.dumps(_state(m)).encode())
            await self.runner.publish([delta] if delta else [])
            await kv.put(req_key, json.dumps({"digest": digest, "version": m.version}).encode())
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

    def _market(self, m: LiveMatch, ref: common_pb2.MarketRef) -> str:
        key = engine_key(ref)
        if key not in m.quotes:
            raise KeyError(f"match {m.match_id} has no market {ref.market_key or ref.market_type!r}")
        return key

    async def SuspendMarket(
        self, request: ts.SuspendMarketRequest, context: grpc.aio.ServicerContext
    ) -> ts.SuspendMarketResponse:
        v = await self._act(
            context,
            request,
            request.request_id,
            request.market.match_id,
            "suspend_market",
            lambda m: m.trader_suspend(self._market(m, request.market)),
        )
        return ts.SuspendMarketResponse(version=v)

    async def ResumeMarket(
        self, request: ts.ResumeMarketRequest, context: grpc.aio.ServicerContext
    ) -> ts.ResumeMarketResponse:
        v = await self._act(
            context,
            request,
            request.request_id,
            request.market.match_id,
            "resume_market",
            lambda m: m.trader_resume(self._market(m, request.market)),
        )
        return ts.ResumeMarketResponse(version=v)

    async def SuspendMatch(
        self, request: ts.SuspendMatchRequest, context: grpc.aio.ServicerContext
    ) -> ts.SuspendMatchResponse:
        v = await self._act(
            context, request, request.request_id, request.match_id, "suspend_match", lambda m: m.trader_suspend()
        )
        return ts.SuspendMatchResponse(version=v)

    async def ResumeMatch(
        self, request: ts.ResumeMatchRequest, context: grpc.aio.ServicerContext
    ) -> ts.ResumeMatchResponse:
        v = await self._act(
            context, request, request.request_id, request.match_id, "resume_match", lambda m: m.trader_resume()
        )
        return ts.ResumeMatchResponse(version=v)

    async def SetMargin(self, request: ts.SetMarginRequest, context: grpc.aio.ServicerContext) -> ts.SetMarginResponse:
        try:
            margin = float(request.margin)
        except ValueError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"margin must be a decimal like 0.05, got {request.margin!r}"
            )
            raise AssertionError("unreachable") from None
        v = await self._act(
            context,
            request,
            request.request_id,
            request.match_id,
            "set_margin",
            lambda m: m.set_margin(margin, request.market_type),
        )
        return ts.SetMarginResponse(version=v)
