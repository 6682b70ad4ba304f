"""Connections to the servers a service depends on, each with reconnect/backoff and a live
``up`` flag that drives the gRPC health status.

A dependency is created at wiring time but connects only in :meth:`Dependency.start`, so no
client exists at import time. ``up`` is True only while the server really answers.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import psycopg
import redis.asyncio as aioredis
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from mesh.backoff import Backoff
from mesh.migrate import migrate
from mesh.resp import Pipelined
from mesh.tasks import cancel_and_wait

log = logging.getLogger("mesh.deps")

ChangeCallback = Callable[[], None]


class Dependency(abc.ABC):
    """Base class: a named connection whose ``up`` flag is kept current by a background task."""

    name = "dependency"

    def __init__(self) -> None:
        self._up = False
        self._ready = asyncio.Event()
        self._listeners: list[ChangeCallback] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def up(self) -> bool:
        return self._up

    def on_change(self, callback: ChangeCallback) -> None:
        self._listeners.append(callback)

    def _set_up(self, value: bool) -> None:
        if value == self._up:
            return
        self._up = value
        if value:
            self._ready.set()
        log.info("dependency %s", "up" if value else "down", extra={"dependency": self.name})
        for callback in self._listeners:
            callback()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the first successful connection."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"dep-{self.name}")

    @abc.abstractmethod
    async def _run(self) -> None:
        """Connect, then keep ``up`` current (each dependency says how)."""

    async def close(self) -> None:
        self._closing = True
        await cancel_and_wait(self._task)
        self._set_up(False)


class NatsDependency(Dependency):
    """NATS with JetStream. nats-py reconnects by itself; its callbacks flip ``up`` at once."""

    name = "nats"

    def __init__(self, url: str, client_name: str = "livebet", interval: float = 0.5) -> None:
        super().__init__()
        self.url = url
        self.interval = interval
        self.client_name = client_name
        self._nc: NatsClient | None = None

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("NATS is not connected yet")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    async def _run(self) -> None:
        backoff = Backoff(0.1, 2.0)

        async def disconnected() -> None:
            self._set_up(False)

        async def reconnected() -> None:
            self._set_up(True)

        async def error(exc: Exception) -> None:
            log.debug("nats error: %s", exc)

        while not self._closing:
            try:
                self._nc = await nats.connect(
                    servers=[self.url],
                    name=self.client_name,
                    connect_timeout=1,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                    ping_interval=5,
                    max_outstanding_pings=2,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                )
                self._set_up(True)
                break
            except Exception as exc:
                delay = backoff.next()
                log.warning("nats connect failed, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
        if self._nc is not None:  # None only when closed before it ever connected
            await self._probe(self._nc)

    async def _probe(self, nc: NatsClient) -> None:
        """A server that hangs (rather than closing the socket) is noticed by a round trip that
        does not come back: a message to ourselves through the server, every ``interval``.

        Not ``flush()``: when its PONG times out, nats-py cancels the future but leaves it queued,
        and the PONG that comes late (the server was only slow) raises ``InvalidStateError`` in
        nats-py's read loop, which then stops reading for good. The connection looks connected
        and publishes still leave, but no message, reply or JetStream ack is read again until
        the stale-connection check (pings every 5 s, 2 outstanding) reconnects, 10-15 s later."""
        subject = nc.new_inbox()
        expected = b""
        echoed = asyncio.Event()

        async def on_echo(msg: Msg) -> None:
            if msg.data == expected:
                echoed.set()

        await nc.subscribe(subject, cb=on_echo)
        sent = 0
        while not self._closing:
            await asyncio.sleep(self.interval)
            sent += 1
            expected = str(sent).encode()
            echoed.clear()
            try:
                await nc.publish(subject, expected)
                await asyncio.wait_for(echoed.wait(), max(1.0, 2 * self.interval))
                self._set_up(nc.is_connected)
            except Exception:
                self._set_up(False)

    async def close(self) -> None:
        await super().close()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.drain(), 5)


class _PollingDependency(Dependency):
    """A dependency whose health is a periodic probe (Redis PING, PostgreSQL SELECT 1)."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval

    async def _connect(self) -> None:
        """Create the client (no I/O needed)."""

    @abc.abstractmethod
    async def _probe(self) -> None:
        """One round trip to the server; raises when it does not answer."""

    async def _first_up(self) -> None:
        """Runs once, after the first successful probe (migrations)."""

    async def _run(self) -> None:
        await self._connect()
        backoff = Backoff(0.1, 2.0)
        first = True
        while not self._closing:
            try:
                await asyncio.wait_for(self._probe(), timeout=max(1.0, self.interval * 2))
                if first:
                    await self._first_up()
                    first = False
                self._set_up(True)
                backoff.reset()
                await asyncio.sleep(self.interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_up(False)
                delay = backoff.next()
                log.warning("%s probe failed, retrying in %.2fs: %s", self.name, delay, exc)
                await asyncio.sleep(delay)


class RedisDependency(_PollingDependency):
    """Redis or Valkey through redis.asyncio; it reconnects per command, PING decides ``up``.
    ``pipelined`` is a :class:`mesh.resp.Pipelined` on the same server for the hot paths (the
    betting service's snapshot reads, which it makes track what it reads; the engine's writes per
    batch); it connects on first use."""

    name = "redis"

    def __init__(self, url: str, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.url = url
        self._client: aioredis.Redis | None = None
        self.pipelined = Pipelined(url)

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("Redis is not connected yet")
        return self._client

    async def _connect(self) -> None:
        self._client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=1, socket_timeout=2, health_check_interval=5
        )

    async def _probe(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await super().close()
        if self._client is not None:
            await self._client.aclose()
        await self.pipelined.close()


class PostgresDependency(_PollingDependency):
    """PostgreSQL through a psycopg async pool; runs the service's migrations on first connect."""

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        migrations: Path | None = None,
        component: str = "",
        interval: float = 0.5,
        max_size: int = 10,
        autocommit: bool = False,
        check_on_checkout: bool = True,
    ) -> None:
        """``autocommit``: statements outside ``conn.transaction()`` commit on their own (one round
        trip for a single-statement change). ``check_on_checkout``: ping every connection taken from
        the pool (safer after a database restart, one more round trip per use); without it a dead
        connection fails its statement and is dropped by the pool."""
        super().__init__(interval)
        self.autocommit = autocommit
        self.check_on_checkout = check_on_checkout
        self.dsn = dsn
        self.migrations = migrations
        self.component = component
        self.max_size = max_size
        self._pool: AsyncConnectionPool | None = None
        self.after_migrate: list[Callable[[], Awaitable[None]]] = []

    @property
    def pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise RuntimeError("PostgreSQL is not connected yet")
        return self._pool

    async def _connect(self) -> None:
        self._pool = AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.max_size,
            open=False,
            timeout=5,
            reconnect_timeout=0,  # keep trying forever; health reflects the outage meanwhile
            check=AsyncConnectionPool.check_connection if self.check_on_checkout else None,
            kwargs={"connect_timeout": 2, "autocommit": self.autocommit},
        )
        await self._pool.open(wait=False)

    async def _probe(self) -> None:
        async with self.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")

    async def _first_up(self) -> None:
        if self.migrations is not None:
            async with self.pool.connection() as conn:
                applied = await migrate(conn, self.component, self.migrations)
            if applied:
                log.info("migrations applied", extra={"versions": ",".join(applied)})
        for hook in self.after_migrate:
            await hook()

    async def close(self) -> None:
        await super().close()
        if self._pool is not None:
            with contextlib.suppress(psycopg.Error, asyncio.TimeoutError):
                await self._pool.close(timeout=5)


class Readiness(Dependency):
    """A condition of the service itself (a stream created, a cache rebuilt), set by the service:
    health stays NOT_SERVING until it is up."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    async def _run(self) -> None:
        return None

    def set(self, value: bool = True) -> None:
        self._set_up(value)
