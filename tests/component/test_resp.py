"""mesh.resp.Pipelined, the betting service's snapshot reader, against a real Valkey: replies
matched to the right callers, values of any size, errors, a lost server, a stalled one, AUTH and
SELECT."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mesh import infra
from mesh.resp import Pipelined, command
from tests.conftest import Server, start_valkey
from tests.helpers import Proc


async def test_concurrent_gets_each_get_their_own_value(redis_server: Server) -> None:
    r = Redis.from_url(redis_server.url)
    values = {f"resp:k{i}": os.urandom(i * 997) for i in range(60)}  # 0 B .. 58 KB, split over reads
    values["resp:big"] = os.urandom(3_000_000)
    values["resp:crlf"] = b"\r\n$-1\r\n+OK\r\n"  # reply syntax inside a value is only data
    await r.mset(values)
    get = Pipelined(redis_server.url)
    keys = [k for k in values for _ in range(3)] + ["resp:missing"]
    got = await asyncio.gather(*(get.get(k) for k in keys))
    assert got[:-1] == [values[k] for k in keys[:-1]]
    assert got[-1] is None
    await get.close()
    await r.aclose()


async def test_an_error_reply_fails_that_get_only(redis_server: Server) -> None:
    r = Redis.from_url(redis_server.url)
    await r.delete("resp:list")
    await r.rpush("resp:list", b"x")
    await r.set("resp:fine", b"ok")
    get = Pipelined(redis_server.url)
    wrong, fine = await asyncio.gather(get.get("resp:list"), get.get("resp:fine"), return_exceptions=True)
    assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
    assert fine == b"ok"
    assert await get.get("resp:fine") == b"ok"  # the same connection goes on
    await get.close()
    await r.aclose()


async def test_a_lost_server_fails_the_gets_and_a_restarted_one_is_used_again(tmp_path: Path) -> None:
    server = start_valkey(tmp_path, "lost")
    try:
        r = Redis.from_url(server.url)
        await r.set("resp:k", b"v1")
        get = Pipelined(server.url)
        assert await get.get("resp:k") == b"v1"
        server.proc.stop()
        with pytest.raises(RedisConnectionError):
            await get.get("resp:k")
        server.proc.start()
        await r.aclose()
        r = Redis.from_url(server.url)
        await r.set("resp:k", b"v2")
        assert await get.get("resp:k") == b"v2"
        await get.close()
        await r.aclose()
    finally:
        server.proc.stop()


async def test_a_stalled_server_times_out_every_get_waiting_on_it(tmp_path: Path) -> None:
    server = start_valkey(tmp_path, "stalled")
    try:
        r = Redis.from_url(server.url)
        await r.set("resp:k", b"v")
        get = Pipelined(server.url, timeout=0.4)
        assert await get.get("resp:k") == b"v"
        server.proc.signal(signal.SIGSTOP)
        try:
            gets = asyncio.gather(*(get.get("resp:k") for _ in range(5)), return_exceptions=True)
            got = await asyncio.wait_for(gets, 5)
        finally:
            server.proc.signal(signal.SIGCONT)
        assert all(isinstance(g, RedisTimeoutError) for g in got), got
        assert await get.get("resp:k") == b"v"  # a new connection once the server answers again
        await get.close()
        await r.aclose()
    finally:
        server.proc.stop()


async def test_password_and_database_from_the_url(tmp_path: Path) -> None:
    port = infra.free_port()
    spec = infra.valkey(tmp_path / "auth", port, persist=False)
    spec = dataclasses.replace(spec, argv=[*spec.argv, "--requirepass", "s3cret"])
    proc = Proc(spec, tmp_path / "auth.log")
    spec.ready = lambda: True  # PING needs the password; started below, then asked with it
    proc.start()
    try:
        url = f"redis://:s3cret@127.0.0.1:{port}/2"
        for _ in range(100):
            try:
                r = Redis.from_url(url)
                await r.set("resp:k", b"in db 2")
                break
            except RedisConnectionError:
                await asyncio.sleep(0.05)
        assert await Pipelined(url).get("resp:k") == b"in db 2"
        assert await Pipelined(f"redis://:s3cret@127.0.0.1:{port}/0").get("resp:k") is None
        with pytest.raises(RedisConnectionError, match="WRONGPASS"):  # AuthenticationError, as redis-py
            await Pipelined(f"redis://:wrong@127.0.0.1:{port}/2").get("resp:k")
        await r.aclose()
    finally:
        proc.stop()


async def test_execute_sends_many_commands_and_returns_every_reply(redis_server: Server) -> None:
    r = Redis.from_url(redis_server.url)
    await r.delete("resp:log", "resp:live", "resp:snap")
    fast = Pipelined(redis_server.url)
    replies = await fast.execute(
        [
            command(b"LPUSH", b"resp:log", b"d1"),
            command(b"LPUSH", b"resp:log", b"d2"),
            command(b"LTRIM", b"resp:log", b"0", b"0"),
            command(b"SET", b"resp:snap", b"\x00snapshot\r\n"),
            command(b"ZADD", b"resp:live", b"17", b"m1"),
            command(b"EXPIRE", b"resp:snap", b"60"),
            command(b"GET", b"resp:nothing"),
        ]
    )
    assert replies == [1, 2, b"OK", b"OK", 1, 1, None]
    assert await r.lrange("resp:log", 0, -1) == [b"d2"]
    assert await r.get("resp:snap") == b"\x00snapshot\r\n"
    assert await r.zscore("resp:live", "m1") == 17
    assert 0 < await r.ttl("resp:snap") <= 60
    # an error reply fails the call once every reply is in; the commands around it took effect
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await fast.execute(
            [command(b"SET", b"resp:a", b"1"), command(b"LPUSH", b"resp:snap", b"x"), command(b"SET", b"resp:b", b"2")]
        )
    assert await r.mget("resp:a", "resp:b") == [b"1", b"2"]
    assert await fast.get("resp:a") == b"1"  # the connection goes on
    await fast.close()
    await r.aclose()
