"""`make bench`'s machinery: real (small) benchmarks in one run, written as JSON, Markdown and PNG."""

import json
import subprocess
import sys
from pathlib import Path

from mesh.supervisor import REPO_ROOT


def test_quick_bench_writes_the_report(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "bench", "--quick", "--only", "pricing,settle", "-o", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    (folder,) = tmp_path.iterdir()
    report = json.loads((folder / "report.json").read_text())
    figures = {(f["bench"], f["figure"]): f for f in report["figures"]}
    median = next(f for (b, name), f in figures.items() if b == "pricing" and name.startswith("reprice, median"))
    assert median["value"] > 0 and median["unit"] == "µs" and median["met"] in (True, False)
    settle = next(f for (b, name), f in figures.items() if b == "settle" and name.startswith("settle 5,000"))
    assert settle["value"] > 0
    assert report["raw"]["settle"]["checks_ok"] is True  # every bet settled, ledger balanced
    table = (folder / "report.md").read_text()
    assert "| benchmark | figure | value | raw baseline (same run) | ratio | goal | met |" in table
    assert "reprice, median" in done.stdout  # the table is printed too
    assert "%|" in done.stderr  # progress bars
    assert (folder / "pricing.log").exists() and (folder / "settle.log").exists()


def test_the_report_plots_are_png(tmp_path: Path) -> None:
    from mesh import bench

    raw = {
        "bets": {
            "raw_grpc_unary": {"per_s": 3000.0},
            "raw_postgres_txn": {"per_s": 1000.0},
            "placebet_full": {"per_s": 450.0, "p50_ms": 30.0, "p99_ms": 70.0},
            "placebet_half": {"per_s": 225.0, "p50_ms": 4.0, "p99_ms": 12.0},
        }
    }
    paths = bench.plots(raw, tmp_path)
    assert [p.name for p in paths] == ["latency.png", "throughput.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
