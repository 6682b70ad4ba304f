"""``python -m pricing calibrate [CSV ...]``: fit the model to every match of football-data.co.uk
files from Pinnacle's closing odds and score it against the market and the results.

For each match: the closing 1X2 (``PSCH/PSCD/PSCA``) and over/under 2.5 (``PC>2.5``/``PC<2.5``) odds
are de-margined (Shin), the model's expected goals are fitted to them (:func:`fit_expected_goals`),
and the model's pre-match probabilities are compared with the de-margined market. Printed: the mean
absolute difference (1X2, over/under and both), and the log loss and Brier score of the model and of
Pinnacle's own probabilities against the results. ``--fit-rho`` also searches the Dixon-Coles
``rho`` that minimises the mean absolute difference; ``--profile`` recomputes the time profile's
slope from the first-half share of goals in the files.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

from scipy.optimize import minimize_scalar

from pricing.football import INPLAY, MatchState, ModelConfig, fit_expected_goals, fit_profile_slope, score_model
from pricing.margin import remove_margin
from pricing.markets import fair_probabilities

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "football-data" / "E0_2023-24.csv"
GOAL_MAD = 0.005
GOAL_LOGLOSS_GAP = 0.002


@dataclass(frozen=True)
class Match:
    home: str
    away: str
    odds_1x2: tuple[float, float, float]
    odds_ou: tuple[float, float]
    result: int  # 0 home, 1 draw, 2 away
    goals: int
    first_half_goals: int


def load(path: Path) -> list[Match]:
    out = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            try:
                odds = (float(row["PSCH"]), float(row["PSCD"]), float(row["PSCA"]))
                ou = (float(row["PC>2.5"]), float(row["PC<2.5"]))
                goals = int(row["FTHG"]) + int(row["FTAG"])
                half = int(row["HTHG"]) + int(row["HTAG"])
            except (KeyError, ValueError):
                continue  # a row without closing odds or results is skipped, and counted below
            out.append(Match(row["HomeTeam"], row["AwayTeam"], odds, ou, "HDA".index(row["FTR"]), goals, half))
    return out


@dataclass
class Scores:
    matches: int
    mad_1x2: float
    mad_ou: float
    mad_all: float
    logloss_model: float
    logloss_market: float
    brier_model: float
    brier_market: float
    logloss_ou_model: float
    logloss_ou_market: float


def evaluate(matches: list[Match], model: ModelConfig) -> Scores:
    mad1 = mado = ll_m = ll_p = br_m = br_p = llo_m = llo_p = 0.0
    for m in matches:
        market = remove_margin(list(m.odds_1x2), "shin")
        market_over = remove_margin(list(m.odds_ou), "shin")[0]
        hx, ax = fit_expected_goals(*m.odds_1x2, *m.odds_ou, method="shin", model=model)
        fair = fair_probabilities(score_model(hx, ax, MatchState(), model))
        mp = [fair["1x2"]["home"], fair["1x2"]["draw"], fair["1x2"]["away"]]
        mo = fair["total:2.5"]["over"]
        mad1 += sum(abs(a - b) for a, b in zip(mp, market, strict=True)) / 3
        mado += abs(mo - market_over)
        y = [1.0 if i == m.result else 0.0 for i in range(3)]
        ll_m -= math.log(mp[m.result])
        ll_p -= math.log(market[m.result])
        br_m += sum((a - b) ** 2 for a, b in zip(mp, y, strict=True))
        br_p += sum((a - b) ** 2 for a, b in zip(market, y, strict=True))
        over = m.goals > 2
        llo_m -= math.log(mo if over else 1 - mo)
        llo_p -= math.log(market_over if over else 1 - market_over)
    n = len(matches)
    return Scores(
        n,
        mad1 / n,
        mado / n,
        (3 * mad1 + 2 * mado) / (5 * n),
        ll_m / n,
        ll_p / n,
        br_m / n,
        br_p / n,
        llo_m / n,
        llo_p / n,
    )


def fit_rho(matches: list[Match], model: ModelConfig) -> float:
    res = minimize_scalar(
        lambda rho: evaluate(matches, replace(model, rho=rho)).mad_all,
        bounds=(-0.3, 0.1),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(res.x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pricing calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", nargs="*", type=Path, default=[DEFAULT_CSV])
    parser.add_argument("--fit-rho", action="store_true", help="search the Dixon-Coles rho as well")
    parser.add_argument("--profile", action="store_true", help="recompute the time-profile slope")
    args = parser.parse_args(argv)
    matches: list[Match] = []
    for path in args.csv:
        if not path.exists():
            parser.error(f"no such file: {path}")
        matches += load(path)
    if not matches:
        parser.error("no match with closing odds and results in the files")
    model = INPLAY
    print(f"{len(matches)} matches from {', '.join(p.name for p in args.csv)}; model {model.name} (rho {model.rho})")
    if args.profile:
        goals = sum(m.goals for m in matches)
        first = sum(m.first_half_goals for m in matches)
        share = first / goals
        print(
            f"first-half goals {first} of {goals} ({share:.4f}) -> profile slope {fit_profile_slope(share):.3f} "
            f"(model uses {model.profile_slope})"
        )
    if args.fit_rho:
        rho = fit_rho(matches, model)
        print(f"rho minimising the mean absolute difference: {rho:.4f}")
        model = replace(model, rho=round(rho, 3))
    s = evaluate(matches, model)
    ok_mad = s.mad_all <= GOAL_MAD
    ok_ll = s.logloss_model - s.logloss_market <= GOAL_LOGLOSS_GAP
    print(
        f"mean |model - market|   1X2 {s.mad_1x2:.5f}   O/U 2.5 {s.mad_ou:.5f}   all {s.mad_all:.5f}   "
        f"goal <= {GOAL_MAD}: {'ok' if ok_mad else 'MISSED'}"
    )
    print(
        f"1X2 log loss            model {s.logloss_model:.5f}   Pinnacle {s.logloss_market:.5f}   "
        f"gap {s.logloss_model - s.logloss_market:+.5f}   goal <= {GOAL_LOGLOSS_GAP}: {'ok' if ok_ll else 'MISSED'}"
    )
    print(f"1X2 Brier score         model {s.brier_model:.5f}   Pinnacle {s.brier_market:.5f}")
    print(f"O/U 2.5 log loss        model {s.logloss_ou_model:.5f}   Pinnacle {s.logloss_ou_market:.5f}")
    return 0 if ok_mad and ok_ll else 1
