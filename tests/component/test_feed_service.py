"""The feed service on a real nats-server with JetStream: ingest, dedupe, ordering, bad input,
provider down, NATS restart with nothing acknowledged lost, restart of the service itself."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest
from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc

from mesh import infra
from tests.conftest import Server, start_nats
from tests.helpers import Proc, feed_channel, health, metric, service_spec, wait_for
from tests.shared_data import UOF, needs

SAMPLES = UOF


@pytest.fixture(scope="module")
def feed_env(servers_root: Path) -> Iterator[tuple[Server, Proc, str]]:
    n = start_nats(servers_root, "nats-feed")
    spec = service_spec(
        "feed", "feed.server", {"LIVEBET_NATS_URL": n.url, "LIVEBET_FEED_PROVIDER_SILENCE_SECONDS": "1"}
    )
    proc = Proc(spec, servers_root / "feed-svc.log").start()
    yield n, proc, spec.health_target
    proc.stop()
    n.proc.stop()


def _stub(target: str) -> feed_service_pb2_grpc.FeedServiceStub:
    return feed_service_pb2_grpc.FeedServiceStub(feed_channel(target))


def fixture(match_id: str, provider: str = "push") -> ev.FeedEvent:
    e = ev.FeedEvent(event_id=f"{provider}:{match_id}:fixture", provider=provider, match_id=match_id)
    f = e.fixture_change.fixture
    f.match_id = match_id
    f.home.name, f.away.name = "Home FC", "Away FC"
    f.pre_match_odds.home.decimal, f.pre_match_odds.draw.decimal, f.pre_match_odds.away.decimal = "2.1", "3.4", "3.6"
    return e


def state(match_id: str, seq: int, home: int, away: int, minute: int, provider: str = "push") -> ev.FeedEvent:
    e = ev.FeedEvent(event_id=f"{provider}:{match_id}:state:{seq}", provider=provider, match_id=match_id, sequence=seq)
    s = e.match_state.state
    s.match_id, s.status, s.score.home, s.score.away, s.clock.minute = (
        match_id,
        ev.MATCH_STATUS_LIVE,
        home,
        away,
        minute,
    )
    return e


async def _stream_messages(url: str) -> list[tuple[dict[str, str], ev.FeedEvent]]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info("FEED")
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg("FEED", seq)
        out.append((dict(msg.headers or {}), ev.FeedEvent.FromString(msg.data or b"")))
    await nc.close()
    return out


def stored(url: str) -> list[tuple[dict[str, str], ev.FeedEvent]]:
    return asyncio.run(_stream_messages(url))


def test_a_batch_is_stored_once_even_when_sent_twice(feed_env: tuple[Server, Proc, str]) -> None:
    n, _, target = feed_env
    stub = _stub(target)
    batch = fs.PublishBatchRequest(provider="push", events=[fixture("m1"), state("m1", 1, 0, 0, 1)])
    first = stub.PublishBatch(batch, timeout=10)
    assert (first.accepted, first.duplicates) == (2, 0)
    again = stub.PublishBatch(batch, timeout=10)
    assert (again.accepted, again.duplicates) == (0, 2)
    ids = [e.event_id for _, e in stored(n.url) if e.match_id == "m1"]
    assert ids == ["push:m1:fixture", "push:m1:state:1"]
    got = stub.GetMatchState(fs.GetMatchStateRequest(match_id="m1"), timeout=5)
    assert got.fixture.home.name == "Home FC" and got.state.clock.minute == 1


def test_gaps_are_marked_and_stale_state_is_dropped_but_results_are_kept(feed_env: tuple[Server, Proc, str]) -> None:
    n, _, target = feed_env
    stub = _stub(target)
    stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[fixture("m2"), state("m2", 1, 0, 0, 5)]))
    r = stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[state("m2", 4, 1, 0, 30)]))
    assert r.accepted == 1
    settle = ev.FeedEvent(event_id="push:m2:settle:old", provider="push", match_id="m2", sequence=2)
    settle.bet_settlement.certainty = ev.SETTLEMENT_CERTAINTY_LIVE
    r = stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[state("m2", 3, 0, 0, 20), settle]))
    assert (r.accepted, r.skipped) == (1, 1)  # the old state is dropped, the settlement kept
    msgs = [(h, e) for h, e in stored(n.url) if e.match_id == "m2"]
    gap_header = next(h for h, e in msgs if e.event_id == "push:m2:state:4").get("Livebet-Gap")
    assert gap_header == "2"
    assert "push:m2:state:3" not in [e.event_id for _, e in msgs]
    assert "push:m2:settle:old" in [e.event_id for _, e in msgs]
    now = stub.GetMatchState(fs.GetMatchStateRequest(match_id="m2"))
    assert (now.state.score.home, now.state.clock.minute) == (1, 30)


def test_bad_input_is_refused_whole_with_the_right_status(feed_env: tuple[Server, Proc, str]) -> None:
    n, _, target = feed_env
    stub = _stub(target)
    before = len(stored(n.url))
    cases = [
        (
            fs.PublishBatchRequest(provider="push", events=[state("nope", 1, 0, 0, 1)]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "unknown match id",
        ),
        (
            fs.PublishBatchRequest(provider="push", events=[fixture("m3"), ev.FeedEvent(event_id="x", match_id="m3")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no payload",
        ),
        (
            fs.PublishBatchRequest(
                provider="push", raw_messages=[fs.RawMessage(format=fs.RAW_FORMAT_UOF_XML, payload=b"<odds_change")]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not well-formed",
        ),
        (
            fs.PublishBatchRequest(provider="push", events=[fixture("m4", provider="other")]),
            grpc.StatusCode.PERMISSION_DENIED,
            "claims provider",
        ),
        (
            fs.PublishBatchRequest(provider="", events=[fixture("m5")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "provider is required",
        ),
    ]
    future = state("m1", 99, 0, 0, 1)
    future.produced_at.FromSeconds(int(time.time()) + 3600)
    cases.append(
        (fs.PublishBatchRequest(provider="push", events=[future]), grpc.StatusCode.INVALID_ARGUMENT, "in the future")
    )
    for request, code, text in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.PublishBatch(request, timeout=5)
        assert err.value.code() == code, text
        assert text in (err.value.details() or ""), err.value.details()
    assert len(stored(n.url)) == before  # nothing half-published


def test_the_ingest_stream_counts_bad_items_and_keeps_going(feed_env: tuple[Server, Proc, str]) -> None:
    _, _, target = feed_env
    stub = _stub(target)
    batches = [
        fs.IngestRequest(provider="push", events=[fixture("s1"), state("s1", 1, 0, 0, 1)]),
        fs.IngestRequest(provider="push", raw_messages=[fs.RawMessage(format=fs.RAW_FORMAT_UOF_XML, payload=b"<x")]),
        fs.IngestRequest(provider="push", events=[state("unknown", 1, 0, 0, 1), state("s1", 2, 1, 0, 10)]),
    ]
    r = stub.Ingest(iter(batches), timeout=10)
    assert (r.accepted, r.skipped) == (3, 2)


@needs(SAMPLES)
def test_raw_uof_messages_are_normalised_and_published(feed_env: tuple[Server, Proc, str]) -> None:
    _n, _, target = feed_env
    stub = _stub(target)
    fixture_doc = (SAMPLES / "fixture-0.xml").read_bytes()
    odds = (SAMPLES / "odds_change-0.xml").read_bytes().replace(b"sr:match:123", b"sr:match:18001015")
    raw = [fs.RawMessage(format=fs.RAW_FORMAT_UOF_XML, payload=p) for p in (fixture_doc, odds)]
    r = stub.PublishBatch(fs.PublishBatchRequest(provider="sportradar", raw_messages=raw), timeout=10)
    assert r.accepted == 2
    got = stub.GetMatchState(fs.GetMatchStateRequest(match_id="sr:match:18001015"))
    assert got.fixture.home.name == "Ajax Amsterdam"
    assert (got.state.score.home, got.state.score.away, got.state.clock.minute) == (2, 2, 75)


def test_list_matches_pages(feed_env: tuple[Server, Proc, str]) -> None:
    _, _, target = feed_env
    stub = _stub(target)
    stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[fixture(f"page-{i}") for i in range(5)]))
    seen, token = [], ""
    while True:
        page = stub.ListMatches(fs.ListMatchesRequest(page_size=2, page_token=token))
        assert len(page.matches) <= 2
        seen += [m.fixture.match_id for m in page.matches]
        token = page.next_page_token
        if not token:
            break
    assert {f"page-{i}" for i in range(5)} <= set(seen)
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    with pytest.raises(grpc.RpcError) as err:
        stub.ListMatches(fs.ListMatchesRequest(page_token="%%%"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_silent_provider_is_declared_down(feed_env: tuple[Server, Proc, str]) -> None:
    n, _, target = feed_env
    stub = _stub(target)
    alive = ev.FeedEvent(event_id="quiet:alive:1", provider="quiet")
    alive.provider_alive.subscribed = True
    stub.PublishBatch(fs.PublishBatchRequest(provider="quiet", events=[alive]))

    def downs() -> list[ev.FeedEvent]:
        return [e for _, e in stored(n.url) if e.WhichOneof("payload") == "provider_down" and e.provider == "quiet"]

    wait_for(lambda: len(downs()) == 1, 15, interval=0.3, what="provider_down for a provider silent for 1 s")
    # it comes back and ends its recovery with snapshot_complete; silent again, it goes down again
    back = ev.FeedEvent(event_id="quiet:alive:2", provider="quiet")
    back.provider_alive.subscribed = True
    done = ev.FeedEvent(event_id="quiet:snapshot:1", provider="quiet")
    done.snapshot_complete.request_id = "1"
    stub.PublishBatch(fs.PublishBatchRequest(provider="quiet", events=[back, done]))
    wait_for(lambda: len(downs()) == 2, 15, interval=0.3, what="a second provider_down after recovery and silence")
    first, second = downs()
    assert second.provider_down.last_seen.ToMilliseconds() > first.provider_down.last_seen.ToMilliseconds()


def test_a_silent_match_of_a_live_provider_gets_a_bet_stop_and_a_restarted_feed_does_not_repeat_it(
    servers_root: Path,
) -> None:
    """Its provider sends alive messages, the match nothing for longer than
    LIVEBET_FEED_MATCH_SILENCE_SECONDS: the feed stores a bet_stop for it in FEED (which the
    engine turns into suspended markets), once. A feed restarted on the stream sends no second."""
    n = start_nats(servers_root, "nats-silence")
    env = {"LIVEBET_NATS_URL": n.url, "LIVEBET_FEED_MATCH_SILENCE_SECONDS": "1"}
    procs = [Proc(service_spec("feed", "feed.server", env), servers_root / "feed-silence.log").start()]
    try:
        stub = _stub(procs[0].spec.health_target)
        live, pre = state("quiet-1", 1, 0, 0, 10, "steady"), fixture("quiet-2", "steady")
        live.match_state.state.period = ev.PERIOD_FIRST_HALF
        stub.PublishBatch(fs.PublishBatchRequest(provider="steady", events=[fixture("quiet-1", "steady"), live, pre]))

        def stops() -> list[ev.FeedEvent]:
            return [e for _, e in stored(n.url) if e.WhichOneof("payload") == "bet_stop"]

        def keep_alive(seconds: float) -> None:
            for i in range(int(seconds / 0.25)):
                alive = ev.FeedEvent(event_id=f"steady:alive:{time.monotonic()}:{i}", provider="steady")
                alive.provider_alive.subscribed = True
                stub.PublishBatch(fs.PublishBatchRequest(provider="steady", events=[alive]), timeout=10)
                time.sleep(0.25)

        keep_alive(3.0)
        (stop,) = stops()  # the match in play; not the one that has not kicked off
        assert (stop.match_id, stop.provider) == ("quiet-1", "steady")
        assert stop.bet_stop.reason == "no event for this match for more than 1s"
        port = procs[0].spec.env["LIVEBET_METRICS_PORT"]
        assert metric(port, "livebet_feed_liveness_events_total") == 1  # the one bet_stop
        procs[0].stop()
        procs.append(Proc(service_spec("feed", "feed.server", env), servers_root / "feed-silence-2.log").start())
        stub = _stub(procs[1].spec.health_target)
        wait_for(lambda: health(procs[1].spec.health_target) == "SERVING", 30, what="the second feed SERVING")
        keep_alive(3.0)
        assert len(stops()) == 1  # the rebuilt feed knows it was sent for this silence
    finally:
        for p in procs:
            p.stop()
        n.proc.stop()


def test_a_feed_replica_that_is_not_sent_a_providers_batches_does_not_declare_it_down(servers_root: Path) -> None:
    """Two feed replicas; a provider's batches all go to the first. The second rebuilt the
    provider and its match from the stream, then hears of them only through what the first tells
    it each second: neither declares the provider down nor the match silent while the first is fed.
    Once the provider goes silent, it is declared down."""
    n = start_nats(servers_root, "nats-two-feeds")
    env = {
        "LIVEBET_NATS_URL": n.url,
        "LIVEBET_FEED_PROVIDER_SILENCE_SECONDS": "2",
        "LIVEBET_FEED_MATCH_SILENCE_SECONDS": "2",
    }
    first = Proc(service_spec("feed", "feed.server", env), servers_root / "feed-one.log").start()
    procs = [first]
    try:
        stub = _stub(first.spec.health_target)
        live = state("two-1", 1, 0, 0, 10, "busy")
        live.match_state.state.period = ev.PERIOD_FIRST_HALF
        stub.PublishBatch(fs.PublishBatchRequest(provider="busy", events=[fixture("two-1", "busy"), live]))
        second = Proc(service_spec("feed", "feed.server", env), servers_root / "feed-two.log").start()
        procs.append(second)
        wait_for(lambda: health(second.spec.health_target) == "SERVING", 30, what="the second feed SERVING")
        known = _stub(second.spec.health_target).GetMatchState(fs.GetMatchStateRequest(match_id="two-1"))
        assert known.state.clock.minute == 10  # rebuilt from the stream

        def warnings() -> list[ev.FeedEvent]:
            return [e for _, e in stored(n.url) if e.WhichOneof("payload") in ("provider_down", "bet_stop")]

        for i in range(2, 26):  # 6 s of a live match: a state every 0.25 s, all to the first replica
            stub.PublishBatch(fs.PublishBatchRequest(provider="busy", events=[state("two-1", i, 0, 0, 10 + i, "busy")]))
            time.sleep(0.25)
        assert warnings() == []
        wait_for(lambda: any(e.WhichOneof("payload") == "provider_down" for e in warnings()), 15, what="provider_down")
    finally:
        for p in procs:
            p.stop()
        n.proc.stop()


def test_watch_events_streams_what_is_published(feed_env: tuple[Server, Proc, str]) -> None:
    _, _, target = feed_env
    stub = _stub(target)
    stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[fixture("w1")]))
    stream = stub.WatchEvents(fs.WatchEventsRequest(match_ids=["w1"]), timeout=15)
    time.sleep(0.5)  # the watch is subscribed
    stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[state("w1", 1, 0, 0, 3)]))
    first = next(stream)
    assert first.event.event_id == "push:w1:state:1" and first.stream_sequence > 0
    stream.cancel()


def test_nats_restart_loses_nothing_acknowledged_and_refuses_while_down(
    feed_env: tuple[Server, Proc, str], servers_root: Path
) -> None:
    n, _, target = feed_env
    stub = _stub(target)
    stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[fixture("r1")]))
    acked = []
    for i in range(1, 21):
        stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[state("r1", i, 0, 0, i)]), timeout=10)
        acked.append(f"push:r1:state:{i}")
    n.proc.kill()
    wait_for(lambda: health(target) == "NOT_SERVING", 20, what="feed NOT_SERVING without NATS")
    with pytest.raises(grpc.RpcError) as err:
        stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[state("r1", 21, 0, 0, 21)]), timeout=15)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    restarted = Proc(infra.nats(n.data_dir, n.port, infra.free_port()), servers_root / "nats-feed-2.log").start()
    n.proc = restarted
    wait_for(lambda: health(target) == "SERVING", 30, what="feed SERVING after NATS returned")
    ids = {e.event_id for _, e in stored(n.url)}
    assert set(acked) <= ids
    r = stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[state("r1", 21, 0, 0, 21)]), timeout=10)
    assert r.accepted + r.duplicates == 1


def test_a_restarted_feed_rebuilds_its_matches_from_the_stream(
    feed_env: tuple[Server, Proc, str], servers_root: Path
) -> None:
    _n, proc, target = feed_env
    _stub(target).PublishBatch(
        fs.PublishBatchRequest(provider="push", events=[fixture("keep"), state("keep", 1, 2, 1, 70)])
    )
    proc.signal(signal.SIGTERM)
    assert proc.popen is not None and proc.popen.wait(20) == 0
    proc.start()
    got = _stub(target).GetMatchState(fs.GetMatchStateRequest(match_id="keep"), timeout=5)
    assert (got.state.score.home, got.state.score.away) == (2, 1)
    r = _stub(target).PublishBatch(fs.PublishBatchRequest(provider="push", events=[state("keep", 1, 2, 1, 70)]))
    assert r.accepted == 0  # a replay after restart is still recognised
