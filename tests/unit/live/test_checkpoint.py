"""Engine checkpoints: what is loaded is the engine that was saved, and prices on from there
exactly as the engine it was taken from."""

import zlib

import numpy as np
import pytest

from pricing.live import checkpoint
from pricing.live.book import Hold, LiveMatch
from pricing.live.engine import Engine
from tests.helpers import simulated_events


def _events() -> list:  # type: ignore[type-arg]
    return simulated_events(3, 11)


def _same(a: LiveMatch, b: LiveMatch) -> None:
    for name in checkpoint.FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype == y.dtype, name
            assert np.array_equal(x, y), name
        else:
            assert x == y, name


def test_a_checkpoint_taken_mid_match_loads_the_same_engine_which_prices_on_identically() -> None:
    events = _events()
    half = len(events) // 2
    engine = Engine()
    engine.apply_all(events[:half])
    m = next(iter(engine.matches.values()))
    m.holds.add(Hold.TRADER)  # what a trader set goes with it
    m.margins_by_type["1x2"] = 0.07
    engine.retired["gone"] = (12, 1_700_000_000_000)
    data = checkpoint.encode(engine, 4242, "2026-11-27 10:00:00+00:00")
    loaded, sequence, stream = checkpoint.decode(data)
    assert (sequence, stream) == (4242, "2026-11-27 10:00:00+00:00")
    assert loaded.provider_of == engine.provider_of and loaded.retired == engine.retired
    assert loaded.matches.keys() == engine.matches.keys()
    for match_id in engine.matches:
        _same(loaded.matches[match_id], engine.matches[match_id])
    # the rest of the matches, on both: the same deltas, versions and prices
    for e in events[half:]:
        assert loaded.apply(e) == engine.apply(e)


def test_a_checkpoint_of_another_engine_version_or_damaged_bytes_is_refused() -> None:
    engine = Engine()
    engine.apply_all(_events()[:50])
    data = checkpoint.encode(engine, 1)
    doc = zlib.decompress(data).decode()
    other = zlib.compress(doc.replace(f'"format":{checkpoint.FORMAT}', '"format":99').encode())
    with pytest.raises(checkpoint.CheckpointError, match="another engine version"):
        checkpoint.decode(other)
    fewer = zlib.compress(doc.replace('"home_xg",', "").encode())
    with pytest.raises(checkpoint.CheckpointError, match="another engine version"):
        checkpoint.decode(fewer)
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint"):
        checkpoint.decode(b"not zlib at all")
    engine.deferred["x"] = "clock"  # mid-batch: a reprice still to do is not in the state
    with pytest.raises(checkpoint.CheckpointError, match="between batches"):
        checkpoint.encode(engine, 2)


def test_the_pricing_mode_comes_from_todays_configuration_as_after_a_replay() -> None:
    events = _events()[:20]
    providers = frozenset(e.provider for e in events)
    engine = Engine(provider_mode=providers)  # every match priced from its provider's odds
    engine.apply_all(events)
    assert {m.mode for m in engine.matches.values()} == {"provider"}
    data = checkpoint.encode(engine, 1)
    as_model, _, _ = checkpoint.decode(data)  # since then, no provider is in provider mode
    assert {m.mode for m in as_model.matches.values()} == {"model"}
    as_before, _, _ = checkpoint.decode(data, providers)
    assert {m.mode for m in as_before.matches.values()} == {"provider"}
