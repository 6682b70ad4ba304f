"""The operators' files, generated so they never drift from the code: a Prometheus scrape config
for the local topology, recording and alert rules whose thresholds are the SLOs of
``mesh/slo.toml``, and a Grafana dashboard built on those rules.

``python -m mesh observability -o mesh/observability`` writes ``prometheus.yml``, ``rules.yml``
and ``grafana-dashboard.json`` (committed; a test checks they are what this module generates).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mesh import sla
from mesh.topology import Topology

SERVER_ERROR_CODES = "|".join(sorted(sla.SERVER_ERRORS))
OUT_DIR = Path(__file__).with_name("observability")


def prometheus_config(t: Topology) -> dict[str, Any]:
    """Scrape every service replica's /metrics and Envoy's admin stats, every 5 s."""
    jobs = []
    for s in t.services:
        jobs.append(
            {
                "job_name": s.name,
                "static_configs": [
                    {
                        "targets": [f"{t.host}:{p}" for p in s.metrics_ports],
                        "labels": {"livebet_service": s.name},
                    }
                ],
            }
        )
    jobs.append(
        {
            "job_name": "envoy",
            "metrics_path": "/stats/prometheus",
            "static_configs": [{"targets": [f"{t.host}:{t.admin_port}"]}],
        }
    )
    return {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": jobs,
    }


def _p99(metric: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.99, sum by ({group}) (rate({metric}_bucket[5m])))"


def rules(config: sla.Config) -> dict[str, Any]:
    recording = [
        {"record": "livebet:rpc_latency_seconds:p99_5m", "expr": _p99("livebet_rpc_duration_seconds", "method")},
        {
            "record": "livebet:rpc_latency_seconds:p50_5m",
            "expr": "histogram_quantile(0.5, sum by (le, method) (rate(livebet_rpc_duration_seconds_bucket[5m])))",
        },
        {
            "record": "livebet:rpc_server_error_ratio:5m",
            "expr": f'sum by (method) (rate(livebet_rpc_errors_total{{code=~"{SERVER_ERROR_CODES}"}}[5m]))'
            " / sum by (method) (rate(livebet_rpc_duration_seconds_count[5m]))",
        },
        {"record": "livebet:feed_to_client_seconds:p99_5m", "expr": _p99("livebet_odds_feed_to_send_seconds")},
        {"record": "livebet:event_to_publish_seconds:p99_5m", "expr": _p99("livebet_pricing_event_to_publish_seconds")},
        {
            "record": "livebet:prematch_event_to_publish_seconds:p99_5m",
            "expr": _p99("livebet_pricing_prematch_event_to_publish_seconds"),
        },
        {
            "record": "livebet:feed_events:rate1m",
            "expr": 'sum by (provider) (rate(livebet_feed_events_total{outcome="stored"}[1m]))',
        },
        {"record": "livebet:bets:rate1m", "expr": "sum by (outcome, reason) (rate(livebet_bets_total[1m]))"},
    ]
    alerts: list[dict[str, Any]] = []
    for o in config.objectives:
        if "p99" not in o.targets_ms:
            continue
        seconds = o.targets_ms["p99"] / 1000
        if o.kind == "rpc":
            expr = f'livebet:rpc_latency_seconds:p99_5m{{method="{o.name}"}} > {seconds:g}'
            name = o.name.rsplit("/", 1)[-1]
        else:
            expr = f"{_p99(o.name)} > {seconds:g}"
            name = o.name.removeprefix("livebet_").removesuffix("_seconds").title().replace("_", "")
        alerts.append(
            {
                "alert": f"{name}LatencySLO",
                "expr": expr,
                "for": "5m",
                "labels": {"severity": "page"},
                "annotations": {"summary": f"{o.name}: p99 above {o.targets_ms['p99']:g} ms for 5 minutes"},
            }
        )
    alerts += [
        {
            "alert": "ServerErrorRate",
            "expr": f"livebet:rpc_server_error_ratio:5m > {config.max_error_rate:g}",
            "for": "5m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "{{ $labels.method }}: more than %g%% server errors" % (config.max_error_rate * 100)
            },
        },
        {
            "alert": "FeedSilent",
            "expr": 'sum(rate(livebet_feed_events_total{outcome="stored"}[2m])) == 0',
            "for": "2m",
            "labels": {"severity": "page"},
            "annotations": {"summary": "no feed event stored for 2 minutes: every live price is going stale"},
        },
        {
            "alert": "ConsumerLag",
            "expr": "max by (service, consumer) (livebet_jetstream_consumer_pending) > 1000",
            "for": "2m",
            "labels": {"severity": "page"},
            "annotations": {"summary": "{{ $labels.consumer }} is {{ $value }} messages behind the FEED stream"},
        },
        {
            "alert": "Redeliveries",
            "expr": "max by (service, consumer) (livebet_jetstream_consumer_redelivered) > 0",
            "for": "5m",
            "labels": {"severity": "ticket"},
            "annotations": {"summary": "{{ $labels.consumer }} keeps getting messages again (a failing handler?)"},
        },
        {
            "alert": "PricingEventsFailed",
            "expr": "sum(increase(livebet_pricing_events_failed_total[10m])) > 0",
            "labels": {"severity": "ticket"},
            "annotations": {"summary": "the engine skipped feed events it failed on (their ids are in its log)"},
        },
        {
            "alert": "PricingCheckpointsFailing",
            "expr": 'sum(increase(livebet_pricing_checkpoints_total{outcome="failed"}[15m])) > 0',
            "for": "15m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "engine checkpoints are not being written: a restart or takeover replays more of the stream"
            },
        },
        {
            "alert": "SettlementEventsParked",
            "expr": "sum(increase(livebet_settlement_events_failed_total[15m])) > 0",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "settlement parked FEED events it cannot apply: their bets stay open until "
                "they are applied again (python -m settlement.failed)"
            },
        },
        {
            "alert": "OpenBetsOnSilentMatches",
            "expr": "max(livebet_settlement_stale_open_bets) > 0",
            "for": "10m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "accepted bets wait on matches with no state update for hours (a feed that dropped "
                "them): nothing will settle them; settle or void their markets (SettlementService)"
            },
        },
        {
            "alert": "DecidedBetsLeftOpen",
            "expr": "sum(increase(livebet_settlement_swept_bets_total[1h])) > 0",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "the settlement sweep found bets of several legs decided yet left open and settled "
                "them (settlement logs: 'settled by the sweep'): a settlement path leaves bets open; look into it"
            },
        },
        {
            "alert": "BetDecisionsFailing",
            "expr": "sum(increase(livebet_bets_decide_failures_total[5m])) > 0",
            "for": "5m",
            "labels": {"severity": "page"},
            "annotations": {"summary": "a pending bet's decision keeps failing: the player's bet stays pending"},
        },
        {
            "alert": "BetEventsRefused",
            "expr": "sum(increase(livebet_bets_outbox_publish_failures_total[5m])) > 0",
            "for": "5m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "JetStream keeps refusing an outbox event (its id is in the betting log): watchers of "
                "that bet do not see it change"
            },
        },
        {
            "alert": "DependencyDown",
            "expr": "min by (service, dependency) (livebet_dependency_up) == 0",
            "for": "1m",
            "labels": {"severity": "page"},
            "annotations": {"summary": "{{ $labels.service }} lost {{ $labels.dependency }}"},
        },
        {
            "alert": "ServiceDown",
            "expr": 'up{job!="envoy"} == 0',
            "for": "1m",
            "labels": {"severity": "page"},
            "annotations": {"summary": "{{ $labels.instance }} ({{ $labels.job }}) cannot be scraped"},
        },
        {
            "alert": "PendingBetsPilingUp",
            "expr": "sum(livebet_bets_pending) > 1000",
            "for": "2m",
            "labels": {"severity": "page"},
            "annotations": {"summary": "{{ $value }} bets wait past their in-play delay: the decider is behind"},
        },
    ]
    return {
        "groups": [
            {"name": "livebet-recording", "interval": "15s", "rules": recording},
            {"name": "livebet-slo", "rules": alerts},
        ]
    }


def _panel(pid: int, title: str, exprs: list[tuple[str, str]], unit: str, x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": legend} for i, (e, legend) in enumerate(exprs)],
    }


def dashboard() -> dict[str, Any]:
    specs: list[tuple[str, list[tuple[str, str]], str]] = [
        (
            "PlaceBet latency (SLO p99 ≤ 25 ms)",
            [
                ('livebet:rpc_latency_seconds:p99_5m{method="/livebet.betting.v1.BettingService/PlaceBet"}', "p99"),
                ('livebet:rpc_latency_seconds:p50_5m{method="/livebet.betting.v1.BettingService/PlaceBet"}', "p50"),
            ],
            "s",
        ),
        (
            "Feed event → client and → engine publish (p99)",
            [
                ("livebet:feed_to_client_seconds:p99_5m", "to client"),
                ("livebet:event_to_publish_seconds:p99_5m", "engine published (in play)"),
                ("livebet:prematch_event_to_publish_seconds:p99_5m", "engine published (pre-match)"),
            ],
            "s",
        ),
        ("RPC latency p99 by method", [("livebet:rpc_latency_seconds:p99_5m", "{{method}}")], "s"),
        ("Server error ratio by method", [("livebet:rpc_server_error_ratio:5m", "{{method}}")], "percentunit"),
        ("Feed events stored per second", [("livebet:feed_events:rate1m", "{{provider}}")], "ops"),
        (
            "JetStream consumer lag",
            [
                ("livebet_jetstream_consumer_pending", "{{consumer}} pending"),
                ("livebet_jetstream_consumer_redelivered", "{{consumer}} redelivered"),
            ],
            "short",
        ),
        (
            "Odds streams",
            [
                ("sum(livebet_odds_subscribers)", "subscribers"),
                ("max(livebet_odds_queue_depth_max)", "deepest queue"),
                ("sum(rate(livebet_odds_conflations_total[1m]))", "conflations/s"),
            ],
            "short",
        ),
        (
            "Bets",
            [("livebet:bets:rate1m", "{{outcome}} {{reason}}"), ("sum(livebet_bets_pending)", "pending")],
            "short",
        ),
        (
            "Settlement",
            [
                ("sum(rate(livebet_settlement_bets_settled_total[1m]))", "bets settled/s"),
                (
                    "histogram_quantile(0.99, sum by (le) (rate(livebet_settlement_event_seconds_bucket[5m])))",
                    "p99 per result",
                ),
            ],
            "short",
        ),
        (
            "Dependencies up",
            [("min by (service, dependency) (livebet_dependency_up)", "{{service}} {{dependency}}")],
            "short",
        ),
    ]
    panels = [
        _panel(i + 1, title, exprs, unit, 12 * (i % 2), 8 * (i // 2)) for i, (title, exprs, unit) in enumerate(specs)
    ]
    return {
        "uid": "livebet-overview",
        "title": "livebet overview",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "tags": ["livebet"],
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": panels,
    }


def render(t: Topology, config: sla.Config) -> dict[str, str]:
    """File name → text."""
    head = "# Generated by `python -m mesh observability` from mesh/topology.toml and mesh/slo.toml.\n"
    return {
        "prometheus.yml": head + yaml.safe_dump(prometheus_config(t), sort_keys=False),
        "rules.yml": head + yaml.safe_dump(rules(config), sort_keys=False, width=200),
        "grafana-dashboard.json": json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n",
    }


def expressions(files: dict[str, str]) -> list[str]:
    """Every PromQL expression in the rules and the dashboard."""
    out = [r["expr"] for g in yaml.safe_load(files["rules.yml"])["groups"] for r in g["rules"]]
    out += [t["expr"] for p in json.loads(files["grafana-dashboard.json"])["panels"] for t in p["targets"]]
    return out
