"""The Prometheus and Grafana files: generated, parseable PromQL, thresholds from the SLOs."""

import json
import re

import promql_parser
import yaml

from mesh import observability, sla, topology


def _files() -> dict[str, str]:
    return observability.render(topology.load(), sla.load())


def test_the_committed_files_are_the_generated_ones() -> None:
    """Regenerate with `python -m mesh observability` after changing the topology or the SLOs."""
    for name, text in _files().items():
        assert (observability.OUT_DIR / name).read_text() == text, name


def test_every_expression_is_valid_promql() -> None:
    exprs = observability.expressions(_files())
    assert len(exprs) > 20
    for e in exprs:
        promql_parser.parse(e)  # raises ValueError on a syntax error


def test_the_dashboard_uses_only_recorded_series_that_the_rules_define() -> None:
    files = _files()
    recorded = {r["record"] for g in yaml.safe_load(files["rules.yml"])["groups"] for r in g["rules"] if "record" in r}
    used = {
        name
        for p in json.loads(files["grafana-dashboard.json"])["panels"]
        for t in p["targets"]
        for name in re.findall(r"livebet:[a-z0-9_:]+", t["expr"])
    }
    assert used and used <= recorded


def test_alert_thresholds_are_the_slos() -> None:
    alerts = {
        r["alert"]: r["expr"]
        for g in yaml.safe_load(_files()["rules.yml"])["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert alerts["PlaceBetLatencySLO"].endswith("> 0.025")  # slo.toml: PlaceBet p99 = 25 ms
    assert {"ServerErrorRate", "FeedSilent", "ConsumerLag", "DependencyDown", "ServiceDown"} <= set(alerts)
    scrape = yaml.safe_load(_files()["prometheus.yml"])
    jobs = {j["job_name"] for j in scrape["scrape_configs"]}
    assert {s.name for s in topology.load().services} | {"envoy"} == jobs
