"""``python -m pricing bench``: median microseconds per full-match reprice on one core.

A reprice is what the engine does on a feed event: the score model for the new state, every market
of the catalogue, the margin by the chosen method, odds rounded to the ladder. States cycle through
minutes, scores and red cards so that no cache of a single state flatters the figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

from pricing import builder as bb
from pricing.football import INPLAY, MatchState
from pricing.margin import METHODS
from pricing.pricer import DEFAULT_MARGIN, DEFAULT_METHOD, price_match

GOAL_US = 200.0


def _states(n: int) -> list[MatchState]:
    out = []
    for i in range(n):
        minute = (i * 7) % 90
        out.append(
            MatchState(
                minute=float(minute),
                home_goals=(i // 3) % 4,
                away_goals=(i // 5) % 3,
                home_red_cards=1 if i % 11 == 0 else 0,
            )
        )
    return out


def measure(method: str, runs: int, margin: float = DEFAULT_MARGIN) -> dict[str, float]:
    states = _states(97)
    for s in states[:20]:  # warm up caches and the allocator
        price_match(1.6, 1.1, s, margin, method, INPLAY)
    samples = []
    for i in range(runs):
        s = states[i % len(states)]
        t0 = time.perf_counter_ns()
        price_match(1.6, 1.1, s, margin, method, INPLAY)
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    samples.sort()
    median = statistics.median(samples)
    return {
        "median_us": round(median, 1),
        "p90_us": round(samples[int(0.9 * len(samples))], 1),
        "p99_us": round(samples[int(0.99 * len(samples))], 1),
        "reprices_per_s": round(1e6 / median),
    }


BUILDER_PICKS = (
    bb.Pick("1x2", "home"),
    bb.Pick("total|total=2.5", "over"),
    bb.Pick("btts", "yes"),
    bb.Pick("team_total|team=away|total=0.5", "over"),
)


def measure_builder(legs: int, runs: int) -> dict[str, float]:
    """Microseconds per bet builder price (``pricing.builder.price``: the score model for the state,
    the grid summed where every pick wins, the margin, the ladder), what QuoteBetBuilder and a bet
    builder's PlaceBet compute. The win masks are cached per score after their first use; the first
    use of a pick at a new score is timed apart (``first_use_us``)."""
    states = _states(97)
    picks = BUILDER_PICKS[:legs]
    bb._mask.cache_clear()
    t0 = time.perf_counter_ns()
    bb.joint_probability(bb.ModelInputs(1.6, 1.1, states[0]).score_model(), picks)
    first = (time.perf_counter_ns() - t0) / 1000.0
    for s in states:  # every score's masks made once, as a running service has them
        bb.joint_probability(bb.ModelInputs(1.6, 1.1, s).score_model(), picks)
    samples = []
    for i in range(runs):
        inputs = bb.ModelInputs(1.6, 1.1, states[i % len(states)])
        t0 = time.perf_counter_ns()
        with contextlib.suppress(bb.NotOffered):  # a decided combination costs the same to find out
            bb.price(inputs, picks)
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    samples.sort()
    return {
        "median_us": round(statistics.median(samples), 1),
        "p99_us": round(samples[int(0.99 * len(samples))], 1),
        "first_use_us": round(first, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pricing bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--method", choices=[*METHODS, "all"], default="all")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    methods = list(METHODS) if args.method == "all" else [args.method]
    results = {m: measure(m, args.runs) for m in methods}
    builder = {f"{n}_legs": measure_builder(n, args.runs) for n in (2, 4)}
    if args.json:
        out = {"goal_us": GOAL_US, "default_method": DEFAULT_METHOD, "results": results, "bet_builder": builder}
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"full-match reprice ({len(_states(1)) and 'all markets'}, margin {DEFAULT_MARGIN:.0%}, rounded), "
        f"{args.runs} runs, one core"
    )
    print(f"{'method':<16}{'median µs':>10}{'p90 µs':>9}{'p99 µs':>9}{'reprices/s':>12}  goal ≤ {GOAL_US:.0f} µs")
    for m, r in results.items():
        mark = "ok" if r["median_us"] <= GOAL_US else "MISSED"
        default = " (default)" if m == DEFAULT_METHOD else ""
        print(
            f"{m:<16}{r['median_us']:>10.1f}{r['p90_us']:>9.1f}{r['p99_us']:>9.1f}{r['reprices_per_s']:>12}  "
            f"{mark}{default}"
        )
    print("bet builder price (pricing.builder.price: model, joint probability, margin, ladder)")
    for name, r in builder.items():
        print(
            f"{name.replace('_', ' '):<16}{r['median_us']:>10.1f}{'':>9}{r['p99_us']:>9.1f}"
            f"   first use of its picks at a score: {r['first_use_us']:.0f} µs"
        )
    return 0
