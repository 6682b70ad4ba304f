"""betting.adapters.odds.OddsView's kept snapshots against a real Valkey: read once and kept while
Valkey tracks them; a change made by the pricing side is what the next bet is checked against; a
change made while a read is in flight is not kept; nothing kept is used while Valkey does not
answer."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from livebet.odds.v1 import market_pb2
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from betting.adapters.odds import OddsView
from betting.domain.rules import Refusal
from mesh.resp import Pipelined
from pricing.live.codec import SNAP_KEY
from tests.conftest import Server, start_valkey
from tests.helpers import until


def snapshot(match_id: str, version: int) -> bytes:
    snap = market_pb2.MatchOdds(match_id=match_id, version=version)
    market = snap.markets.add(status=market_pb2.MARKET_STATUS_OPEN, version=version)
    market.ref.match_id, market.ref.market_key = match_id, "1x2"
    market.outcomes.add(outcome_id="home", active=True).odds.decimal = f"{1 + version / 100:.2f}"
    return snap.SerializeToString()


def view(url: str, pipelined: Pipelined | None = None) -> tuple[OddsView, list[str], Redis, Pipelined]:
    client, pipelined = Redis.from_url(url), pipelined or Pipelined(url)
    reads: list[str] = []
    return OddsView(SimpleNamespace(client=client, pipelined=pipelined), reads=reads.append), reads, client, pipelined


async def test_a_snapshot_is_read_once_and_each_change_is_seen(redis_server: Server) -> None:
    odds, reads, client, pipelined = view(redis_server.url)
    pricing = Redis.from_url(redis_server.url)
    await pricing.set(SNAP_KEY + "ov1", snapshot("ov1", 1))
    for _ in range(5):
        assert (await odds.match("ov1")).version == 1
    assert reads == ["redis"] + ["cache"] * 4
    await pricing.set(SNAP_KEY + "ov1", snapshot("ov1", 2))  # the engine's write after a feed event

    async def repriced() -> bool:
        return (await odds.match("ov1")).version == 2

    await until(repriced, "the new snapshot seen")
    assert reads[-1] == "redis"  # read again, not served from what was kept
    assert (await odds.match("ov1")).version == 2 and reads[-1] == "cache"
    await pricing.delete(SNAP_KEY + "ov1")

    async def gone() -> bool:
        try:
            await odds.match("ov1")
        except Refusal as r:
            return "no priced match" in r.message
        return False

    await until(gone, "the deleted snapshot refused")
    await pipelined.close()
    await client.aclose()
    await pricing.aclose()


class ChangedWhileRead(Pipelined):
    """A real client that, once a read's reply is in and before its caller goes on, has the
    snapshot changed by another connection and waits for the invalidation: the race in order."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url, self.race = url, False

    async def get(self, key: str) -> bytes | None:
        value = await super().get(key)
        if self.race:
            self.race = False
            told = asyncio.get_running_loop().create_future()
            invalidate = self._invalidate
            assert invalidate is not None

            def tell(keys: list[bytes] | None) -> None:
                invalidate(keys)
                if not told.done():
                    told.set_result(None)

            self._protocol.invalidate = tell  # type: ignore[union-attr]
            other = Redis.from_url(self.url)
            await other.set(key, snapshot("ov2", 3))
            await asyncio.wait_for(told, 5)
            self._protocol.invalidate = invalidate  # type: ignore[union-attr]
            await other.aclose()
        return value


async def test_a_snapshot_changed_while_it_is_read_is_not_kept(redis_server: Server) -> None:
    pricing = Redis.from_url(redis_server.url)
    await pricing.set(SNAP_KEY + "ov2", snapshot("ov2", 1))
    racing = ChangedWhileRead(redis_server.url)
    odds, reads, client, _ = view(redis_server.url, racing)
    assert (await odds.match("ov2")).version == 1  # tracked from here on
    await pricing.set(SNAP_KEY + "ov2", snapshot("ov2", 2))

    async def changed() -> bool:
        racing.race = True
        return (await odds.match("ov2")).version == 2

    await until(changed, "version 2 read")  # ... and version 3 written meanwhile
    assert (await odds.match("ov2")).version == 3 and reads[-1] == "redis"
    assert (await odds.match("ov2")).version == 3 and reads[-1] == "cache"
    await racing.close()
    await client.aclose()
    await pricing.aclose()


async def test_nothing_kept_is_used_while_valkey_does_not_answer(tmp_path: Path) -> None:
    server = start_valkey(tmp_path, "odds-stalled")
    try:
        odds, reads, client, pipelined = view(server.url, Pipelined(server.url, timeout=0.5))
        await client.set(SNAP_KEY + "ov3", snapshot("ov3", 1))
        assert (await odds.match("ov3")).version == 1 and (await odds.match("ov3")).version == 1
        assert reads == ["redis", "cache"]
        server.proc.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(0.3)  # past FRESH_SECONDS: Valkey could have changed it unheard
            with pytest.raises(RedisTimeoutError):
                await odds.match("ov3")
        finally:
            server.proc.signal(signal.SIGCONT)
        assert (await odds.match("ov3")).version == 1 and reads[-1] == "redis"
        await pipelined.close()
        await client.aclose()
    finally:
        server.proc.stop()


async def test_those_waiting_on_a_match_are_told_of_its_changes_and_of_a_flush(redis_server: Server) -> None:
    odds, _, client, pipelined = view(redis_server.url)
    pricing = Redis.from_url(redis_server.url)
    for m in ("ow1", "ow2"):
        await pricing.set(SNAP_KEY + m, snapshot(m, 1))
    one, two = asyncio.Event(), asyncio.Event()
    odds.wait_for_changes(["ow1"], one)
    odds.wait_for_changes(["ow1", "ow2"], two)
    await odds.match("ow1")
    await odds.match("ow2")  # read: tracked from now on
    await until(odds.tells_changes, "tracking on")
    await pricing.set(SNAP_KEY + "ow2", snapshot("ow2", 2))
    await until(two.is_set, "told of ow2")
    assert not one.is_set()  # not waiting on ow2
    two.clear()
    await pricing.set(SNAP_KEY + "ow1", snapshot("ow1", 2))
    await until(lambda: one.is_set() and two.is_set(), "both told of ow1")
    one.clear()
    two.clear()
    odds.stop_waiting(["ow1", "ow2"], two)
    await odds.match("ow1")  # tracked again (a push comes once per read)
    await pricing.flushall()  # everything changed: everyone still waiting is told
    await until(one.is_set, "told of the flush")
    await asyncio.sleep(0.2)
    assert not two.is_set()  # stopped waiting
    await pipelined.close()
    await client.aclose()
    await pricing.aclose()
