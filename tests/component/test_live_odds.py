"""Live odds end to end on real NATS, Valkey and processes: feed → pricing engine → odds stream."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc
from livebet.odds.v1 import market_pb2, odds_service_pb2, odds_service_pb2_grpc, trader_service_pb2_grpc
from livebet.odds.v1 import trader_service_pb2 as ts

from feed.adapters.jetstream import PARTITIONS
from tests.component.test_feed_service import fixture, state
from tests.conftest import start_nats, start_valkey
from tests.helpers import Proc, admin_channel, feed_channel, metric, service_spec, wait_for


class Live:
    def __init__(self, feed: str, pricing: Proc, odds: Proc, redis_url: str = "") -> None:
        self.redis_url = redis_url
        self.feed = feed_service_pb2_grpc.FeedServiceStub(feed_channel(feed))
        self.pricing = pricing
        self.odds_target = odds.spec.health_target
        self.odds_metrics_port = odds.spec.env["LIVEBET_METRICS_PORT"]
        self.odds = odds_service_pb2_grpc.OddsServiceStub(grpc.insecure_channel(self.odds_target))

    def send(self, *events: ev.FeedEvent, provider: str = "push") -> None:
        self.feed.PublishBatch(fs.PublishBatchRequest(provider=provider, events=list(events)), timeout=10)

    def snapshot(self, match_id: str) -> market_pb2.MatchOdds | None:
        try:
            return self.odds.GetOddsSnapshot(odds_service_pb2.GetOddsSnapshotRequest(match_id=match_id), timeout=5).odds
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
            return None


@contextlib.contextmanager
def platform(root: Path, name: str, settings: dict[str, str]) -> Iterator[Live]:
    """NATS, Valkey and the feed, pricing and odds processes with ``settings``, stopped after."""
    n, r = start_nats(root, f"nats-{name}"), start_valkey(root, f"redis-{name}")
    env = {"LIVEBET_NATS_URL": n.url, "LIVEBET_REDIS_URL": r.url, **settings}
    procs = [
        Proc(service_spec("feed", "feed.server", env), root / f"{name}-feed.log").start(),
        Proc(service_spec("pricing", "pricing.server", env), root / f"{name}-pricing.log").start(),
        Proc(service_spec("odds", "pricing.stream_server", env), root / f"{name}-odds.log").start(),
    ]
    try:
        yield Live(procs[0].spec.health_target, procs[1], procs[2], r.url)
    finally:
        for p in reversed(procs):
            p.stop()
        r.proc.stop()
        n.proc.stop()


@pytest.fixture(scope="module")
def live(servers_root: Path) -> Iterator[Live]:
    settings = {
        "LIVEBET_FEED_PROVIDER_SILENCE_SECONDS": "120",
        "LIVEBET_FEED_MATCH_SILENCE_SECONDS": "3600",  # matches left in play by earlier tests stay open
        "LIVEBET_PRICING_PROVIDER_MODE": "prov",
        "LIVEBET_PRICING_RETIRE_AFTER_SECONDS": "2",  # ended matches are forgotten 2 s after their last event
        "LIVEBET_PRICING_CHECKPOINT_SECONDS": "1",  # every restart here starts from checkpoints
    }
    with platform(servers_root, "live", settings) as live:
        yield live


def goal(match_id: str, home: int, away: int, seq: int) -> ev.FeedEvent:
    e = ev.FeedEvent(event_id=f"push:{match_id}:goal:{seq}", provider="push", match_id=match_id, sequence=seq)
    e.goal.side, e.goal.score.home, e.goal.score.away = 1, home, away
    return e


def by_key(markets: object) -> dict[str, market_pb2.Market]:
    return {m.name: m for m in markets}  # type: ignore[attr-defined]


def test_a_goal_suspends_first_then_reprices_with_new_versions(live: Live) -> None:
    live.send(fixture("lo1"), state("lo1", 1, 0, 0, 20))
    wait_for(lambda: (s := live.snapshot("lo1")) is not None and s.minute == 20, 30, what="priced after the feed")
    image = live.snapshot("lo1")
    assert image is not None
    stream = live.odds.WatchOdds(
        odds_service_pb2.WatchOddsRequest(match_ids=["lo1"], heartbeat_interval_ms=500), timeout=30
    )
    first = next(stream)
    assert first.WhichOneof("message") == "image" and first.image.version == image.version
    home_before = float(by_key(first.image.markets)["1x2"].outcomes[0].odds.decimal)

    live.send(goal("lo1", 1, 0, 2))
    deltas = []
    for msg in stream:
        if msg.WhichOneof("message") == "delta":
            deltas.append(msg.delta)
        if len(deltas) == 2:
            break
    stream.cancel()
    suspension, reprice = deltas
    assert suspension.cause == "goal" and reprice.cause == "goal"
    assert suspension.version == image.version + 1 and reprice.version == image.version + 2
    assert suspension.previous_version == image.version
    assert {m.status for m in suspension.markets} == {market_pb2.MARKET_STATUS_SUSPENDED}
    after = by_key(reprice.markets)
    assert after["1x2"].status == market_pb2.MARKET_STATUS_OPEN
    assert float(after["1x2"].outcomes[0].odds.decimal) < home_before  # the home side scored
    assert after["total:0.5"].status == market_pb2.MARKET_STATUS_CLOSED  # decided
    assert reprice.HasField("feed_received_at")


def test_pre_match_and_in_play_events_are_timed_apart(live: Live) -> None:
    """The in-play objective (event → deltas published, p99 25 ms) times the events of matches
    under way; a fixture before kick-off goes in the pre-match histogram."""
    port = live.pricing.spec.env["LIVEBET_METRICS_PORT"]
    pre, in_play = (
        "livebet_pricing_prematch_event_to_publish_seconds_count",
        "livebet_pricing_event_to_publish_seconds_count",
    )
    before = metric(port, pre), metric(port, in_play)
    live.send(fixture("lo20"))
    wait_for(lambda: metric(port, pre) > before[0], 30, what="the fixture timed as pre-match")
    assert metric(port, in_play) == before[1]
    live.send(state("lo20", 1, 0, 0, 3))
    wait_for(lambda: metric(port, in_play) > before[1], 30, what="the kick-off timed as in play")
    assert metric(port, pre) == before[0] + 1


def test_an_idle_stream_gets_a_heartbeat_every_interval_and_nothing_else(live: Live) -> None:
    live.send(fixture("lh1"), state("lh1", 1, 0, 0, 10))
    # the state, not only the fixture (they may be priced in two batches: a delta would follow)
    wait_for(lambda: (s := live.snapshot("lh1")) is not None and s.minute == 10, 30, what="priced")
    stream = live.odds.WatchOdds(
        odds_service_pb2.WatchOddsRequest(match_ids=["lh1"], heartbeat_interval_ms=500), timeout=30
    )
    assert next(stream).WhichOneof("message") == "image"
    start, beats = time.monotonic(), []
    for msg in stream:
        assert msg.WhichOneof("message") == "heartbeat"  # nothing happens on this match
        assert msg.heartbeat.server_time.seconds > 0
        beats.append(time.monotonic() - start)
        if len(beats) == 4:
            break
    stream.cancel()
    gaps = [b - a for a, b in zip([0.0, *beats], beats, strict=False)]
    # at the interval (the process checks four times a second), never much sooner or later
    assert all(0.4 <= g <= 3.0 for g in gaps), gaps


def test_an_ended_match_leaves_the_live_list_and_keeps_its_snapshot(live: Live) -> None:
    live.send(fixture("le1"), state("le1", 1, 1, 0, 80))
    wait_for(lambda: (s := live.snapshot("le1")) is not None and s.minute == 80, 30, what="priced")

    def listed() -> set[str]:
        page = live.odds.ListLiveMatches(odds_service_pb2.ListLiveMatchesRequest(page_size=500), timeout=10)
        return {m.match_id for m in page.matches}

    assert "le1" in listed()
    end = state("le1", 2, 1, 0, 90)
    end.match_state.state.status = ev.MATCH_STATUS_ENDED
    live.send(end)
    wait_for(lambda: "le1" not in listed(), 30, what="gone from the live list")
    snap = live.snapshot("le1")  # still there by id, every market closed, not in play
    assert snap is not None and not snap.in_play and snap.score == "1-0"
    assert {m.status for m in snap.markets} == {market_pb2.MARKET_STATUS_CLOSED}
    stream = live.odds.WatchOdds(odds_service_pb2.WatchOddsRequest(heartbeat_interval_ms=500), timeout=30)
    for msg in stream:  # a stream of every match: images of the live ones only, then heartbeats
        if msg.WhichOneof("message") != "image":
            break
        assert msg.image.match_id != "le1"
    stream.cancel()


def test_an_ended_match_is_forgotten_by_the_engine_and_a_fixture_sent_again_carries_on(live: Live) -> None:
    import redis

    from pricing.live import codec

    live.send(fixture("lr1"), state("lr1", 1, 1, 0, 85))
    wait_for(lambda: (s := live.snapshot("lr1")) is not None and s.minute == 85, 30, what="priced")
    end = state("lr1", 2, 1, 0, 90)
    end.match_state.state.status = ev.MATCH_STATUS_ENDED
    live.send(end)
    wait_for(lambda: (s := live.snapshot("lr1")) is not None and not s.in_play, 30, what="ended")
    trader = trader_service_pb2_grpc.TraderServiceStub(admin_channel(live.pricing.spec.health_target))

    def forgotten() -> bool:
        try:
            request = ts.SuspendMatchRequest(request_id=f"lr1-{time.monotonic_ns()}", match_id="lr1")
            trader.SuspendMatch(request, metadata=(("x-livebet-account", "trader-1"),), timeout=5)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND, err
            return True
        return False

    wait_for(forgotten, 30, what="the engine forgetting the ended match")
    ended = live.snapshot("lr1")  # its last state stays for clients, for a week
    assert ended is not None and {m.status for m in ended.markets} == {market_pb2.MARKET_STATUS_CLOSED}
    r = redis.Redis.from_url(live.redis_url)
    assert 0 < r.ttl(codec.SNAP_KEY + "lr1") <= codec.ENDED_TTL_SECONDS
    live.send(state("lr1", 3, 2, 0, 91))  # an event of a forgotten match changes nothing
    again = fixture("lr1")
    again.event_id += ":again"  # the fixture sent again (a replayed match), not a duplicate
    live.send(again, state("lr1", 4, 0, 0, 1))
    wait_for(lambda: (s := live.snapshot("lr1")) is not None and s.minute == 1, 30, what="priced again")
    image = live.snapshot("lr1")
    assert image is not None and image.version > ended.version and image.score == "0-0"
    assert r.ttl(codec.SNAP_KEY + "lr1") == -1  # live again: no expiry


def test_a_client_resumes_from_its_version_without_a_gap(live: Live) -> None:
    live.send(fixture("lo2"), state("lo2", 1, 0, 0, 30))
    wait_for(lambda: (s := live.snapshot("lo2")) is not None and s.minute == 30, 30, what="priced")
    image = live.snapshot("lo2")
    assert image is not None
    live.send(goal("lo2", 0, 1, 2), state("lo2", 3, 0, 1, 31))
    wait_for(lambda: (s := live.snapshot("lo2")) is not None and s.minute == 31, 30, what="repriced")
    latest = live.snapshot("lo2")
    assert latest is not None
    stream = live.odds.WatchOdds(
        odds_service_pb2.WatchOddsRequest(match_ids=["lo2"], resume_from={"lo2": image.version}), timeout=30
    )
    versions = []
    for msg in stream:
        assert msg.WhichOneof("message") != "image"  # the deltas were still there: no image needed
        if msg.WhichOneof("message") == "delta":
            versions.append((msg.delta.previous_version, msg.delta.version))
        if versions and versions[-1][1] == latest.version:
            break
    stream.cancel()
    chain = [image.version] + [v for _, v in versions]
    assert [p for p, _ in versions] == chain[:-1]  # each delta continues the previous one
    old = live.odds.WatchOdds(
        odds_service_pb2.WatchOddsRequest(match_ids=["lo2"], resume_from={"lo2": 10**9}), timeout=30
    )
    first = next(old)
    old.cancel()
    assert first.WhichOneof("message") == "image" and first.resync  # an unknown version: a fresh image


def test_versions_never_go_backwards_across_an_engine_restart(live: Live) -> None:
    live.send(fixture("lo3"), state("lo3", 1, 0, 0, 10))
    wait_for(lambda: (s := live.snapshot("lo3")) is not None and s.minute == 10, 30, what="priced")
    before = live.snapshot("lo3")
    assert before is not None
    live.pricing.signal(signal.SIGTERM)
    assert live.pricing.popen is not None and live.pricing.popen.wait(20) == 0
    live.send(state("lo3", 2, 0, 0, 11))  # arrives while the engine is down
    live.pricing.start()
    wait_for(lambda: (s := live.snapshot("lo3")) is not None and s.minute == 11, 30, what="repriced after restart")
    after = live.snapshot("lo3")
    assert after is not None and after.version > before.version


def test_a_restarted_engine_starts_from_its_checkpoints_and_prices_on_from_the_state_they_hold(live: Live) -> None:
    live.send(fixture("lk1"), state("lk1", 1, 0, 0, 10), goal("lk1", 1, 0, 2), state("lk1", 3, 1, 0, 30))
    wait_for(lambda: (s := live.snapshot("lk1")) is not None and s.minute == 30, 30, what="priced")
    before = live.snapshot("lk1")
    assert before is not None and before.score == "1-0"
    live.pricing.signal(signal.SIGTERM)  # each share is checkpointed as it is given up
    assert live.pricing.popen is not None and live.pricing.popen.wait(20) == 0
    live.send(state("lk1", 4, 1, 0, 31))  # arrives while the engine is down
    stream = live.odds.WatchOdds(odds_service_pb2.WatchOddsRequest(match_ids=["lk1"]), timeout=60)
    assert next(stream).image.version == before.version
    live.pricing.start()
    wait_for(lambda: (s := live.snapshot("lk1")) is not None and s.minute == 31, 30, what="repriced after restart")
    # nothing replayed: every share came back from its checkpoint, the stream's earlier events of
    # this module (hundreds) untouched
    assert metric(live.pricing.spec.env["LIVEBET_METRICS_PORT"], "livebet_pricing_replayed_events_total") == 0
    first = next(m for m in stream if m.WhichOneof("message") == "delta").delta
    stream.cancel()
    # the checkpoint held the score: 1-0 again is a clock update, not a goal to suspend for
    assert first.cause == "clock" and first.previous_version == before.version
    assert {m.status for m in first.markets} != {market_pb2.MARKET_STATUS_SUSPENDED}


def test_provider_down_suspends_every_match_of_that_producer_until_it_recovers(live: Live) -> None:
    """The feed declares a silent producer down (tested in the feed's tests); here its
    ``provider_down`` event reaches the engine, which suspends that producer's matches only."""
    for m in ("lo4", "lo5"):
        live.send(fixture(m, "quiet"), state(m, 1, 0, 0, 5, "quiet"), provider="quiet")
    live.send(fixture("lo6"), state("lo6", 1, 0, 0, 5))
    for m in ("lo4", "lo5", "lo6"):
        wait_for(lambda m=m: (s := live.snapshot(m)) is not None and s.minute == 5, 30, what=f"{m} priced")

    def open_count(match_id: str) -> int:
        s = live.snapshot(match_id)
        return sum(1 for x in s.markets if x.status == market_pb2.MARKET_STATUS_OPEN) if s else -1

    down = ev.FeedEvent(event_id="quiet:provider_down:1", provider="quiet")
    down.provider_down.reason = "silent"
    live.send(down, provider="quiet")
    wait_for(lambda: open_count("lo4") == 0 and open_count("lo5") == 0, 30, what="the producer's matches suspended")
    assert open_count("lo6") > 0  # another producer's match is untouched
    back = ev.FeedEvent(event_id="quiet:snapshot_complete:1", provider="quiet")
    back.snapshot_complete.request_id = "1"
    live.send(back, provider="quiet")
    wait_for(lambda: open_count("lo4") > 0 and open_count("lo5") > 0, 30, what="reopened after recovery")


def test_trader_actions_take_effect_are_idempotent_and_survive_a_restart(live: Live) -> None:
    from livebet.common.v1 import common_pb2
    from livebet.odds.v1 import trader_service_pb2 as ts
    from livebet.odds.v1 import trader_service_pb2_grpc

    # every share held and rebuilt (the engine was restarted by earlier tests): a share still being
    # rebuilt answers UNAVAILABLE ("retry"), not NOT_FOUND, for a match of its own
    port = live.pricing.spec.env["LIVEBET_METRICS_PORT"]
    wait_for(lambda: metric(port, "livebet_pricing_shares_held") == PARTITIONS, 30, what="every share rebuilt")
    live.send(fixture("sim:7:1"), state("sim:7:1", 1, 0, 0, 15))
    wait_for(lambda: (s := live.snapshot("sim:7:1")) is not None and s.minute == 15, 30, what="priced")
    trader = trader_service_pb2_grpc.TraderServiceStub(admin_channel(live.pricing.spec.health_target))
    who = (("x-livebet-account", "trader-1"),)
    total = common_pb2.MarketRef(match_id="sim:7:1", market_type="total", market_key="total|total=2.5")
    suspend = ts.SuspendMarketRequest(request_id="t-1", market=total, reason="injury news")
    v1 = trader.SuspendMarket(suspend, metadata=who, timeout=5).version
    assert trader.SuspendMarket(suspend, metadata=who, timeout=5).version == v1  # the same request again
    with pytest.raises(grpc.RpcError) as err:
        trader.SuspendMarket(ts.SuspendMarketRequest(request_id="t-1", market=total, reason="other"), timeout=5)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:
        trader.SuspendMatch(ts.SuspendMatchRequest(request_id="t-2", match_id="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        trader.SetMargin(ts.SetMarginRequest(request_id="t-3", match_id="sim:7:1", margin="lots"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    margin = ts.SetMarginRequest(request_id="t-4", match_id="sim:7:1", market_type="1x2", margin="0.12")
    trader.SetMargin(margin, metadata=who, timeout=5)

    def quotes() -> dict[str, market_pb2.Market]:
        s = live.snapshot("sim:7:1")
        assert s is not None
        return by_key(s.markets)

    q = quotes()
    assert q["total:2.5"].status == market_pb2.MARKET_STATUS_SUSPENDED and q["total:2.5"].status_reason == "trader"
    assert q["total:3.5"].status == market_pb2.MARKET_STATUS_OPEN
    assert sum(1 / float(o.odds.decimal) for o in q["1x2"].outcomes) >= 1.12

    live.pricing.signal(signal.SIGTERM)
    assert live.pricing.popen is not None and live.pricing.popen.wait(20) == 0
    live.pricing.start()
    live.send(state("sim:7:1", 2, 0, 0, 16))
    wait_for(lambda: (s := live.snapshot("sim:7:1")) is not None and s.minute == 16, 30, what="repriced after restart")
    q = quotes()
    assert q["total:2.5"].status == market_pb2.MARKET_STATUS_SUSPENDED  # still suspended after the restart
    assert sum(1 / float(o.odds.decimal) for o in q["1x2"].outcomes) >= 1.12
    trader.ResumeMarket(ts.ResumeMarketRequest(request_id="t-5", market=total), metadata=who, timeout=5)
    assert quotes()["total:2.5"].status == market_pb2.MARKET_STATUS_OPEN


def test_a_client_that_never_reads_does_not_delay_others_and_is_conflated(live: Live) -> None:
    live.send(fixture("ls1"), state("ls1", 1, 0, 0, 1))
    wait_for(lambda: live.snapshot("ls1") is not None, 30, what="priced")
    target = live.odds_target
    # HTTP/2's basic 64 KiB window (no BDP probing, which lets the client library read megabytes
    # ahead for it): what it does not read holds the server back
    stuck_channel = grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)])
    stuck = odds_service_pb2_grpc.OddsServiceStub(stuck_channel).WatchOdds(
        odds_service_pb2.WatchOddsRequest(), timeout=60
    )
    next(stuck)  # its stream is open; from now on it never reads
    reader = odds_service_pb2_grpc.OddsServiceStub(grpc.insecure_channel(target)).WatchOdds(
        odds_service_pb2.WatchOddsRequest(match_ids=["ls1"], market_types=["1x2", "total"]), timeout=60
    )
    image = next(reader).image
    assert {m.ref.market_type for m in image.markets} == {"1x2", "total"}
    # the score goes 1-0, back to 0-0 (a goal ruled out), 1-0 ...: each update suspends and
    # reprices, two deltas however the engine batches them (clock-only updates of one match that
    # arrive together are priced once)
    live.send(*[state("ls1", i, i % 2, 0, 1 + i % 88) for i in range(2, 100)])
    wait_for(
        lambda: (s := live.snapshot("ls1")) is not None and s.version >= image.version + 150,
        60,
        what="the engine published the updates",
    )
    final = live.snapshot("ls1")
    assert final is not None
    have = image.version
    for msg in reader:
        if msg.WhichOneof("message") == "delta":
            assert msg.delta.previous_version <= have  # never a gap
            have = msg.delta.version
        elif msg.WhichOneof("message") == "image":
            have = msg.image.version
        if have >= final.version:
            break
    reader.cancel()
    conflations = metric(live.odds_metrics_port, "livebet_odds_conflations_total")
    assert conflations > 0  # the stuck client was conflated, not queued without bound
    stuck.cancel()


