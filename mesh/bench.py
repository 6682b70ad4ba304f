"""``python -m mesh bench`` (``make bench``): every benchmark of the platform in one run, with a
report.

Each benchmark runs in its own process with ``--json`` (pricing, feed, live odds, bets,
cash-out offer streams, settlement); their figures become one table: figure, value, the raw baseline measured in the
same run, the ratio, the goal and whether it was met. Written under ``bench-results/<UTC time>/``:
``report.json``, ``report.md`` (the table, also printed), ``latency.png`` and ``throughput.png``,
and each benchmark's own log. ``--quick`` runs small versions (a smoke test of the machinery, not
figures to quote).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mesh import infra

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bench:
    name: str
    argv: list[str]
    quick: list[str]
    title: str


BENCHES = [
    Bench("pricing", ["pricing", "bench", "--json"], ["--runs", "300"], "full-match reprice"),
    Bench(
        "feed",
        ["feed.bench", "--json", "--sync", infra.DEFAULT_SYNC_INTERVAL],
        ["--events", "5000", "--matches", "20"],
        "feed ingestion",
    ),
    Bench(
        "live",
        ["pricing.bench_live", "--json"],
        [
            "--matches",
            "20",
            "--subscribers",
            "40",
            "--rate",
            "100",
            "--seconds",
            "3",
            "--stuck",
            "10",
            "--stuck-seconds",
            "3",
            "--capacity-seconds",
            "2",
        ],
        "live odds to subscribers",
    ),
    Bench("bets", ["betting.bench", "--json"], ["--clients", "4", "--seconds", "2", "--matches", "20"], "PlaceBet"),
    Bench(
        "offers",
        ["betting.bench_offers", "--json"],
        ["--players", "20", "--seconds", "2", "--matches", "10"],
        "cash-out offer streams",
    ),
    Bench(
        "auto",
        ["betting.bench_auto", "--json"],
        ["--bets", "200", "--players", "20", "--matches", "10", "--seconds", "2"],
        "automatic cash-outs",
    ),
    Bench(
        "wallet",
        ["betting.bench_wallet", "--json"],
        ["--clients", "4", "--players", "50", "--seconds", "2"],
        "deposits",
    ),
    Bench("settle", ["settlement.bench", "--json"], ["--bets", "5000", "--players", "200"], "settlement"),
]


@dataclass(frozen=True)
class Figure:
    bench: str
    figure: str
    value: float
    unit: str
    baseline: float | None = None  # the raw figure of the same run, where one applies
    baseline_name: str = ""
    goal: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        return round(self.value / self.baseline, 3) if self.baseline else None


def _pricing(d: dict[str, Any]) -> list[Figure]:
    r = d["results"][d["default_method"]]
    goal = d["goal_us"]
    return [
        Figure("pricing", f"reprice, median ({d['default_method']})", r["median_us"], "µs", goal=f"≤ {goal:g} µs",
               met=r["median_us"] <= goal),
        Figure("pricing", "reprice, p99", r["p99_us"], "µs"),
    ]  # fmt: skip


def _feed(d: dict[str, Any]) -> list[Figure]:
    r = next(iter(d["results"].values()))
    rate, share = d["goal_events_per_s"], d["goal_ratio"]
    ok = r["feed_events_per_s"] >= rate and r["ratio"] >= share
    return [
        Figure("feed", "events ingested", r["feed_events_per_s"], "/s", r["raw_events_per_s"], "raw JetStream publish",
               f"≥ {rate:,} /s and ≥ {share:.0%} of raw", ok),
    ]  # fmt: skip


def _live(d: dict[str, Any]) -> list[Figure]:
    live = d["live"]
    from pricing.bench_live import GOAL_P99_MS, GOAL_RAW_SHARE

    out = [
        Figure("live", "feed event → client, p50", live["p50_ms"], "ms"),
        Figure("live", "feed event → client, p99", live["p99_ms"], "ms", goal=f"≤ {GOAL_P99_MS:g} ms",
               met=live["p99_ms"] <= GOAL_P99_MS),
        Figure("live", "feed event → client, p99.9", live["p999_ms"], "ms"),
        Figure("live", "feed received → engine published, p99", live["engine_p99_ms"], "ms"),
        Figure("live", "updates delivered at that load", live["updates_per_s"], "/s"),
        Figure("live", "stream process at full speed", d["capacity"]["updates_per_s"], "/s",
               d["raw_grpc_streaming_msgs_per_s"],
               f"raw grpc.aio server streaming, {d['raw_message_bytes']:,}-byte messages",
               f"≥ {GOAL_RAW_SHARE:.0%} of raw", d["share_of_raw"] >= GOAL_RAW_SHARE),
    ]  # fmt: skip
    stuck = d.get("stuck") or {}
    if stuck:
        out.append(Figure("live", f"odds process memory growth, {stuck['stuck_subscribers']} readers that never read "
                          "(second half of the run)", stuck["rss_mb_growth_second_half"], "MB", goal="flat (≈ 0 MB)",
                          met=abs(stuck["rss_mb_growth_second_half"]) <= 20))  # fmt: skip
    return out


def _bets(d: dict[str, Any]) -> list[Figure]:
    raw = min(d["raw_grpc_unary"]["per_s"], d["raw_postgres_txn"]["per_s"])
    which = "raw grpc.aio unary" if raw == d["raw_grpc_unary"]["per_s"] else "raw PostgreSQL bet transaction"
    full, half, pg_half = d["placebet_full"], d["placebet_half"], d.get("raw_postgres_half", {})
    return [
        Figure("bets", "raw grpc.aio unary", d["raw_grpc_unary"]["per_s"], "/s"),
        Figure("bets", "raw PostgreSQL bet-shaped transaction", d["raw_postgres_txn"]["per_s"], "/s"),
        Figure("bets", "PlaceBet, full load", full["per_s"], "/s", raw, which,
               f"≥ {d['goal_share']:.0%} of the lower raw", full["per_s"] / raw >= d["goal_share"] if raw else None),
        Figure("bets", "PlaceBet p99 at half load", half["p99_ms"], "ms", pg_half.get("p99_ms"),
               "raw PostgreSQL p99 at the same rate", f"≤ {d['goal_p99_half_ms']:g} ms",
               half["p99_ms"] <= d["goal_p99_half_ms"]),
        Figure("bets", "PlaceBet p50 at half load", half["p50_ms"], "ms"),
    ]  # fmt: skip


def _offers(d: dict[str, Any]) -> list[Figure]:
    s, quiet, moving = d["setup"], d["quiet"], d["moving"]
    who = f"{s['players']} streams x {s['bets']} bets"
    return [
        Figure("offers", f"betting CPU, {who}, odds quiet", quiet["betting_cpu_pct"], "% of a core"),
        Figure("offers", f"offers delivered, odds moving {s['moves']:g}/s per match", moving["offers_per_s"], "/s"),
        Figure("offers", "betting CPU per offer delivered", moving["cpu_us_per_offer"], "µs"),
    ]


def _auto(d: dict[str, Any]) -> list[Figure]:
    s, base, watching, taken = d["setup"], d["baseline"], d["watching"], d["taken"]
    return [
        Figure("auto", f"betting CPU watching {s['bets']:,} rules, odds moving {s['moves']:g}/s per match",
               watching["betting_cpu_pct"], "% of a core"),
        Figure("auto", "betting CPU, the same odds and no rule", base["betting_cpu_pct"], "% of a core"),
        Figure("auto", f"all {taken['of']:,} rules reached at once: odds written → cash-out committed, p99",
               taken["p99_ms"], "ms"),
        Figure("auto", "automatic cash-outs in that burst", taken["per_s"], "/s"),
    ]  # fmt: skip


def _wallet(d: dict[str, Any]) -> list[Figure]:
    s, alone, beside = d["setup"], d["alone"], d["beside_a_settlement"]
    return [
        Figure("wallet", f"deposits, {s['clients']} clients", alone["per_s"], "/s"),
        Figure("wallet", "deposit p99", alone["p99_ms"], "ms"),
        Figure("wallet", f"deposits beside a settlement holding {s['locked']} players' rows", beside["per_s"], "/s"),
        Figure("wallet", "deposit p99 beside it", beside["p99_ms"], "ms"),
    ]


def _settle(d: dict[str, Any]) -> list[Figure]:
    met = d["seconds"] <= d["goal_seconds"] and d["checks_ok"]
    return [
        Figure("settle", f"settle {d['bets']:,} open bets on one match", d["seconds"], "s",
               goal=f"≤ {d['goal_seconds']:g} s (100,000 bets)", met=met),
        Figure("settle", "bets settled", d["bets_per_s"], "/s"),
    ]  # fmt: skip


FIGURES: dict[str, Callable[[dict[str, Any]], list[Figure]]] = {
    "pricing": _pricing,
    "feed": _feed,
    "live": _live,
    "bets": _bets,
    "offers": _offers,
    "auto": _auto,
    "wallet": _wallet,
    "settle": _settle,
}


def markdown(figures: list[Figure]) -> str:
    def num(v: float | None) -> str:
        if v is None:
            return ""
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"

    lines = [
        "| benchmark | figure | value | raw baseline (same run) | ratio | goal | met |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for f in figures:
        base = f"{num(f.baseline)} /s ({f.baseline_name})" if f.baseline else ""
        met = "" if f.met is None else ("yes" if f.met else "**no**")
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
        lines.append(f"| {f.bench} | {f.figure} | {num(f.value)} {f.unit} | {base} | {ratio} | {f.goal} | {met} |")
    return "\n".join(lines) + "\n"


def plots(raw: dict[str, Any], folder: Path) -> list[Path]:
    """Latency percentiles and throughput against the raw baselines, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    series: list[tuple[str, list[float]]] = []
    if "live" in raw:
        live = raw["live"]["live"]
        series.append(("feed → client", [live["p50_ms"], live["p99_ms"], live["p999_ms"]]))
    if "bets" in raw:
        for key, label in (("placebet_full", "PlaceBet full"), ("placebet_half", "PlaceBet half load")):
            series.append((label, [raw["bets"][key]["p50_ms"], raw["bets"][key]["p99_ms"], 0.0]))
    if series:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series):
            ax.bar([x + i * width for x in range(3)], values, width, label=label)
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(3)], ["p50", "p99", "p99.9"])
        ax.set_ylabel("ms")
        ax.set_title("latency (lower is better)")
        ax.legend()
        out.append(_save(fig, folder / "latency.png"))
    pairs: list[tuple[str, float, float]] = []
    if "feed" in raw:
        r = next(iter(raw["feed"]["results"].values()))
        pairs.append(("feed events", r["feed_events_per_s"], r["raw_events_per_s"]))
    if "live" in raw:
        pairs.append(
            ("odds updates", raw["live"]["capacity"]["updates_per_s"], raw["live"]["raw_grpc_streaming_msgs_per_s"])
        )
    if "bets" in raw:
        b = raw["bets"]
        pairs.append(
            ("PlaceBet", b["placebet_full"]["per_s"], min(b["raw_grpc_unary"]["per_s"], b["raw_postgres_txn"]["per_s"]))
        )
    if pairs:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        xs = range(len(pairs))
        ax.bar([x - 0.2 for x in xs], [p[2] for p in pairs], 0.4, label="raw baseline (same run)")
        ax.bar([x + 0.2 for x in xs], [p[1] for p in pairs], 0.4, label="livebet")
        ax.set_xticks(list(xs), [p[0] for p in pairs])
        ax.set_yscale("log")
        ax.set_ylabel("per second (log)")
        ax.set_title("throughput against the raw baseline")
        ax.legend()
        out.append(_save(fig, folder / "throughput.png"))
    return out


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(names: list[str], quick: bool, results_root: Path) -> tuple[Path, list[Figure], dict[str, Any]]:
    from tqdm import tqdm

    folder = results_root / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHES if b.name in names]
    raw: dict[str, Any] = {}
    figures: list[Figure] = []
    failed: dict[str, str] = {}
    bar = tqdm(chosen, unit="bench", file=sys.stderr, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]")
    for b in bar:
        bar.set_description(f"{b.name}: {b.title}")
        argv = [sys.executable, "-m", *b.argv, *(b.quick if quick else [])]
        # stdout to a file, not a pipe: a helper process a benchmark leaves behind cannot hold us
        out_path = folder / f"{b.name}.json"
        with open(folder / f"{b.name}.log", "w") as log, open(out_path, "w") as out:
            done = subprocess.run(argv, cwd=REPO_ROOT, stdout=out, stderr=log, timeout=1800)
        try:
            data = json.loads(out_path.read_text())
        except json.JSONDecodeError:
            failed[b.name] = f"exit {done.returncode}; see {folder / (b.name + '.log')}"
            continue
        raw[b.name] = data
        figures += FIGURES[b.name](data)
    report = {
        "when": folder.name,
        "quick": quick,
        "figures": [asdict(f) | {"ratio": f.ratio} for f in figures],
        "failed": failed,
        "raw": raw,
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    table = markdown(figures)
    head = f"# livebet benchmarks, {folder.name}{' (quick: not figures to quote)' if quick else ''}\n\n"
    images = "".join(f"\n![{p.stem}]({p.name})\n" for p in plots(raw, folder))
    missing = "".join(f"\n- {name} failed: {why}" for name, why in failed.items())
    (folder / "report.md").write_text(head + table + images + (f"\n## Failed\n{missing}\n" if failed else ""))
    return folder, figures, report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mesh bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(b.name for b in BENCHES), help="comma-separated subset")
    ap.add_argument("--quick", action="store_true", help="small runs: checks the machinery, not figures to quote")
    ap.add_argument("-o", "--output", type=Path, default=REPO_ROOT / "bench-results")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - {b.name for b in BENCHES}
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; known: {[b.name for b in BENCHES]}", file=sys.stderr)
        return 2
    folder, figures, report = run(names, args.quick, args.output)
    print(markdown(figures))
    print(f"report: {folder / 'report.md'} (and report.json, PNG plots, logs)")
    return 1 if report["failed"] else 0
