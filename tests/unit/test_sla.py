"""SLA maths: percentiles from Prometheus histograms, summing replicas, windows, judging."""

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mesh import sla
from mesh.metrics import LATENCY_BUCKETS


def _replica(latencies: list[float], errors: int = 0, method: str = "/p.S/PlaceBet") -> str:
    reg = CollectorRegistry()
    h = Histogram(
        "livebet_rpc_duration_seconds", "", ["service", "method", "code"], buckets=LATENCY_BUCKETS, registry=reg
    )
    c = Counter("livebet_rpc_errors_total", "", ["service", "method", "code"], registry=reg)
    for v in latencies:
        h.labels("betting", method, "OK").observe(v)
    for _ in range(errors):
        h.labels("betting", method, "INTERNAL").observe(0.001)
        c.labels("betting", method, "INTERNAL").inc()
    c.labels("betting", method, "INVALID_ARGUMENT").inc(50)  # the client's fault: never counted
    return generate_latest(reg).decode()


def test_quantiles_interpolate_within_buckets_like_prometheus() -> None:
    h = sla.Histogram({0.01: 50.0, 0.02: 100.0, float("inf"): 100.0})
    assert h.quantile(0.5) == pytest.approx(0.01)
    assert h.quantile(0.75) == pytest.approx(0.015)
    assert h.quantile(0.99) == pytest.approx(0.0198)
    assert sla.Histogram().quantile(0.5) is None


def test_replicas_add_up_and_only_server_errors_count() -> None:
    sample = sla.parse([_replica([0.003] * 90), _replica([0.2] * 10, errors=2)])
    h = sample.histograms[("rpc", "/p.S/PlaceBet")]
    assert h.count == 102
    assert h.quantile(0.5) is not None and h.quantile(0.5) < 0.005  # type: ignore[operator]
    assert h.quantile(0.99) is not None and 0.1 < h.quantile(0.99) <= 0.25  # type: ignore[operator]
    assert sample.errors == {"/p.S/PlaceBet": 2.0}


def _config(p99: float, min_calls: int = 10, max_rate: float = 0.01) -> sla.Config:
    return sla.Config((sla.Objective("/p.S/PlaceBet", "rpc", {"p99": p99}),), max_rate, min_calls)


def test_a_breach_is_reported_and_a_quiet_api_is_not_judged() -> None:
    sample = sla.parse([_replica([0.003] * 95 + [0.2] * 5)])
    (ok,) = sla.evaluate(_config(p99=500), sample)
    (bad,) = sla.evaluate(_config(p99=25), sample)
    (quiet,) = sla.evaluate(_config(p99=25, min_calls=1000), sample)
    assert ok.breaches == () and ok.judged
    assert len(bad.breaches) == 1 and bad.breaches[0].startswith("p99 ")
    assert quiet.breaches == () and not quiet.judged
    assert "BREACH" in sla.render([bad]) and "too few calls" in sla.render([quiet])


def test_error_rate_objective() -> None:
    sample = sla.parse([_replica([0.001] * 95, errors=5)])
    (row,) = sla.evaluate(_config(p99=1000), sample)
    assert row.error_rate == pytest.approx(0.05)
    assert any(b.startswith("errors") for b in row.breaches)


def test_the_shipped_objectives_load() -> None:
    config = sla.load()
    names = {o.name for o in config.objectives}
    assert "/livebet.betting.v1.BettingService/PlaceBet" in names
    assert "livebet_odds_feed_to_send_seconds" in names
    assert config.interval_seconds > 0


def test_a_bad_objective_file_says_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "slo.toml"
    path.write_text('[rpc."/a/B"]\np42 = 1\n')
    with pytest.raises(ValueError, match="p42"):
        sla.load(path)


@pytest.fixture
def metrics_server() -> Iterator[tuple[str, list[str]]]:
    pages = [""]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages[0].encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}", pages
    server.shutdown()


def test_the_periodic_checker_judges_each_interval_on_its_own(metrics_server: tuple[str, list[str]]) -> None:
    target, pages = metrics_server
    checker = sla.Checker(_config(p99=25, min_calls=10), [target])
    pages[0] = _replica([0.3] * 50)  # a slow start...
    assert checker.round()[0].breaches and checker.breaches == 1
    pages[0] = _replica([0.3] * 50 + [0.002] * 100)  # ...then 100 fast calls: this window is fine
    (row,) = checker.round()
    assert row.calls == 100 and row.breaches == () and checker.breaches == 1
