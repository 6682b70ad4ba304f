"""Per-RPC metrics, reflection and JSON logs of a real service process."""

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from livebet.feed.v1 import feed_service_pb2, feed_service_pb2_grpc

from mesh.infra import ProcessSpec
from tests.conftest import Server
from tests.helpers import Proc, health, service_spec, wait_for


@pytest.fixture(scope="module")
def feed(servers_root: Path, nats_server: Server) -> Iterator[tuple[ProcessSpec, Proc]]:
    spec = service_spec("feed", "feed.server", {"LIVEBET_NATS_URL": nats_server.url})
    proc = Proc(spec, servers_root / "feed-obs.log").start()
    yield spec, proc
    proc.stop()


def _metrics(spec: ProcessSpec) -> dict[str, float]:
    port = spec.env["LIVEBET_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_rpc_latency_and_errors_are_counted_per_method_and_code(feed: tuple[ProcessSpec, Proc]) -> None:
    spec, _ = feed
    for _ in range(3):
        assert health(spec.health_target) == "SERVING"
    with grpc.insecure_channel(spec.health_target) as channel, pytest.raises(grpc.RpcError) as err:
        feed_service_pb2_grpc.FeedServiceStub(channel).GetMatchState(
            feed_service_pb2.GetMatchStateRequest(match_id="m"), timeout=2
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    err_key = (
        'livebet_rpc_errors_total{code="NOT_FOUND",method="/livebet.feed.v1.FeedService/GetMatchState",service="feed"}'
    )
    # context.abort() sends the status before it raises, so the client can hear NOT_FOUND a
    # moment before the interceptor's finally block counts it: wait for the count, then check it
    wait_for(lambda: err_key in _metrics(spec), timeout=5, what="the NOT_FOUND counted")
    m = _metrics(spec)
    ok = 'livebet_rpc_duration_seconds_count{code="OK",method="/grpc.health.v1.Health/Check",service="feed"}'
    assert m[ok] >= 3
    assert m[err_key] == 1
    assert m['livebet_health_serving{service="feed"}'] == 1


def test_reflection_lists_the_service_and_describes_any_livebet_contract(feed: tuple[ProcessSpec, Proc]) -> None:
    spec, _ = feed
    with grpc.insecure_channel(spec.health_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reqs = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="livebet.betting.v1.BettingService"),
        ]
        listed, described = list(stub.ServerReflectionInfo(iter(reqs), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {"livebet.feed.v1.FeedService", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_logs_are_json_lines_with_the_service_name(feed: tuple[ProcessSpec, Proc]) -> None:
    _, proc = feed
    lines = [json.loads(line) for line in proc.log_path.read_text().splitlines() if line.startswith("{")]
    listening = [entry for entry in lines if entry["msg"] == "listening"]
    assert listening
    assert listening[0]["service"] == "feed-0"
    assert {"ts", "level", "logger"} <= listening[0].keys()


def test_the_heap_is_frozen_once_serving_and_collector_pauses_are_measured(feed: tuple[ProcessSpec, Proc]) -> None:
    """Once SERVING, the objects of the service's code and wiring are out of the collector's reach
    (gc.freeze), so a full collection no longer walks them; every collection's pause is counted."""
    spec, proc = feed
    wait_for(lambda: health(spec.health_target) == "SERVING", 30, what="feed SERVING")
    m = _metrics(spec)
    assert m["livebet_gc_frozen_objects"] > 20_000  # a service's modules alone are tens of thousands
    assert m["livebet_gc_pause_seconds_count"] > 0  # the collection before the freeze, at least
    assert m['livebet_gc_pause_seconds_bucket{le="+Inf"}'] == m["livebet_gc_pause_seconds_count"]
    frozen = [json.loads(line) for line in proc.log_path.read_text().splitlines() if '"heap frozen"' in line]
    assert len(frozen) == 1 and frozen[0]["objects"] == m["livebet_gc_frozen_objects"]