def test_a_client_that_stays_behind_is_dropped_then_resyncs_with_a_fresh_image(live: Live) -> None:
    live.send(fixture("lb1"), state("lb1", 1, 0, 0, 1))
    wait_for(lambda: live.snapshot("lb1") is not None, 30, what="priced")
    # a client with HTTP/2's basic 64 KiB window (no BDP probing, which would let its library buffer
    # megabytes for it): what it does not read soon holds the server back
    channel = grpc.insecure_channel(live.odds_target, options=[("grpc.http2.bdp_probe", 0)])
    stuck = odds_service_pb2_grpc.OddsServiceStub(channel).WatchOdds(
        odds_service_pb2.WatchOddsRequest(match_ids=["lb1"], heartbeat_interval_ms=60_000), timeout=120
    )
    first = next(stuck).image.version  # open; now it stops reading

    def drops() -> float:
        return metric(live.odds_metrics_port, "livebet_odds_stream_drops_total")

    before = drops()
    # far more updates than its queue (64) and merges (256) allow: it is let go of (each update
    # changes the score, so each is a suspension and a reprice, never folded into another)
    for start in range(2, 400, 100):
        live.send(*[state("lb1", i, i % 2, 0, 1 + i % 88) for i in range(start, start + 100)])
    wait_for(lambda: drops() > before, 60, what="the stuck stream dropped")
    wait_for(
        lambda: (s := live.snapshot("lb1")) is not None and s.version >= first + 600,
        60,
        what="the engine published the updates",
    )
    final = live.snapshot("lb1")
    assert final is not None
    # when it reads again: what was queued before the drop, then a fresh image marked resync
    for msg in stuck:
        if msg.WhichOneof("message") == "image" and msg.resync:
            assert msg.image.version >= final.version - 5  # the current state, not a backlog
            break
    stuck.cancel()


