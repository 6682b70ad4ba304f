"""Automatic SLA monitoring: latency percentiles per API from every service's ``/metrics``,
compared with the objectives in ``mesh/slo.toml``.

``python -m mesh sla`` prints a table and exits 1 when an objective is broken (2 when a service
cannot be read). Percentiles come from the Prometheus histograms the way Prometheus computes them
(linear within a bucket), summed over every replica; with ``--window S`` they cover only the
calls of the next S seconds (two scrapes), otherwise everything since the services started.
While ``mesh up`` runs, :class:`Checker` does the same every interval over the calls of that
interval, and logs and counts each breach.
"""

from __future__ import annotations

import math
import tomllib
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_PATH = Path(__file__).with_name("slo.toml")
RPC_METRIC = "livebet_rpc_duration_seconds"
ERRORS_METRIC = "livebet_rpc_errors_total"
SERVER_ERRORS = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS"})
QUANTILES = ("p50", "p95", "p99")


@dataclass(frozen=True)
class Objective:
    name: str  # the RPC method path, or the histogram's metric name
    kind: str  # "rpc" or "histogram"
    targets_ms: dict[str, float]


@dataclass(frozen=True)
class Config:
    objectives: tuple[Objective, ...]
    max_error_rate: float = 0.01
    min_calls: int = 20
    interval_seconds: float = 30.0


def load(path: Path = DEFAULT_PATH) -> Config:
    doc = tomllib.loads(path.read_text())
    objectives = []
    for kind in ("rpc", "histogram"):
        for name, targets in doc.get(kind, {}).items():
            bad = set(targets) - set(QUANTILES)
            if bad:
                raise ValueError(f"{path}: {kind}.{name}: unknown {sorted(bad)}; use {QUANTILES}")
            objectives.append(Objective(name, kind, {q: float(v) for q, v in targets.items()}))
    check = doc.get("check", {})
    return Config(
        tuple(objectives),
        float(doc.get("errors", {}).get("max_rate", 0.01)),
        int(check.get("min_calls", 20)),
        float(check.get("interval_seconds", 30)),
    )


@dataclass
class Histogram:
    """Cumulative bucket counts by upper bound (seconds)."""

    buckets: dict[float, float] = field(default_factory=dict)

    def add(self, le: float, count: float) -> None:
        self.buckets[le] = self.buckets.get(le, 0.0) + count

    def minus(self, earlier: Histogram | None) -> Histogram:
        if earlier is None:
            return self
        return Histogram({le: c - earlier.buckets.get(le, 0.0) for le, c in self.buckets.items()})

    @property
    def count(self) -> float:
        return self.buckets.get(math.inf, 0.0)

    def quantile(self, q: float) -> float | None:
        """Seconds, interpolated within the bucket as Prometheus does; None without data."""
        total = self.count
        if total <= 0:
            return None
        rank, lower, below = q * total, 0.0, 0.0
        for le in sorted(self.buckets):
            c = self.buckets[le]
            if c >= rank:
                if math.isinf(le):
                    return lower  # above the last finite bucket: its bound is all we know
                return lower + (le - lower) * ((rank - below) / (c - below) if c > below else 0.0)
            lower, below = le, c
        return lower


@dataclass
class Sample:
    """What one scrape of every service says: latency histograms and call/error counts."""

    histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # (kind, name)
    errors: dict[str, float] = field(default_factory=dict)  # method -> server errors

    def minus(self, earlier: Sample | None) -> Sample:
        if earlier is None:
            return self
        return Sample(
            {k: h.minus(earlier.histograms.get(k)) for k, h in self.histograms.items()},
            {m: c - earlier.errors.get(m, 0.0) for m, c in self.errors.items()},
        )


def parse(texts: Iterable[str]) -> Sample:
    """Sum the metrics of several processes (replicas of a service add up)."""
    out = Sample()
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == RPC_METRIC + "_bucket":
                    key = ("rpc", s.labels["method"])
                elif s.name.endswith("_bucket") and family.type == "histogram":
                    key = ("histogram", family.name)
                elif s.name == ERRORS_METRIC and s.labels.get("code") in SERVER_ERRORS:
                    out.errors[s.labels["method"]] = out.errors.get(s.labels["method"], 0.0) + s.value
                    continue
                else:
                    continue
                out.histograms.setdefault(key, Histogram()).add(float(s.labels["le"]), s.value)
    return out


def scrape(targets: Iterable[str], timeout: float = 5.0) -> Sample:
    texts = []
    for target in targets:
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=timeout) as resp:
            texts.append(resp.read().decode())
    return parse(texts)


@dataclass(frozen=True)
class Row:
    name: str
    calls: int
    values_ms: dict[str, float | None]
    targets_ms: dict[str, float]
    error_rate: float | None
    breaches: tuple[str, ...]
    judged: bool


def evaluate(config: Config, sample: Sample) -> list[Row]:
    rows = []
    for o in config.objectives:
        h = sample.histograms.get((o.kind, o.name), Histogram())
        calls = int(h.count)
        values: dict[str, float | None] = {}
        for q in QUANTILES:
            v = h.quantile(int(q[1:]) / 100)
            values[q] = None if v is None else v * 1000
        judged = calls >= config.min_calls
        breaches = []
        if judged:
            for q, target in o.targets_ms.items():
                value = values[q]
                if value is not None and value > target:
                    breaches.append(f"{q} {value:.1f} ms > {target:g} ms")
        rate = None
        if o.kind == "rpc" and calls:
            rate = sample.errors.get(o.name, 0.0) / calls
            if judged and rate > config.max_error_rate:
                breaches.append(f"errors {rate:.2%} > {config.max_error_rate:.2%}")
        rows.append(Row(o.name, calls, values, o.targets_ms, rate, tuple(breaches), judged))
    return rows


def render(rows: list[Row]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    head = ["objective", "calls", *QUANTILES, "targets (ms)", "errors", "verdict"]
    body = []
    for r in rows:
        targets = " ".join(f"{q}≤{t:g}" for q, t in r.targets_ms.items())
        verdict = "BREACH: " + "; ".join(r.breaches) if r.breaches else ("ok" if r.judged else "too few calls")
        errors = "-" if r.error_rate is None else f"{r.error_rate:.2%}"
        short = r.name.rsplit(".", 1)[-1] if r.name.startswith("/") else r.name
        body.append([short, str(r.calls), *(ms(r.values_ms[q]) for q in QUANTILES), targets, errors, verdict])
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    return "\n".join(lines)


def as_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {
            "objective": r.name,
            "calls": r.calls,
            "ms": r.values_ms,
            "targets_ms": r.targets_ms,
            "error_rate": r.error_rate,
            "breaches": list(r.breaches),
            "judged": r.judged,
        }
        for r in rows
    ]


class Checker:
    """The periodic check while ``mesh up`` runs: each round judges the calls since the last."""

    def __init__(self, config: Config, targets: Iterable[str]) -> None:
        self.config, self.targets = config, list(targets)
        self.previous: Sample | None = None
        self.breaches = 0

    def round(self) -> list[Row]:
        now = scrape(self.targets)
        window = now.minus(self.previous)
        self.previous = now
        rows = evaluate(self.config, window)
        self.breaches += sum(len(r.breaches) for r in rows)
        return rows
