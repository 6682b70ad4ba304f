"""Who may call what: one table for the edge (Envoy's ``jwt_authn`` and ``rbac``) and for every
service (defence in depth, :class:`AccessInterceptor`).

Envoy verifies the caller's JWT, strips any identity header the client sent, and copies the
token's ``sub`` into ``x-livebet-account`` and its ``roles`` into ``x-livebet-roles``. Services
trust those two headers only because nothing else can set them: Envoy strips them, and only Envoy
(and the platform's own tools, such as the simulator) can reach a service's port (loopback locally,
NetworkPolicies in a cluster).

Levels:

* ``PUBLIC``: anyone, no token (watching odds, snapshots, match lists, score and clock).
* ``ACCOUNT``: a valid token; the account acting is the token's subject (bets, wallet).
* a role (``ADMIN``, ``FEED``): a valid token whose ``roles`` holds that role or ``admin``.

Paths not in the table (gRPC health, server reflection) are public. A test checks that every RPC
of every livebet service has an entry, so a new RPC cannot become public by omission.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

ACCOUNT_HEADER = "x-livebet-account"
ROLES_HEADER = "x-livebet-roles"
#: headers only the edge may set: Envoy removes any copy the client sent
IDENTITY_HEADERS = (ACCOUNT_HEADER, ROLES_HEADER)

PUBLIC = "public"
ACCOUNT = "account"
ADMIN = "admin"
FEED = "feed"

#: gRPC path prefix (``/package.Service/`` or a full method path) -> level. A method's own entry
#: wins over its service's.
RULES: dict[str, str] = {
    "/livebet.odds.v1.OddsService/": PUBLIC,
    "/livebet.feed.v1.FeedService/": PUBLIC,
    "/livebet.feed.v1.FeedService/Ingest": FEED,
    "/livebet.feed.v1.FeedService/PublishBatch": FEED,
    "/livebet.betting.v1.BettingService/": ACCOUNT,
    "/livebet.betting.v1.WalletService/": ACCOUNT,
    "/livebet.betting.v1.PlayerAdminService/": ADMIN,
    "/livebet.odds.v1.TraderService/": ADMIN,
    "/livebet.settlement.v1.SettlementService/": ADMIN,
    "/livebet.settlement.v1.ReportService/": ADMIN,
}


def level(method: str) -> str:
    """The access level of gRPC method path ``method`` (``/pkg.Service/Method``)."""
    if method in RULES:
        return RULES[method]
    service = method[: method.rfind("/") + 1]
    return RULES.get(service, PUBLIC)


def ordered_rules() -> list[tuple[str, str]]:
    """The table with method entries before service entries (first match wins at the edge)."""
    return sorted(RULES.items(), key=lambda kv: (kv[0].endswith("/"), kv[0]))


def roles_of(value: str) -> frozenset[str]:
    """Roles from the header: the token's space-separated ``roles`` claim; commas are accepted too."""
    return frozenset(r for r in value.replace(",", " ").split() if r)


@dataclass(frozen=True)
class Identity:
    account: str
    roles: frozenset[str]

    def has(self, role: str) -> bool:
        return role in self.roles or ADMIN in self.roles


def identity(metadata: Iterable[tuple[str, Any]] | None) -> Identity:
    account, roles = "", ""
    for key, value in metadata or ():
        if key == ACCOUNT_HEADER and isinstance(value, str):
            account = value
        elif key == ROLES_HEADER and isinstance(value, str):
            roles = value
    return Identity(account, roles_of(roles))


def refusal(method: str, who: Identity) -> tuple[grpc.StatusCode, str] | None:
    """Why ``who`` may not call ``method``, or None when it may."""
    need = level(method)
    if need == PUBLIC:
        return None
    if not who.account or len(who.account) > 128:
        return grpc.StatusCode.UNAUTHENTICATED, "sign in: this call needs a token (Authorization: Bearer …)"
    if need != ACCOUNT and not who.has(need):
        return grpc.StatusCode.PERMISSION_DENIED, f"this call needs the {need!r} role"
    return None


def actor(context: grpc.aio.ServicerContext) -> str:
    """The account acting (for audit logs); the interceptor already refused a call without one."""
    return identity(context.invocation_metadata()).account or "anonymous"


Behavior = Callable[..., Any]


def rewrap(handler: grpc.RpcMethodHandler, wrap: Callable[[Behavior], Behavior]) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour replaced by ``wrap(behaviour)``, whatever its streaming kind."""
    for kind, factory in (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ):
        behavior = getattr(handler, kind)
        if behavior:
            return factory(
                wrap(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return grpc.stream_stream_rpc_method_handler(
        wrap(handler.stream_stream),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call whose identity headers do not meet its level: UNAUTHENTICATED without an
    account, PERMISSION_DENIED without the role. The handler never runs."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        if level(method) == PUBLIC:
            return handler
        why = refusal(method, identity(handler_call_details.invocation_metadata))
        if why is None:
            return handler
        code, message = why

        def wrap(behavior: Behavior) -> Behavior:
            if inspect.isasyncgenfunction(behavior):

                async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    await context.abort(code, message)
                    yield  # pragma: no cover - makes this an async generator

                return refuse_stream

            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(code, message)

            return refuse

        return rewrap(handler, wrap)


# --- the platform's own callers ------------------------------------------------------------------
# Tools inside the platform (the simulator, replays, benchmarks, tests) call services directly, not
# through the edge, and present the identity the edge would have set.


def internal_metadata(account: str, roles: Iterable[str]) -> tuple[tuple[str, str], ...]:
    return ((ACCOUNT_HEADER, account), (ROLES_HEADER, ",".join(roles)))


class _AioIdentity(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        extra = [(k, v) for k, v in (d.metadata or ()) if k not in IDENTITY_HEADERS]
        return grpc.aio.ClientCallDetails(
            d.method, d.timeout, grpc.aio.Metadata(*extra, *self.metadata), d.credentials, d.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _SyncIdentity(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _details(self, d: Any) -> _Details:
        extra = [(k, v) for k, v in (d.metadata or ()) if k not in IDENTITY_HEADERS]
        return _Details(
            d.method,
            d.timeout,
            [*extra, *self.metadata],
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


def aio_channel(target: str, account: str, roles: Iterable[str] = (), options: Any = None) -> grpc.aio.Channel:
    """A grpc.aio channel to a service that presents ``account`` and ``roles`` on every call."""
    return grpc.aio.insecure_channel(
        target, options=options, interceptors=[_AioIdentity(internal_metadata(account, roles))]
    )


def channel(target: str, account: str, roles: Iterable[str] = ()) -> grpc.Channel:
    """A blocking channel to a service that presents ``account`` and ``roles`` on every call."""
    return grpc.intercept_channel(grpc.insecure_channel(target), _SyncIdentity(internal_metadata(account, roles)))
