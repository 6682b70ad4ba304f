"""The engine's checkpoint store on a real NATS JetStream object store."""

from __future__ import annotations

import asyncio
import json

import nats

from pricing import checkpoints
from pricing.live import checkpoint
from pricing.live.engine import Engine
from tests.conftest import Server
from tests.helpers import simulated_events


def test_a_checkpoint_is_loaded_only_in_the_life_of_the_stream_it_was_taken_in(nats_server: Server) -> None:
    events = simulated_events(2, 5)
    engine = Engine()
    engine.apply_all(events[: len(events) // 2])

    async def run() -> tuple[int, int, int, bool]:
        nc = await nats.connect(nats_server.url)
        try:
            obs = await checkpoints.store(nc.jetstream())
            size = await checkpoints.save(obs, 3, checkpoint.state(engine, 777, "life-1"))
            same, at = await checkpoints.load(obs, 3, frozenset(), "life-1")
            other, other_at = await checkpoints.load(obs, 3, frozenset(), "life-2")  # FEED deleted, created again
            none, none_at = await checkpoints.load(obs, 4, frozenset(), "life-1")  # never checkpointed
            loaded = same is not None and same.matches.keys() == engine.matches.keys()
            return size, at, other_at + none_at, loaded and other is None and none is None
        finally:
            await nc.close()

    size, at, not_loaded, ok = asyncio.run(run())
    assert size > 0 and at == 777 and not_loaded == 0 and ok


def test_trader_actions_after_a_checkpoint_win_over_it(nats_server: Server) -> None:
    from pricing.live.book import Hold
    from pricing.trader import _match_key, _state, apply_trader_state, trader_store

    engine = Engine()
    engine.apply_all(simulated_events(1, 9, fixtures_only=True))
    (m,) = engine.matches.values()
    m.holds.add(Hold.TRADER)  # suspended by a trader when the checkpoint was taken
    loaded, _, _ = checkpoint.decode(checkpoint.encode(engine, 1))
    m.holds.discard(Hold.TRADER)  # then resumed: the trader's key-value state says so
    m.margin = 0.08

    async def run() -> set[Hold]:
        nc = await nats.connect(nats_server.url)
        try:
            kv = await trader_store(nc.jetstream())
            await kv.put(_match_key(m.match_id), json.dumps(_state(m)).encode())
            await apply_trader_state(loaded, kv)
        finally:
            await nc.close()
        return loaded.matches[m.match_id].holds

    assert Hold.TRADER not in asyncio.run(run())
    assert loaded.matches[m.match_id].margin == 0.08


def test_no_checkpoint_is_taken_of_an_engine_that_is_not_exactly_at_its_sequence(nats_server: Server) -> None:
    """A share whose last batch failed half-way holds events past its sequence: a checkpoint of it
    would have them applied twice after the next rebuild, so none is taken until it is rebuilt."""
    from pricing.server import Runner, Share

    async def run() -> tuple[Engine | None, Engine | None]:
        nc = await nats.connect(nats_server.url)
        try:
            runner = Runner(None, None, "t")  # type: ignore[arg-type]  # only the checkpoint store is used
            runner.checkpoints = await checkpoints.store(nc.jetstream())
            share = Share(9)
            share.ready.set()
            share.engine.apply_all(simulated_events(2, 13)[:30])
            share.sequence, share.stream, share.built = 30, "life-1", False  # mid-batch when it failed
            await runner.checkpoint(share, force=True)
            before, _ = await checkpoints.load(runner.checkpoints, 9, frozenset(), "life-1")
            share.built = True  # rebuilt: the engine holds exactly the events up to its sequence
            await runner.checkpoint(share, force=True)
            after, _ = await checkpoints.load(runner.checkpoints, 9, frozenset(), "life-1")
            return before, after
        finally:
            await nc.close()

    before, after = asyncio.run(run())
    assert before is None and after is not None and len(after.matches) > 0
