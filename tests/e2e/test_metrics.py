"""Every service's /metrics moves when traffic flows through the running platform."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from livebet.odds.v1 import odds_service_pb2, odds_service_pb2_grpc

from mesh.supervisor import REPO_ROOT
from tests.e2e.conftest import Mesh
from tests.e2e.test_edge_auth import _deposit, _metric, bearer, place, token
from tests.helpers import wait_for


def total(mesh: Mesh, service: str, name: str, **labels: str) -> float:
    """A metric summed over every replica of ``service``."""
    return sum(
        _metric(p["metrics"], name, **labels)
        for p in mesh.state()["processes"]
        if p["service"] == service and p["metrics"]
    )


def test_feed_pricing_and_settlement_metrics_move_with_the_simulated_matches(mesh: Mesh) -> None:
    before = {
        "stored": total(mesh, "feed", "livebet_feed_events_total", outcome="stored"),
        "store_lag": total(mesh, "feed", "livebet_feed_store_lag_seconds_count"),
        "priced": total(mesh, "pricing", "livebet_pricing_events_total"),
        "published": total(mesh, "pricing", "livebet_pricing_event_to_publish_seconds_count"),
        "settled_events": total(mesh, "settlement", "livebet_settlement_event_seconds_count"),
    }

    def moved() -> bool:
        return all(
            total(mesh, svc, name) > before[key]
            for key, svc, name in (
                ("stored", "feed", "livebet_feed_events_total"),
                ("store_lag", "feed", "livebet_feed_store_lag_seconds_count"),
                ("priced", "pricing", "livebet_pricing_events_total"),
                ("published", "pricing", "livebet_pricing_event_to_publish_seconds_count"),
                ("settled_events", "settlement", "livebet_settlement_event_seconds_count"),
            )
        )

    wait_for(moved, 30, interval=0.5, what="feed, pricing and settlement metrics moving")
    # the engine replicas hold the 16 shares between them, and report their consumers' lag
    wait_for(lambda: total(mesh, "pricing", "livebet_pricing_shares_held") == 16, 30, what="16 shares held")
    wait_for(
        lambda: 'consumer="settlement"' in _scrape(mesh, "settlement"), 15, what="settlement consumer lag reported"
    )
    assert "livebet_jetstream_consumer_pending" in _scrape(mesh, "pricing")


def test_stream_metrics_follow_a_watching_client(mesh: Mesh) -> None:
    odds = odds_service_pb2_grpc.OddsServiceStub(grpc.insecure_channel(mesh.edge))
    base_subs = total(mesh, "odds", "livebet_odds_subscribers")
    base_sent = total(mesh, "odds", "livebet_odds_feed_to_send_seconds_count")
    stream = odds.WatchOdds(odds_service_pb2.WatchOddsRequest(heartbeat_interval_ms=500), timeout=60)
    deadline = time.monotonic() + 30
    seen_subscriber = False
    for msg in stream:
        seen_subscriber = seen_subscriber or total(mesh, "odds", "livebet_odds_subscribers") > base_subs
        if seen_subscriber and total(mesh, "odds", "livebet_odds_feed_to_send_seconds_count") > base_sent:
            break
        assert time.monotonic() < deadline, "no delta reached the client with its feed time measured"
        assert msg.WhichOneof("message") in ("image", "delta", "heartbeat")
    stream.cancel()
    assert seen_subscriber
    wait_for(lambda: total(mesh, "odds", "livebet_odds_subscribers") == base_subs, 10, what="subscriber gone")


def test_bet_metrics_count_placed_and_refused_bets(mesh: Mesh) -> None:
    t = token(mesh, f"metrics-{uuid.uuid4().hex[:6]}")
    placed_before = total(mesh, "betting", "livebet_bets_total", outcome="placed_pending") + total(
        mesh, "betting", "livebet_bets_total", outcome="placed_accepted"
    )
    refused_before = total(mesh, "betting", "livebet_bets_total", reason="REJECT_REASON_INSUFFICIENT_FUNDS")
    with pytest.raises(grpc.RpcError):
        place(mesh, bearer(t))  # no money yet
    _deposit(mesh, t, 10_000)
    place(mesh, bearer(t))
    placed = total(mesh, "betting", "livebet_bets_total", outcome="placed_pending") + total(
        mesh, "betting", "livebet_bets_total", outcome="placed_accepted"
    )
    assert placed == placed_before + 1
    assert total(mesh, "betting", "livebet_bets_total", reason="REJECT_REASON_INSUFFICIENT_FUNDS") == refused_before + 1
    assert "livebet_bets_pending" in _scrape(mesh, "betting")


def _scrape(mesh: Mesh, service: str) -> str:
    import urllib.request

    p = next(p for p in mesh.state()["processes"] if p["service"] == service and p["metrics"])
    with urllib.request.urlopen(f"http://{p['metrics']}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _sla(mesh: Mesh, slo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", "sla", "--data-dir", str(mesh.data_dir), "--slo", str(slo)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_mesh_sla_fails_when_an_objective_is_below_the_measured_latency(mesh: Mesh, tmp_path: Path) -> None:
    odds = odds_service_pb2_grpc.OddsServiceStub(grpc.insecure_channel(mesh.edge))
    for _ in range(30):
        odds.ListLiveMatches(odds_service_pb2.ListLiveMatchesRequest(page_size=5), timeout=5)
    method = "/livebet.odds.v1.OddsService/ListLiveMatches"
    generous, strict = tmp_path / "generous.toml", tmp_path / "strict.toml"
    generous.write_text(f'[check]\nmin_calls = 10\n[rpc."{method}"]\np50 = 60000\np99 = 60000\n')
    strict.write_text(f'[check]\nmin_calls = 10\n[rpc."{method}"]\np50 = 0.0001\np99 = 0.0001\n')
    ok = _sla(mesh, generous)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ListLiveMatches" in ok.stdout and " ok" in ok.stdout
    bad = _sla(mesh, strict)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "BREACH: p50" in bad.stdout and "p99" in bad.stdout


def test_every_metric_the_rules_and_dashboard_use_is_exported(mesh: Mesh) -> None:
    import re

    from mesh import observability, sla, topology

    exported: set[str] = set()
    for p in mesh.state()["processes"]:
        if p["metrics"]:
            exported |= set(re.findall(r"(?m)^# TYPE (\w+) ", _scrape_target(p["metrics"])))
    used = set()
    for e in observability.expressions(observability.render(topology.load(), sla.load())):
        used |= set(re.findall(r"\blivebet_[a-z0-9_]+", e))
    base = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in used}
    missing = {n for n in base if n not in exported and n + "_total" not in exported}
    missing = {n for n in missing if not any(x.startswith(n) for x in exported)}
    assert not missing, f"rules/dashboard use metrics no service exports: {sorted(missing)}"


def _scrape_target(target: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as resp:
        return str(resp.read().decode())
