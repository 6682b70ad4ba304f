"""The pricing commands as a user runs them: the CLI, the calibration on the shipped data, the bench."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.supervisor import REPO_ROOT
from tests.shared_data import FOOTBALL_DATA, needs

DATA = FOOTBALL_DATA


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pricing", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def test_fair_prints_every_market_and_the_plain_poisson_numbers() -> None:
    out = _run("fair", "--home-xg", "1.6", "--away-xg", "1.1", "--minute", "0", "--score", "0-0", "--model", "poisson")
    assert out.returncode == 0, out.stderr
    fair = json.loads(out.stdout)
    assert fair["1x2"] == {"home": 0.489574, "draw": 0.248911, "away": 0.261515}
    assert fair["total:2.5"]["over"] == 0.506376
    assert fair["btts"]["yes"] == 0.532438
    assert {"correct_score", "next_goal:1", "asian_handicap:-0.25", "exact_goals", "halftime_1x2"} <= fair.keys()


def test_fair_in_play_with_a_red_card() -> None:
    out = _run("fair", "--home-xg", "1.6", "--away-xg", "1.1", "--minute", "60", "--score", "1-0", "--red-cards", "0-1")
    fair = json.loads(out.stdout)
    assert fair["1x2"]["home"] > 0.8
    assert sum(fair["1x2"].values()) == pytest.approx(1.0, abs=1e-5)


def test_price_fits_the_odds_and_offers_ladder_prices() -> None:
    out = _run("price", "--odds", "2.10", "3.40", "3.60", "--over-under", "1.95", "1.95", "--minute", "30")
    assert out.returncode == 0, out.stderr
    book = json.loads(out.stdout)
    assert book["1x2"]["status"] == "open"
    assert sum(1 / float(o) for o in book["1x2"]["odds"].values()) >= 1.05


def test_bad_input_is_a_clear_error() -> None:
    out = _run("fair", "--home-xg", "1.6", "--away-xg", "1.1", "--minute", "95")
    assert out.returncode == 2
    assert "minute must be between 0 and 90" in out.stderr
    out = _run("fair", "--home-xg", "1.6", "--away-xg", "1.1", "--score", "one-nil")
    assert out.returncode == 2
    assert "expected two counts like 1-0" in out.stderr


@needs(DATA / "E0_2023-24.csv")
def test_calibration_on_the_premier_league_meets_its_goals() -> None:
    out = _run("calibrate", str(DATA / "E0_2023-24.csv"))
    assert out.returncode == 0, out.stdout + out.stderr
    mad = float(out.stdout.split("all ")[1].split()[0])
    assert mad <= 0.005
    print(out.stdout)


def test_bench_prints_a_row_per_method(tmp_path: Path) -> None:
    out = _run("bench", "--runs", "50", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report["results"]) == {"multiplicative", "additive", "power", "shin", "odds_ratio"}
    assert all(r["median_us"] > 0 for r in report["results"].values())


def test_live_bench_runs_the_real_processes_and_reports_latency() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pricing.bench_live",
            "--matches",
            "10",
            "--subscribers",
            "5",
            "--rate",
            "20",
            "--seconds",
            "2",
            "--json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["live"]["updates_per_s"] > 0
    assert 0 < report["live"]["p50_ms"] <= report["live"]["p99_ms"]
    assert report["raw_grpc_streaming_msgs_per_s"] > 0


def test_auto_cash_out_bench_takes_every_rule_and_prints_figures() -> None:
    """``make bench-auto``, small: real NATS, Valkey, PostgreSQL and a betting service."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "betting.bench_auto", "--bets", "40", "--players", "4", "--matches", "4",
         "--seconds", "1", "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    got = json.loads(out.stdout)
    taken = got["taken"]
    assert (taken["cashed_out"], taken["of"]) == (40, 40), got  # every rule reached was taken, none twice
    assert 0 < taken["p50_ms"] <= taken["p99_ms"] <= taken["max_ms"] and taken["per_s"] > 0
    assert got["watching"]["snapshot_writes_per_s"] > 0 and got["baseline"]["betting_cpu_pct"] >= 0


def test_bench_wallet_prints_deposit_figures_alone_and_beside_a_settlement() -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "betting.bench_wallet", "--clients", "4", "--players", "20", "--seconds", "1",
         "--locked", "2", "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    got = json.loads(out.stdout)
    for phase in ("alone", "beside_a_settlement"):
        f = got[phase]
        assert f["deposits"] > 0 and f["failed"] == 0 and 0 < f["p50_ms"] <= f["p99_ms"] <= f["max_ms"], got
    assert got["alone"]["for_locked_players"] == 0 and got["beside_a_settlement"]["locks_taken"] > 0, got
