"""mesh.resp.Pipelined, the betting service's snapshot reader, against a real Valkey: replies
matched to the right callers, values of any size, errors, a lost server, a stalled one, AUTH and
SELECT; tracking (what was read, changed since, told in order with the replies; a lost, stalled or
refusing server)."""

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
from tests.helpers import Proc, until


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


async def test_a_tracking_connection_is_told_of_every_change_to_what_it_read(redis_server: Server) -> None:
    r = Redis.from_url(redis_server.url)
    await r.mset({"trk:a": b"a1", "trk:b": b"b1", "trk:other": b"o1"})
    await r.delete("trk:missing")
    told: list[list[bytes] | None] = []
    get = Pipelined(redis_server.url)
    get.track(told.append, fresh=0.2)
    assert await get.get("trk:a") == b"a1"
    assert await get.get("trk:b") == b"b1"
    assert await get.get("trk:missing") is None  # RESP3's null
    assert get.fresh()
    await r.set("trk:other", b"o2")  # never read here: not told
    await r.set("trk:a", b"a2")
    await until(lambda: [b"trk:a"] in told, "the change of trk:a")
    assert all(keys is not None and b"trk:other" not in keys for keys in told)
    # pushes arriving among replies: every GET still gets its own value
    writes = [r.set("trk:b", f"b{i}") for i in range(2, 40)]
    reads = [get.get("trk:a") for _ in range(40)]
    got = await asyncio.gather(*reads, *writes)
    assert got[:40] == [b"a2"] * 40
    await until(lambda: [b"trk:b"] in told, "the changes of trk:b")
    await r.set("trk:missing", b"now here")  # a missing key read is tracked as well
    await until(lambda: [b"trk:missing"] in told, "trk:missing created")
    assert await get.get("trk:a") == b"a2"
    await r.expire("trk:a", 60)
    await until(lambda: told.count([b"trk:a"]) >= 2, "trk:a's expiry set")
    await r.flushdb()
    await until(lambda: None in told, "the flush of everything")
    assert await get.get("trk:a") is None and get.fresh()
    await get.close()
    await r.aclose()


async def test_a_lost_tracking_connection_invalidates_everything_until_it_is_back(tmp_path: Path) -> None:
    server = start_valkey(tmp_path, "tracking-lost")
    try:
        r = Redis.from_url(server.url)
        await r.set("trk:k", b"v1")
        told: list[list[bytes] | None] = []
        get = Pipelined(server.url)
        get.track(told.append, fresh=0.2)
        assert await get.get("trk:k") == b"v1" and get.fresh()
        server.proc.stop()
        await until(lambda: told == [None], "everything invalidated with the connection lost")
        assert not get.fresh()
        server.proc.start()
        await r.aclose()
        r = Redis.from_url(server.url)
        await r.set("trk:k", b"v2")
        assert await get.get("trk:k") == b"v2" and get.fresh()  # connected again, tracking again
        await r.set("trk:k", b"v3")
        await until(lambda: told[-1] == [b"trk:k"], "the change after the reconnection")
        await get.close()
        await r.aclose()
    finally:
        server.proc.stop()


async def test_a_stalled_server_is_not_fresh_and_is_again_once_it_answers(tmp_path: Path) -> None:
    server = start_valkey(tmp_path, "tracking-stalled")
    try:
        get = Pipelined(server.url, timeout=5.0)
        get.track(lambda keys: None, fresh=0.2)
        assert await get.get("trk:k") is None and get.fresh()
        await asyncio.sleep(0.5)
        assert get.fresh()  # idle: its PINGs keep it fresh
        server.proc.signal(signal.SIGSTOP)
        try:
            await until(lambda: not get.fresh(), "stale while the server does not answer", timeout=2)
        finally:
            server.proc.signal(signal.SIGCONT)
        await until(get.fresh, "fresh again once the server answers", timeout=3)
        await get.close()
    finally:
        server.proc.stop()


async def test_a_server_that_refuses_tracking_leaves_reads_working_and_never_fresh(redis_server: Server) -> None:
    r = Redis.from_url(redis_server.url)
    await r.execute_command("ACL", "SETUSER", "notrack", "on", ">pw", "~*", "&*", "+@all", "-client|tracking")
    await r.set("trk:k", b"v")
    try:
        get = Pipelined(f"redis://notrack:pw@127.0.0.1:{redis_server.port}/0")
        get.track(lambda keys: None)
        assert await get.get("trk:k") == b"v"
        assert not get.fresh()
        await get.close()
    finally:
        await r.execute_command("ACL", "DELUSER", "notrack")
        await r.aclose()
