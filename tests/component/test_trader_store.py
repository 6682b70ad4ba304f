"""The trader state in NATS key-value buckets (a real nats-server of its own): per share, read by
one read of the latest entries, deleted with the match, request answers that expire, and the keys of earlier engines
moved once."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import nats

from feed.adapters.jetstream import partition_of
from pricing.live.book import Hold
from pricing.live.engine import Engine
from pricing.trader import (
    REQUEST_TTL_SECONDS,
    _latest,
    _match_key,
    _state,
    apply_trader_state,
    forget,
    live_keys,
    migrate_keys,
    request_store,
    trader_store,
)
from tests.conftest import start_nats
from tests.helpers import simulated_events


def _two_shares() -> tuple[Engine, str, str]:
    """An engine with two matches in different shares."""
    engine = Engine()
    engine.apply_all(simulated_events(6, 3, fixtures_only=True))
    ids = list(engine.matches)
    a = ids[0]
    b = next(m for m in ids if partition_of(m) != partition_of(a))
    return engine, a, b


def test_trader_state_is_kept_per_share_moved_from_old_keys_and_deleted_with_its_match(tmp_path: Path) -> None:
    server = start_nats(tmp_path)
    engine, a, b = _two_shares()
    for m in (engine.matches[a], engine.matches[b]):
        m.holds.add(Hold.TRADER)
        m.margin = 0.09
    states = {m: json.dumps(_state(engine.matches[m])).encode() for m in (a, b)}
    fresh, _, _ = _two_shares()

    async def run() -> dict[str, object]:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            kv = await trader_store(js)
            # as an earlier engine left them: no share in the key, request answers beside the states
            await kv.put("match." + hashlib.sha256(a.encode()).hexdigest()[:40], states[a])
            await kv.put("req.0123456789", b'{"digest": "d", "version": 3}')
            await kv.put(_match_key(b), states[b])
            # an older state of b under the old key too: the one under the new key is newer and stays
            older_b = json.dumps({**json.loads(states[b]), "margin": 0.05}).encode()
            await kv.put("match." + hashlib.sha256(b.encode()).hexdigest()[:40], older_b)
            moved = await migrate_keys(kv)
            b_margin = json.loads((await kv.get(_match_key(b))).value or b"{}")["margin"]
            again = await migrate_keys(kv)
            keys = sorted(await live_keys(kv))
            applied = await apply_trader_state(fresh, kv, partition_of(a))  # share of a: a only
            held = {m: Hold.TRADER in fresh.matches[m].holds for m in (a, b)}
            await forget(kv, [a])
            after = sorted(await live_keys(kv))
            requests = await request_store(js)
            ttl = (await requests.status()).ttl
            return {
                "moved": moved,
                "again": again,
                "keys": keys,
                "applied": applied,
                "held": held,
                "after": after,
                "ttl": ttl,
                "margin": fresh.matches[a].margin,
                "b_margin": b_margin,
            }
        finally:
            await nc.close()

    try:
        got = asyncio.run(run())
    finally:
        server.proc.stop()
    assert (got["moved"], got["again"], got["b_margin"]) == (3, 0, 0.09)
    assert got["keys"] == sorted([_match_key(a), _match_key(b)])
    assert _match_key(a).startswith(f"match.{partition_of(a)}.")
    assert got["applied"] == 1 and got["held"] == {a: True, b: False} and got["margin"] == 0.09
    assert got["after"] == [_match_key(b)]
    assert got["ttl"] == REQUEST_TTL_SECONDS


def test_the_latest_entries_are_read_whole_newest_value_per_key_deleted_ones_left_out(tmp_path: Path) -> None:
    """More keys than one fetch takes, some written twice, some deleted, some purged: every live
    key comes once with its newest value, and the read's consumer is gone afterwards."""
    server = start_nats(tmp_path)

    async def run() -> tuple[dict[str, bytes], list[str], int]:
        nc = await nats.connect(server.url)
        try:
            kv = await trader_store(nc.jetstream())
            for i in range(600):
                await kv.put(f"match.{i % 4}.k{i}", b"old")
            for i in range(0, 600, 3):
                await kv.put(f"match.{i % 4}.k{i}", f"new{i}".encode())
            for i in range(1, 600, 10):
                await kv.delete(f"match.{i % 4}.k{i}")
            for i in range(2, 600, 10):
                await kv.purge(f"match.{i % 4}.k{i}")
            share = {e.key: e.value or b"" for e in await _latest(kv, "match.2.*")}
            keys = await live_keys(kv)
            consumers = len(await nc.jetstream().consumers_info("KV_pricing-trader"))
            return share, keys, consumers
        finally:
            await nc.close()

    try:
        share, keys, consumers = asyncio.run(run())
    finally:
        server.proc.stop()
    gone = {i for i in range(600) if i % 10 in (1, 2)}
    live = [i for i in range(600) if i not in gone]
    assert sorted(keys) == sorted(f"match.{i % 4}.k{i}" for i in live) and len(keys) == len(set(keys))
    assert share == {f"match.2.k{i}": (f"new{i}" if i % 3 == 0 else "old").encode() for i in live if i % 4 == 2}
    assert consumers == 0
