"""Traces across processes: a feed event's trace continues through NATS into the pricing engine
and into the odds stream process, on real NATS, Valkey and service processes (each writing its
spans to a file); and the NATS propagation itself with the SDK's in-memory exporter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc
from livebet.odds.v1 import odds_service_pb2, odds_service_pb2_grpc

from tests.component.test_feed_service import fixture, state
from tests.conftest import start_nats, start_valkey
from tests.helpers import Proc, feed_channel, service_spec, wait_for


def _spans(folder: Path) -> list[dict[str, Any]]:
    out = []
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def _service(span: dict[str, Any]) -> str:
    return str(span["resource"]["attributes"]["service.name"])


@pytest.fixture(scope="module")
def traced(servers_root: Path) -> Iterator[tuple[Path, str, str]]:
    n, r = start_nats(servers_root, "nats-trace"), start_valkey(servers_root, "redis-trace")
    folder = servers_root / "traces"
    folder.mkdir()
    procs = []
    for name, module in (("feed", "feed.server"), ("pricing", "pricing.server"), ("odds", "pricing.stream_server")):
        env = {
            "LIVEBET_NATS_URL": n.url,
            "LIVEBET_REDIS_URL": r.url,
            "LIVEBET_FEED_PROVIDER_SILENCE_SECONDS": "120",
            "LIVEBET_FEED_MATCH_SILENCE_SECONDS": "3600",
            "LIVEBET_TRACE_FILE": str(folder / f"{name}.jsonl"),
        }
        procs.append(Proc(service_spec(name, module, env), servers_root / f"trace-{name}.log").start())
    yield folder, procs[0].spec.health_target, procs[2].spec.health_target
    for p in reversed(procs):
        p.stop()
    r.proc.stop()
    n.proc.stop()


def test_a_feed_event_is_one_trace_through_pricing_and_the_stream(traced: tuple[Path, str, str]) -> None:
    folder, feed_target, odds_target = traced
    feed = feed_service_pb2_grpc.FeedServiceStub(feed_channel(feed_target))
    odds = odds_service_pb2_grpc.OddsServiceStub(grpc.insecure_channel(odds_target))
    feed.PublishBatch(fs.PublishBatchRequest(provider="push", events=[fixture("t1"), state("t1", 1, 0, 0, 10)]))

    def priced() -> bool:
        try:
            return (
                odds.GetOddsSnapshot(odds_service_pb2.GetOddsSnapshotRequest(match_id="t1"), timeout=5).odds.minute
                == 10
            )
        except grpc.RpcError:
            return False

    wait_for(priced, 30, what="t1 priced")
    stream = odds.WatchOdds(odds_service_pb2.WatchOddsRequest(match_ids=["t1"]), timeout=30)
    assert next(stream).WhichOneof("message") == "image"
    feed.PublishBatch(fs.PublishBatchRequest(provider="push", events=[state("t1", 2, 1, 0, 20)]))  # a goal
    assert next(stream).WhichOneof("message") == "delta"
    stream.cancel()

    def chain() -> list[dict[str, Any]] | None:
        spans = _spans(folder)
        by_id = {s["context"]["span_id"]: s for s in spans}
        for fan in (s for s in spans if s["name"] == "odds.fanout"):
            price = by_id.get(fan.get("parent_id") or "")
            if price is None or price["name"] != "pricing.price":
                continue
            rpc = by_id.get(price.get("parent_id") or "")
            if rpc is not None and rpc["name"].endswith("FeedService/PublishBatch"):
                return [rpc, price, fan]
        return None

    wait_for(lambda: chain() is not None, 15, interval=0.3, what="a feed -> pricing -> stream trace in the span files")
    rpc, price, fan = chain() or []
    assert {s["context"]["trace_id"] for s in (rpc, price, fan)} == {rpc["context"]["trace_id"]}
    assert [_service(s) for s in (rpc, price, fan)] == ["feed", "pricing", "odds"]  # three processes
    assert rpc["kind"] == "SpanKind.SERVER" and fan["attributes"]["match_id"] == "t1"


async def test_nats_headers_carry_the_trace_with_the_in_memory_exporter(servers_root: Path) -> None:
    import nats
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mesh import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    monkey = pytest.MonkeyPatch()
    monkey.setattr(tracing, "_configured", True)
    monkey.setattr(tracing, "_tracer", tracer)
    n = start_nats(servers_root, "nats-trace-mem")
    try:
        nc = await nats.connect(n.url)
        sub = await nc.subscribe("t.x")
        with tracing.span("producer"):
            await nc.publish("t.x", b"hello", headers=tracing.inject({}))
        msg = await sub.next_msg(timeout=5)
        with tracing.span("consumer", tracing.extract(msg.headers)):
            pass
        await nc.close()
    finally:
        monkey.undo()
        n.proc.stop()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    producer, consumer = spans["producer"], spans["consumer"]
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert trace.get_current_span().get_span_context().is_valid is False  # nothing leaked
    # with tracing off (the default), nothing is added to messages
    assert tracing.inject({}) == {}


@pytest.fixture(scope="module")
def traced_bets(servers_root: Path) -> Iterator[tuple[Any, Path]]:
    from tests.component.betting_env import start

    spans = servers_root / "bet-spans.jsonl"  # every process appends its spans to this one file
    yield from ((env, spans) for env in start(servers_root, "trace-bets", {"LIVEBET_TRACE_FILE": str(spans)}, True))


def test_a_bet_and_its_settlement_continue_their_traces_through_the_outbox(traced_bets: tuple[Any, Path]) -> None:
    from livebet.betting.v1 import bet_pb2

    from tests.component.betting_env import deposit, place, priced, selection
    from tests.component.test_settlement import final

    env, path = traced_bets
    env.send(fixture("tb1"))
    priced(env, "tb1")
    deposit(env, "tracer", 10_000, "tr-d1")
    odds, version = env.price("tb1", "1x2", "home")
    bet = place(env, "tracer", "tr-b1", [selection("tb1", "1x2", "home", odds, version)], 500)
    assert bet.status == bet_pb2.BET_STATUS_ACCEPTED  # pre-match: no delay

    def spans() -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def chain(first: str, publish_parent: str) -> list[dict[str, Any]] | None:
        by_id = {s["context"]["span_id"]: s for s in spans()}
        for pub in (s for s in by_id.values() if s["name"] == "betting.outbox.publish"):
            parent = by_id.get(pub.get("parent_id") or "")
            if parent is not None and parent["name"].endswith(publish_parent):
                root = parent
                while root.get("parent_id") and root["parent_id"] in by_id:
                    root = by_id[root["parent_id"]]
                if root["name"].endswith(first):
                    return [root, parent, pub]
        return None

    # the bet: PlaceBet (betting) -> its outbox event published to BETS, one trace
    wait_for(lambda: chain("BettingService/PlaceBet", "BettingService/PlaceBet") is not None, 15, what="bet trace")
    # the result: PublishBatch (feed) -> settlement.apply (settlement) -> the settled event published
    env.send(final("tb1", 2, 1, 0))
    wait_for(lambda: chain("FeedService/PublishBatch", "settlement.apply") is not None, 20, what="settlement trace")
    root, apply, pub = chain("FeedService/PublishBatch", "settlement.apply") or []
    assert root["context"]["trace_id"] == apply["context"]["trace_id"] == pub["context"]["trace_id"]
    assert {_service(root), _service(apply), _service(pub)} == {"feed", "settlement", "betting"}
