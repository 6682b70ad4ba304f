"""A pipelined Redis client for two hot paths: reading a live odds snapshot per bet (``get``) and
the pricing engine's writes after each batch of feed events (``execute``, many commands at once).

redis.asyncio costs ~50-65 µs of CPU per GET (a pooled connection taken and given back, a retry
wrapper, a timeout context, a general reply parser); in the PlaceBet benchmark that was a tenth of
the betting process's CPU, and that process is the bottleneck; its pipelines cost the engine about
as much per command. This client keeps one connection, writes each call's commands at once and
matches the replies, which Redis sends in order, to the callers waiting for them: ~12 µs per GET
(``python -m mesh.resp`` measures both on a real Valkey).

Replies: bulk strings and nil, simple strings, integers and errors on the hot path (what GET, SET,
LPUSH, LTRIM, ZADD, ZREM, EXPIRE, AUTH and SELECT answer), and any other RESP2 or RESP3 value
(arrays, maps, the RESP3 null) parsed in full. Reads of lists and health probes go through
redis.asyncio as before. Failures raise redis-py's exceptions, so callers handle them as they
handle redis.asyncio's: a lost connection fails every GET waiting on it with ``ConnectionError``
and the next GET connects again; a GET without a reply in ``timeout`` seconds fails with
``TimeoutError``, with every GET behind it, and drops the connection (a later reply could no
longer be matched).

**Tracking** (:meth:`Pipelined.track`, for a cache of what was read): the connection speaks RESP3
and asks the server for ``CLIENT TRACKING ON``. From then on the server tells it, on the same
connection and in order with the replies, whenever a key it has read is changed, expires or is
deleted (or that everything is, after ``FLUSHALL``): the ``invalidate`` callback gets the keys,
or None for "all of them". A lost connection calls it with None too: the server no longer tracks
anything for us. Invalidations sent while the connection was cut off could be lost without the
socket closing (a network partition), so :meth:`Pipelined.fresh` says whether a reply has come
for a command sent less than ``fresh`` seconds ago (a PING is sent when nothing else is); a cache
is to be trusted only while it is. Every invalidation sent before the server answered that
command has been received before its reply.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote, urlparse

from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

CRLF = b"\r\n"
PING = b"*1\r\n$4\r\nPING\r\n"
log = logging.getLogger("mesh.resp")
#: told the keys a tracking connection's server invalidated, or None: everything read is invalid
Invalidate = Callable[[list[bytes] | None], None]
_MORE = object()  # the buffer ends before the value does


def _parse(buf: bytearray, pos: int) -> Any:
    """The RESP2 or RESP3 value at ``pos``: (value, where the next one starts), or ``_MORE``.
    For what the hot path in :meth:`_Protocol.data_received` leaves: aggregates, RESP3 types."""
    end = buf.find(CRLF, pos)
    if end < 0:
        return _MORE
    kind, head, at = buf[pos], bytes(buf[pos + 1 : end]), end + 2
    if kind in b"$=!":  # bulk string, verbatim string, bulk error
        size = int(head)
        if size < 0:
            return None, at
        if len(buf) < at + size + 2:
            return _MORE
        value = bytes(buf[at : at + size])
        return (ResponseError(value.decode(errors="replace")) if kind == 0x21 else value), at + size + 2
    if kind == 0x2B:  # + simple string
        return head, at
    if kind == 0x2D:  # - error
        return ResponseError(head.decode(errors="replace")), at
    if kind in b":(":  # integer, big number
        return int(head), at
    if kind == 0x5F:  # _ null
        return None, at
    if kind == 0x23:  # # boolean
        return head == b"t", at
    if kind == 0x2C:  # , double
        return float(head), at
    if kind in b"*~>%|":  # array, set, push, map, attribute (maps as flat lists of keys and values)
        n = int(head)
        if n < 0:
            return None, at
        items = []
        for _ in range(n * 2 if kind in b"%|" else n):
            got = _parse(buf, at)
            if got is _MORE:
                return _MORE
            item, at = got
            items.append(item)
        if kind == 0x7C:  # an attribute comes before the reply it describes: the reply is what counts
            return _parse(buf, at)
        return items, at
    raise RedisConnectionError(f"unexpected Redis reply {bytes(buf[pos : pos + 20])!r}")


def command(*parts: bytes) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    """Replies to the commands written on this connection, in the order written."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # per call: [its future, replies still to come, the replies so far (None: one command),
        # when it was sent]
        self.waiting: collections.deque[list[Any]] = collections.deque()
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self._watch: asyncio.TimerHandle | None = None
        # commands sent during this turn of the event loop, written together at its end
        self._out: list[bytes] = []
        # tracking (see the module's doc): whom to tell, and since when replies are known complete
        self.invalidate: Invalidate | None = None
        self.tracking = False
        self.answered = float("-inf")  # when the command last answered was sent
        self._pinging = False
        self._keeper: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport: uvloop's has asyncio.Transport's methods without being its subclass
        self.transport = cast(asyncio.Transport, transport)
        self._watch = asyncio.get_running_loop().call_later(self.timeout / 2, self._check)

    def _check(self) -> None:
        """A timer instead of a timeout per GET (which costs as much as the GET): the oldest
        command without a reply for longer than ``timeout`` fails the connection and everything
        waiting on it; a later reply could no longer be matched."""
        if self.lost is not None:
            return
        loop = asyncio.get_running_loop()
        if self.waiting and loop.time() - self.waiting[0][3] > self.timeout:
            self.fail(RedisTimeoutError(f"no reply from Redis in {self.timeout} s"))
            return
        self._watch = loop.call_later(self.timeout / 2, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost ({exc or 'closed by the server'})"))

    def fail(self, err: Exception) -> None:
        if self.lost is None:
            self.lost = err
        if self._watch is not None:
            self._watch.cancel()
        if self._keeper is not None:
            self._keeper.cancel()
        self.tracking = False
        if self.invalidate is not None:  # nothing read on this connection is tracked any longer
            invalidate, self.invalidate = self.invalidate, None
            invalidate(None)
        while self.waiting:
            fut = self.waiting.popleft()[0]
            if not fut.done():
                fut.set_exception(err)
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes, replies: int = 0) -> asyncio.Future[Any]:
        """Write ``data``: one command (``replies`` 0: the future gets its reply) or ``replies``
        commands (the future gets the list of their replies, or the first error among them once
        all have come)."""
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            raise self.lost or RedisConnectionError("connection to Redis closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self.waiting.append([fut, replies, [] if replies else None, loop.time()])
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(data)
        return fut

    def _flush(self) -> None:
        """One write for every command sent in the last turn of the loop: 16 callers each sending a
        GET cost one system call, not 16 (a write to a socket was 5 % of the betting process's CPU)."""
        out, self._out = self._out, []
        if self.lost is None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def keep_fresh(self, fresh: float) -> None:
        """Send a PING whenever no reply has come for a command sent in the last ``fresh / 2``
        seconds, so that :meth:`Pipelined.fresh` stays true while the server answers."""
        if self.lost is not None:
            return
        loop = asyncio.get_running_loop()
        if not self._pinging and loop.time() - self.answered > fresh / 2:
            self._pinging = True
            self.send(PING).add_done_callback(self._pinged)
        self._keeper = loop.call_later(fresh / 4, self.keep_fresh, fresh)

    def _pinged(self, fut: asyncio.Future[Any]) -> None:
        self._pinging = False
        if not fut.cancelled():
            fut.exception()  # retrieved: a lost connection is handled by fail()

    def _push(self, value: Any) -> None:
        """A RESP3 push: ``invalidate`` with the keys changed, or with null for all of them."""
        if isinstance(value, list) and len(value) == 2 and value[0] == b"invalidate" and self.invalidate is not None:
            keys = value[1]
            self.invalidate(list(keys) if isinstance(keys, list) else None)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while buf:
            end = buf.find(CRLF)
            if end < 0:
                return
            kind = buf[0]
            if kind == 0x24:  # $: a bulk string, or nil ($-1)
                size = int(buf[1:end])
                if size < 0:
                    value: bytes | None = None
                    del buf[: end + 2]
                else:
                    stop = end + 2 + size
                    if len(buf) < stop + 2:
                        return  # the rest of the value is still coming
                    value = bytes(buf[end + 2 : stop])
                    del buf[: stop + 2]
                self._reply(value, None)
            elif kind == 0x2B:  # +: a simple string (AUTH, SELECT)
                value = bytes(buf[1:end])
                del buf[: end + 2]
                self._reply(value, None)
            elif kind == 0x3A:  # :: an integer
                number = int(buf[1:end])
                del buf[: end + 2]
                self._reply(number, None)
            elif kind == 0x2D:  # -: an error reply
                message = bytes(buf[1:end]).decode(errors="replace")
                del buf[: end + 2]
                self._reply(None, ResponseError(message))
            elif kind == 0x5F:  # _: the RESP3 null (a GET of a missing key on a tracking connection)
                del buf[: end + 2]
                self._reply(None, None)
            else:  # an aggregate (HELLO's map, a push) or another RESP3 type: parsed in full
                try:
                    got = _parse(buf, 0)
                except (ValueError, RedisConnectionError) as err:
                    self.fail(RedisConnectionError(f"Redis reply not understood: {err}"))
                    return
                if got is _MORE:
                    return
                value, at = got
                del buf[:at]
                if kind == 0x3E:  # >: a push, not a reply
                    self._push(value)
                else:
                    self._reply(value, value if isinstance(value, ResponseError) else None)

    def _reply(self, value: Any, err: Exception | None) -> None:
        if not self.waiting:
            self.fail(RedisConnectionError("a Redis reply nobody asked for"))
            return
        call = self.waiting[0]
        replies = call[2]
        if replies is not None:  # one of several commands
            replies.append(err if err is not None else value)
            call[1] -= 1
            if call[1]:
                return
            err = next((r for r in replies if isinstance(r, ResponseError)), None)
            value = replies
        self.waiting.popleft()
        self.answered = call[3]
        fut = call[0]
        if fut.done():  # its caller was cancelled
            return
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(value)


class Pipelined:
    """``await get(key)`` and ``await execute(commands)`` over one pipelined connection to the
    Redis at ``url`` (``redis://[[user]:password@]host[:port][/db]``)."""

    def __init__(self, url: str, timeout: float = 2.0, connect_timeout: float = 1.0) -> None:
        u = urlparse(url)
        if u.scheme != "redis":
            raise ValueError(f"mesh.resp takes a redis:// URL, not {url!r}")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 6379
        self.db = int(u.path.strip("/") or 0)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._invalidate: Invalidate | None = None
        self._fresh = 0.1

    def track(self, invalidate: Invalidate, fresh: float = 0.1) -> None:
        """Have the server track the keys read through this client and tell ``invalidate`` of
        their changes (see the module's doc); ``fresh``: see :meth:`fresh`. A connection open
        already is dropped, so the next call connects with tracking."""
        self._invalidate, self._fresh = invalidate, fresh
        if self._protocol is not None:
            self._protocol.fail(RedisConnectionError("reconnecting with tracking"))
            self._protocol = None

    def fresh(self) -> bool:
        """Whether every invalidation of a key read here, up to less than ``fresh`` seconds ago,
        has been received: the connection tracks, and answered a command sent since then."""
        p = self._protocol
        return (
            p is not None
            and p.tracking
            and p.lost is None
            and asyncio.get_running_loop().time() - p.answered <= self._fresh
        )

    async def _connection(self) -> _Protocol:
        p = self._protocol
        if p is not None and p.lost is None:
            return p
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            p = self._protocol
            if p is not None and p.lost is None:
                return p
            loop = asyncio.get_running_loop()
            try:
                _, fresh = await asyncio.wait_for(
                    loop.create_connection(lambda: _Protocol(self.timeout), self.host, self.port), self.connect_timeout
                )
            except (OSError, TimeoutError) as err:
                raise RedisConnectionError(f"cannot connect to Redis at {self.host}:{self.port}: {err}") from err
            p = fresh
            hello = []
            if self.password is not None:
                auth = (self.username.encode(),) if self.username else ()
                hello.append(p.send(command(b"AUTH", *auth, self.password.encode())))
            if self.db:
                hello.append(p.send(command(b"SELECT", str(self.db).encode())))
            refused = [r for r in await asyncio.gather(*hello, return_exceptions=True) if isinstance(r, BaseException)]
            if refused:
                p.fail(RedisConnectionError("Redis refused the connection's AUTH or SELECT"))
                raise AuthenticationError(f"Redis at {self.host}:{self.port} refused the connection: {refused[0]}")
            if self._invalidate is not None:
                await self._start_tracking(p, self._invalidate)
            self._protocol = p
            return p

    async def _start_tracking(self, p: _Protocol, invalidate: Invalidate) -> None:
        """RESP3 and ``CLIENT TRACKING ON`` on a new connection. A server that refuses either
        (Redis before 6, an ACL) leaves the connection untracked: it works, and is never fresh."""
        p.invalidate = invalidate
        asked = [p.send(command(b"HELLO", b"3")), p.send(command(b"CLIENT", b"TRACKING", b"ON"))]
        refused = [r for r in await asyncio.gather(*asked, return_exceptions=True) if isinstance(r, BaseException)]
        if refused:
            if p.lost is not None:
                raise p.lost
            log.warning(
                "Redis refused tracking (HELLO 3, CLIENT TRACKING ON): nothing read is cached",
                extra={"error": str(refused[0])},
            )
            return
        p.tracking = True
        p.keep_fresh(self._fresh)

    async def get(self, key: str) -> bytes | None:
        p = await self._connection()
        value: bytes | None = await p.send(command(b"GET", key.encode()))
        return value

    async def execute(self, commands: list[bytes]) -> list[Any]:
        """Send ``commands`` (each made by :func:`command`) in one write; their replies, in order.
        An error reply to any of them raises it once all have replied (the others took effect,
        as in a redis.asyncio pipeline without a transaction)."""
        if not commands:
            return []
        p = await self._connection()
        replies: list[Any] = await p.send(b"".join(commands), len(commands))
        return replies

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(RedisConnectionError("closed"))
            self._protocol = None


async def _measure(url: str, n: int = 20_000, concurrency: int = 16) -> None:
    """Prints CPU per GET of a 6 KB value (a snapshot's size) for redis.asyncio and this client."""
    import os
    import time

    from redis.asyncio import Redis

    r = Redis.from_url(url)
    await r.set("mesh.resp.bench", os.urandom(6000))
    fast = Pipelined(url)
    for name, get in (("redis.asyncio", r.get), ("mesh.resp", fast.get)):

        async def worker(get=get) -> None:  # type: ignore[no-untyped-def]
            for _ in range(n // concurrency):
                await get("mesh.resp.bench")

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{name:14} {cpu / n * 1e6:6.1f} µs CPU per GET, {n / wall:8.0f} GET/s ({concurrency} concurrent)")
    await r.delete("mesh.resp.bench")
    await r.aclose()
    await fast.close()


def main() -> None:
    """``python -m mesh.resp``: the two clients against a throw-away Valkey."""
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    from mesh import eventloop, infra

    with tempfile.TemporaryDirectory() as d:
        port = infra.free_port()
        spec = infra.valkey(Path(d), port, persist=False)
        proc = subprocess.Popen(spec.argv, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not spec.ready() and time.monotonic() < deadline:
                time.sleep(0.05)
            eventloop.run(_measure(f"redis://127.0.0.1:{port}/0"))
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


if __name__ == "__main__":
    main()
