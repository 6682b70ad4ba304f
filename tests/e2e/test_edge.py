"""Through Envoy: gRPC and gRPC-web reach every service; CORS; replicas balanced and health-checked."""

import json
import struct
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh import topology
from mesh.supervisor import REPO_ROOT
from tests.e2e.conftest import Mesh

SERVICES = [s.name for s in topology.load().services]
BUF = str(Path(sys.executable).parent / "buf")


def test_status_reports_every_process_healthy(mesh: Mesh) -> None:
    code, status = mesh.status()
    assert code == 0, status
    names = {p["name"] for p in status["processes"]}
    assert {
        "nats",
        "redis",
        "postgres",
        "envoy",
        "feed-0",
        "pricing-0",
        "odds-0",
        "odds-1",
        "betting-0",
        "settlement-0",
    } <= names
    assert all(p["health"] in ("SERVING", "READY") for p in status["processes"])


@pytest.mark.parametrize("service", SERVICES)
def test_grpc_health_of_each_service_through_envoy(mesh: Mesh, service: str) -> None:
    with grpc.insecure_channel(mesh.edge) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), metadata=(("x-livebet-service", service),), timeout=5
        )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def _grpc_web(edge: str, path: str, message: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """One gRPC-web call over plain HTTP/1.1, as a browser makes it. Returns (message, trailers)."""
    body = b"\x00" + struct.pack(">I", len(message)) + message
    req = urllib.request.Request(
        f"http://{edge}{path}",
        data=body,
        method="POST",
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw, headers = resp.read(), resp.headers
    except urllib.error.HTTPError as err:  # the edge refused it (401/403/429): status in the headers
        raw, headers = err.read(), err.headers
    header_status = headers.get("grpc-status")
    header_message = urllib.parse.unquote(headers.get("grpc-message", ""))
    payload, trailers, i = b"", {}, 0
    while i < len(raw):
        flag, length = raw[i], struct.unpack(">I", raw[i + 1 : i + 5])[0]
        chunk = raw[i + 5 : i + 5 + length]
        if flag & 0x80:
            for line in chunk.decode().strip().split("\r\n"):
                k, v = line.split(":", 1)
                trailers[k.strip().lower()] = v.strip()
        else:
            payload = chunk
        i += 5 + length
    if header_status is not None:  # a trailers-only response puts the status in the headers
        trailers.setdefault("grpc-status", header_status)
        trailers.setdefault("grpc-message", header_message)
    return payload, trailers


@pytest.mark.parametrize("service", SERVICES)
def test_grpc_web_over_http1_reaches_each_service(mesh: Mesh, service: str) -> None:
    payload, trailers = _grpc_web(
        mesh.edge,
        "/grpc.health.v1.Health/Check",
        health_pb2.HealthCheckRequest().SerializeToString(),
        {"x-livebet-service": service},
    )
    assert trailers["grpc-status"] == "0"
    assert health_pb2.HealthCheckResponse.FromString(payload).status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_errors_keep_their_status_through_envoy_grpc_web(mesh: Mesh) -> None:
    from livebet.betting.v1 import betting_service_pb2
    from livebet.odds.v1 import odds_service_pb2

    request = odds_service_pb2.GetOddsSnapshotRequest(match_id="no-such-match").SerializeToString()
    _, trailers = _grpc_web(mesh.edge, "/livebet.odds.v1.OddsService/GetOddsSnapshot", request, {})
    assert trailers["grpc-status"] == str(grpc.StatusCode.NOT_FOUND.value[0])
    assert "no-such-match" in trailers.get("grpc-message", "")
    request = betting_service_pb2.GetBetRequest(bet_id="b1").SerializeToString()  # no account: refused
    _, trailers = _grpc_web(mesh.edge, "/livebet.betting.v1.BettingService/GetBet", request, {})
    assert trailers["grpc-status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0])


def test_cors_preflight_is_answered_for_the_web_app_origin(mesh: Mesh) -> None:
    req = urllib.request.Request(
        f"http://{mesh.edge}/livebet.odds.v1.OddsService/WatchOdds",
        method="OPTIONS",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-grpc-web",
        },
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert "x-grpc-web" in resp.headers["access-control-allow-headers"]


def _buf_curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BUF, "curl", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("service", SERVICES)
def test_buf_curl_reaches_health_with_reflection_over_grpc_and_grpc_web(mesh: Mesh, service: str) -> None:
    header = f"x-livebet-service: {service}"
    url = f"http://{mesh.edge}/grpc.health.v1.Health/Check"
    for protocol in ("grpc", "grpcweb"):
        out = _buf_curl(
            "--protocol", protocol, "--http2-prior-knowledge", "-H", header, "--reflect-header", header, url
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"status": "SERVING"}


def test_buf_curl_grpc_web_over_http1_with_the_schema_image(mesh: Mesh) -> None:
    out = _buf_curl(
        "--protocol",
        "grpcweb",
        "--schema",
        "gen/livebet.binpb",
        "-H",
        "x-livebet-service: betting",
        f"http://{mesh.edge}/grpc.health.v1.Health/Check",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": "SERVING"}


def test_replicas_run_side_by_side_and_envoy_health_checks_both(mesh: Mesh) -> None:
    admin = mesh.state()["envoy_admin"]
    with urllib.request.urlopen(f"http://{admin}/clusters?format=json", timeout=5) as resp:
        clusters = json.loads(resp.read())["cluster_statuses"]
    odds = next(c for c in clusters if c["name"] == "odds")
    running = {p["port"] for p in mesh.state()["processes"] if p["service"] == "odds"}
    assert len(running) == 2 and len(odds["host_statuses"]) == 3  # two replicas and the spare slot
    for host in odds["host_statuses"]:
        healthy = not host["health_status"].get("failed_active_health_check", False)
        assert healthy == (host["address"]["socket_address"]["port_value"] in running)


def test_simulated_matches_are_live_through_envoy(mesh: Mesh) -> None:
    """make run's simulator → feed → JetStream → the feed's match list, read through Envoy."""
    from livebet.feed.v1 import event_pb2 as ev
    from livebet.feed.v1 import feed_service_pb2 as fs
    from livebet.feed.v1 import feed_service_pb2_grpc

    from tests.helpers import wait_for

    def live() -> list[fs.MatchSummary]:
        with grpc.insecure_channel(mesh.edge) as channel:
            stub = feed_service_pb2_grpc.FeedServiceStub(channel)
            page = stub.ListMatches(fs.ListMatchesRequest(page_size=50), timeout=5)
        return [m for m in page.matches if m.state.status == ev.MATCH_STATUS_LIVE and m.state.clock.minute > 0]

    wait_for(lambda: len(live()) >= 1, 60, interval=0.5, what="a live simulated match")
    match = live()[0]
    assert match.fixture.match_id.startswith("sim:")
    assert match.fixture.home.name and match.fixture.pre_match_odds.home.decimal


def test_simulated_matches_are_priced_and_streamed_through_envoy(mesh: Mesh) -> None:
    """simulator → feed → pricing engine → NATS + Redis → odds stream tier → Envoy → client."""
    from livebet.odds.v1 import market_pb2, odds_service_pb2, odds_service_pb2_grpc

    from tests.helpers import wait_for

    def live_ids() -> list[str]:
        with grpc.insecure_channel(mesh.edge) as channel:
            stub = odds_service_pb2_grpc.OddsServiceStub(channel)
            page = stub.ListLiveMatches(odds_service_pb2.ListLiveMatchesRequest(page_size=20), timeout=5)
        return [m.match_id for m in page.matches]

    wait_for(lambda: bool(live_ids()), 60, interval=0.5, what="a priced simulated match")
    match_id = live_ids()[0]
    with grpc.insecure_channel(mesh.edge) as channel:
        stub = odds_service_pb2_grpc.OddsServiceStub(channel)
        stream = stub.WatchOdds(
            odds_service_pb2.WatchOddsRequest(match_ids=[match_id], heartbeat_interval_ms=500), timeout=30
        )
        first = next(stream)
        assert first.WhichOneof("message") == "image"
        # priced: markets offered (open, or suspended while a hold lasts: a possible goal, a VAR
        # check, a penalty can be on at any moment of a match), all closed only once it is over
        offered = (market_pb2.MARKET_STATUS_OPEN, market_pb2.MARKET_STATUS_SUSPENDED)
        statuses = sorted({market_pb2.MarketStatus.Name(m.status) for m in first.image.markets})
        assert any(m.status in offered for m in first.image.markets) or first.image.minute >= 90, (
            f"{match_id} v{first.image.version} minute {first.image.minute}: {statuses}"
        )
        kinds = {next(stream).WhichOneof("message") for _ in range(3)}
        stream.cancel()
    assert kinds <= {"delta", "heartbeat", "image"}