def test_provider_mode_publishes_the_providers_odds_re_margined(live: Live) -> None:
    from livebet.odds.v1 import trader_service_pb2 as ts
    from livebet.odds.v1 import trader_service_pb2_grpc

    from pricing.margin import remove_margin

    live.send(fixture("lo-prov", provider="prov"), provider="prov")
    e = ev.FeedEvent(event_id="prov:lo-prov:1", provider="prov", match_id="lo-prov", sequence=1)
    pm = e.provider_odds.markets.add(status=ev.PROVIDER_MARKET_STATUS_ACTIVE)
    pm.market.market_type = pm.market.market_key = "1x2"
    for outcome, odds in (("home", "2.00"), ("draw", "3.50"), ("away", "4.00")):
        pm.outcomes.add(outcome_id=outcome, active=True).odds.decimal = odds
    live.send(e, provider="prov")

    def priced() -> bool:
        s = live.snapshot("lo-prov")
        return s is not None and by_key(s.markets)["1x2"].status == market_pb2.MARKET_STATUS_OPEN

    wait_for(priced, 30, what="priced from the provider's odds")
    image = live.snapshot("lo-prov")
    assert image is not None
    one = by_key(image.markets)["1x2"]
    fair = remove_margin([2.0, 3.5, 4.0], "shin")
    assert [o.probability.decimal for o in one.outcomes] == [f"{p:.6f}" for p in fair]
    assert one.status == market_pb2.MARKET_STATUS_OPEN
    assert by_key(image.markets)["btts"].status == market_pb2.MARKET_STATUS_SUSPENDED  # not quoted by it

    trader = trader_service_pb2_grpc.TraderServiceStub(admin_channel(live.pricing.spec.health_target))
    with pytest.raises(grpc.RpcError) as err:
        trader.SetPricingMode(ts.SetPricingModeRequest(request_id="pm0", match_id="lo-prov"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reply = trader.SetPricingMode(
        ts.SetPricingModeRequest(request_id="pm1", match_id="lo-prov", mode=ts.PRICING_MODE_MODEL), timeout=10
    )
    after = live.snapshot("lo-prov")
    assert after is not None and after.version == reply.version
    assert by_key(after.markets)["btts"].status == market_pb2.MARKET_STATUS_OPEN  # the model prices everything


def test_a_fixture_of_a_match_forgotten_before_a_restart_carries_on_from_its_redis_version(live: Live) -> None:
    """After a restart the engine knows only the matches in the stream it replays; a match whose
    events have aged out of it but whose snapshot is still in Redis must not start again at 1."""
    import asyncio

    import redis
    from livebet.odds.v1 import market_pb2 as mp

    from mesh.deps import RedisDependency
    from pricing.live import codec
    from pricing.server import Runner, Share

    stored = mp.MatchOdds(match_id="lr2", version=41).SerializeToString()
    redis.Redis.from_url(live.redis_url).set(codec.SNAP_KEY + "lr2", stored)

    async def main() -> list[int]:
        dep = RedisDependency(live.redis_url)
        await dep.start()
        await dep.wait_ready(10)
        try:
            runner, share = Runner(None, dep, "t"), Share(0)  # type: ignore[arg-type]  # no NATS needed here
            versions = []
            for e in (fixture("lr2"), state("lr2", 1, 0, 0, 3), fixture("lr3")):
                await runner.remember_version(share, e)
                versions += [d.version for d in share.engine.apply(e)]
            return versions
        finally:
            await dep.close()

    v = asyncio.run(main())
    assert v[:2] == [42, 43] and v[2] == 1  # lr3 has no snapshot: a new match starts at 1


def test_a_fixture_whose_odds_cannot_be_fitted_does_not_stop_its_share(live: Live) -> None:
    """Pre-match odds with a book under 100 % (an arbitrage, or a provider's mistake) cannot be
    de-margined by Shin's method. The match is priced from its odds made fair proportionally, and
    the other matches of its share go on being priced (the event must not stop the share)."""
    from feed.adapters.jetstream import partition_of

    bad = fixture("lf1")
    o = bad.fixture_change.fixture.pre_match_odds
    o.home.decimal, o.draw.decimal, o.away.decimal = "2.2", "3.8", "4.2"  # 1/2.2 + 1/3.8 + 1/4.2 = 0.96
    same_share = next(f"lf{k}" for k in range(2, 10_000) if partition_of(f"lf{k}") == partition_of("lf1"))
    live.send(bad, state("lf1", 1, 0, 0, 3))
    live.send(fixture(same_share), state(same_share, 1, 0, 0, 4))
    wait_for(lambda: (s := live.snapshot(same_share)) is not None and s.minute == 4, 30, what="the share goes on")
    wait_for(lambda: (s := live.snapshot("lf1")) is not None and s.minute == 3, 30, what="the odd match priced")
    snap = live.snapshot("lf1")
    assert snap is not None
    home = next(m for m in snap.markets if m.ref.market_key == "1x2").outcomes[0]
    assert 1.0 < float(home.odds.decimal) < 2.2  # the favourite stays the favourite, under the margin


def test_bad_watch_and_snapshot_requests_are_invalid_argument_with_the_field(live: Live) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    def refused(call: object) -> tuple[grpc.StatusCode, str, list[str]]:
        with pytest.raises(grpc.RpcError) as err:
            call()  # type: ignore[operator]
        status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
        fields = []
        for d in status.details if status else []:
            info = error_details_pb2.BadRequest()
            d.Unpack(info)
            fields += [v.field for v in info.field_violations]
        return err.value.code(), err.value.details(), fields  # type: ignore[attr-defined]

    def watch(**kw: object) -> object:
        return lambda: next(live.odds.WatchOdds(odds_service_pb2.WatchOddsRequest(**kw), timeout=10))  # type: ignore[arg-type]

    cases = {
        "match_ids": watch(match_ids=[f"m{i}" for i in range(501)]),
        "market_types": watch(match_ids=["lo1"], market_types=["1x2", "totl"]),
        "resume_from": watch(match_ids=["lo1"], resume_from={"other": 3}),
        "conflation_interval_ms": watch(conflation_interval_ms=3_600_000),
    }
    for field, call in cases.items():
        code, message, fields = refused(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == [field], (field, message)
        assert field in message
    code, message, fields = refused(watch(match_ids=[""], market_types=["nope"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["match_ids", "market_types"]
    assert "'nope'" in message and "total" in message  # what was wrong, and what would be right
    snapshot = odds_service_pb2.GetOddsSnapshotRequest(match_id="")
    code, _, fields = refused(lambda: live.odds.GetOddsSnapshot(snapshot, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["match_id"]


def test_a_client_watching_every_match_may_resume_from_many(live: Live) -> None:
    """The web app watches every match and sends a version for each match it has seen."""
    live.send(fixture("lw1"), state("lw1", 1, 0, 0, 7))
    wait_for(lambda: (s := live.snapshot("lw1")) is not None and s.minute == 7, 30, what="priced")
    seen = {f"gone-{i}": 5 for i in range(2_000)}
    stream = live.odds.WatchOdds(odds_service_pb2.WatchOddsRequest(resume_from=seen), timeout=10)
    first = next(stream)
    stream.cancel()
    assert first.WhichOneof("message") == "image"


def test_a_match_its_provider_dropped_leaves_the_live_lists_suspended_a_fixture_to_come_stays(
    servers_root: Path,
) -> None:
    """A match in play that nothing is heard of any more (the provider dropped it) is abandoned
    after LIVEBET_PRICING_ABANDON_AFTER_SECONDS: the engine suspends what it still offered (even
    with the feed's own silence rule out of the way, as here) and forgets it, and it leaves
    ListLiveMatches; its snapshot stays readable. A fixture whose kick-off is a day away stays."""
    settings = {
        "LIVEBET_FEED_PROVIDER_SILENCE_SECONDS": "3600",
        "LIVEBET_FEED_MATCH_SILENCE_SECONDS": "3600",  # the feed does not stop betting on it here
        "LIVEBET_PRICING_RETIRE_AFTER_SECONDS": "2",  # a sweep each second
        "LIVEBET_PRICING_ABANDON_AFTER_SECONDS": "3",
    }
    with platform(servers_root, "abandon", settings) as live:
        later = fixture("ab2")
        later.fixture_change.fixture.start_time.FromSeconds(int(time.time()) + 24 * 3600)
        live.send(fixture("ab1"), state("ab1", 1, 0, 0, 20), later)

        def listed() -> set[str]:
            reply = live.odds.ListLiveMatches(odds_service_pb2.ListLiveMatchesRequest(page_size=50), timeout=5)
            return {m.match_id for m in reply.matches}

        wait_for(lambda: listed() == {"ab1", "ab2"}, 30, what="both priced and listed")
        before = live.snapshot("ab1")
        assert before is not None
        assert any(m.status == market_pb2.MARKET_STATUS_OPEN for m in before.markets)
        wait_for(lambda: listed() == {"ab2"}, 30, what="the silent match off the list")
        after = live.snapshot("ab1")
        assert after is not None and after.version > before.version
        assert not any(m.status == market_pb2.MARKET_STATUS_OPEN for m in after.markets)
        assert "abandoned" in {m.status_reason for m in after.markets}
        port = live.pricing.spec.env["LIVEBET_METRICS_PORT"]
        assert metric(port, "livebet_pricing_matches_abandoned_total") == 1
        assert "ab2" in listed()
