import asyncio
import contextlib
import gc
import json
import logging
from pathlib import Path

import pytest

from mesh import contracts, eventloop, logs
from mesh.backoff import Backoff
from mesh.migrate import MigrationError, discover, discover_repeatable
from mesh.tasks import cancel_and_wait


def test_backoff_doubles_then_caps() -> None:
    b = Backoff(0.1, 1.0, jitter=False)
    assert [round(b.next(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.1


def test_backoff_jitter_stays_within_half_and_cap() -> None:
    b = Backoff(1.0, 3.0)
    for _ in range(50):
        b.reset()
        assert 0.5 <= b.next() <= 1.5


def test_json_log_line_carries_service_and_request_id() -> None:
    fmt = logs.JsonFormatter("betting-0")
    token = logs.request_id.set("req-42")
    try:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "bet %s", ("b1",), None)
        record.bet_id = "b1"
        line = json.loads(fmt.format(record))
    finally:
        logs.request_id.reset(token)
    assert line["service"] == "betting-0"
    assert line["request_id"] == "req-42"
    assert line["msg"] == "bet b1"
    assert line["bet_id"] == "b1"
    assert line["level"] == "info"


def test_migrations_are_discovered_in_order(tmp_path: Path) -> None:
    (tmp_path / "0002_b.sql").write_text("select 1")
    (tmp_path / "0001_a.sql").write_text("select 1")
    assert [v for v, _ in discover(tmp_path)] == ["0001_a", "0002_b"]


def test_repeatable_files_are_discovered_apart_from_the_versioned_ones(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("select 1")
    (tmp_path / "R_place_bet.sql").write_text("select 1")
    (tmp_path / "R_a_view.sql").write_text("select 1")
    assert [v for v, _ in discover(tmp_path)] == ["0001_a"]
    assert [n for n, _ in discover_repeatable(tmp_path)] == ["R_a_view", "R_place_bet"]


def test_badly_named_migration_is_refused(tmp_path: Path) -> None:
    for bad in ("init.sql", "R_Place.sql", "r_place.sql"):
        (tmp_path / bad).write_text("select 1")
        with pytest.raises(MigrationError, match=r"0001_name\.sql or R_name\.sql"):
            discover(tmp_path)
        (tmp_path / bad).unlink()


def test_two_migrations_with_one_number_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("select 1")
    (tmp_path / "0001_b.sql").write_text("select 1")
    with pytest.raises(MigrationError, match="share a number"):
        discover(tmp_path)


def test_every_contract_is_loaded_for_reflection() -> None:
    loaded = contracts.load_all()
    assert "livebet.betting.v1.betting_service_pb2" in loaded
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    for names in contracts.SERVICES.values():
        for name in names:
            assert pool.FindServiceByName(name).full_name == name


def test_schema_image_holds_health_and_every_livebet_file() -> None:
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(contracts.schema_image())
    names = {f.name for f in fds.file}
    assert "grpc_health/v1/health.proto" in names
    assert "livebet/odds/v1/odds_service.proto" in names
    # dependencies come before the files that import them
    order = [f.name for f in fds.file]
    assert order.index("livebet/common/v1/common.proto") < order.index("livebet/odds/v1/market.proto")


async def _stop_step(use_helper: bool, cancelled: asyncio.Event, release: asyncio.Event, after: list[str]) -> None:
    """A stop step: cancel a background task that is slow to finish, then go on (a lease
    hand-over, say), which a bounded stop must never reach once the step itself was cancelled."""

    async def background() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()
            await release.wait()  # e.g. an unsubscribe from a server that is gone

    task = asyncio.create_task(background())
    await asyncio.sleep(0)
    if use_helper:
        await cancel_and_wait(task)
    else:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    after.append("went on")


@pytest.mark.parametrize("use_helper", [True, False])
async def test_cancel_and_wait_lets_the_callers_own_cancellation_through(use_helper: bool) -> None:
    cancelled, release, after = asyncio.Event(), asyncio.Event(), []
    step = asyncio.create_task(_stop_step(use_helper, cancelled, release, after))
    await cancelled.wait()  # the step is now waiting for the background task to end
    step.cancel()  # what asyncio.wait_for does when the step's bound is up
    release.set()
    await asyncio.wait([step])
    if use_helper:
        assert step.cancelled() and after == []
    else:  # the trap the helper replaces: the step's cancellation is swallowed, and it goes on
        assert not step.cancelled() and after == ["went on"]


async def test_cancel_and_wait_waits_for_every_task_and_retrieves_their_errors() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def sleeps() -> None:
        await asyncio.sleep(3600)

    failed, sleeping = asyncio.create_task(fails()), asyncio.create_task(sleeps())
    await asyncio.sleep(0)
    await cancel_and_wait(failed, None, sleeping)
    assert failed.done() and isinstance(failed.exception(), ValueError)
    assert sleeping.cancelled()


def test_the_event_loop_is_uvloop_unless_asked_for_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    async def running() -> str:
        return eventloop.name_of(asyncio.get_running_loop())

    monkeypatch.delenv("LIVEBET_EVENT_LOOP", raising=False)
    assert eventloop.chosen() == "uvloop" and eventloop.run(running()) == "uvloop"
    monkeypatch.setenv("LIVEBET_EVENT_LOOP", "asyncio")
    assert eventloop.run(running()) == "asyncio"
    monkeypatch.setenv("LIVEBET_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="LIVEBET_EVENT_LOOP='trio'"):
        eventloop.chosen()


async def test_a_long_collection_once_the_heap_is_frozen_is_logged_with_its_generation(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pause is measured; once the heap is frozen (start-up over), one of LONG_GC_SECONDS
    or more is also logged, from the event loop rather than from inside the collection."""
    from mesh import service
    from mesh.settings import Settings

    app = service.ServiceApp(Settings(service="gc-0"))
    monkeypatch.setattr(service, "LONG_GC_SECONDS", 0.0)  # every collection is "long" here
    caplog.set_level(logging.WARNING, logger="mesh.service")
    app._watch_gc()
    try:
        gc.collect()  # start-up: measured, not logged
        await asyncio.sleep(0)
        app._frozen = True
        gc.collect(1)
        assert not [r for r in caplog.records if r.getMessage() == "long garbage collection pause"]
        await asyncio.sleep(0)  # the loop logs it
    finally:
        gc.callbacks.remove(app._gc_callback)
    logged = [r for r in caplog.records if r.getMessage() == "long garbage collection pause"]
    assert [r.__dict__["generation"] for r in logged] == [1]
    assert logged[0].__dict__["ms"] >= 0 and logged[0].__dict__["collected"] >= 0
    (family,) = app.metrics.gc_pause.collect()
    count = next(s.value for s in family.samples if s.name.endswith("_count"))
    assert count >= 2  # both collections measured (and any the test's allocations set off)
