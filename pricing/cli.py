"""``python -m pricing fair|price``: one match state in, every market out, as JSON.

  python -m pricing fair --home-xg 1.6 --away-xg 1.1 --minute 60 --score 1-0 [--red-cards 0-0] [--model NAME]
  python -m pricing price --odds 2.10 3.40 3.60 [--over-under 1.95 1.95] --minute 30 --score 0-0 \\
      [--margin 0.05] [--method shin]
"""

from __future__ import annotations

import argparse
import json
import sys

from pricing.football import MODELS, MatchState, Period, fit_expected_goals, score_model
from pricing.margin import METHODS, MarginError
from pricing.markets import fair_probabilities
from pricing.pricer import DEFAULT_MARGIN, DEFAULT_METHOD, price_match


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two counts like 1-0, got {text!r}") from None
    if a < 0 or b < 0:
        raise argparse.ArgumentTypeError(f"counts cannot be negative: {text!r}")
    return a, b


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m pricing {command}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--home-xg", type=float, help="pre-match expected goals of the home side")
    src.add_argument(
        "--odds",
        type=float,
        nargs=3,
        metavar=("HOME", "DRAW", "AWAY"),
        help="pre-match 1X2 odds to fit the expected goals to",
    )
    p.add_argument("--away-xg", type=float, help="pre-match expected goals of the away side")
    p.add_argument("--over-under", type=float, nargs=2, metavar=("OVER", "UNDER"), help="pre-match total 2.5 odds")
    p.add_argument("--minute", type=float, default=0.0, help="match clock, 0-90 (default 0)")
    p.add_argument("--score", type=_pair, default=(0, 0), help="current score, e.g. 1-0")
    p.add_argument("--red-cards", type=_pair, default=(0, 0), help="dismissals so far, e.g. 0-1")
    p.add_argument("--period", choices=[x.value for x in Period], help="override the period the minute implies")
    p.add_argument("--model", choices=sorted(MODELS), default="inplay", help="model configuration (default inplay)")
    if command == "price":
        p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="target overround (default 0.05)")
        p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help=f"margin method ({DEFAULT_METHOD})")
    return p


def main(command: str, argv: list[str]) -> int:
    parser = _parser(command)
    args = parser.parse_args(argv)
    model = MODELS[args.model]
    try:
        if args.odds is not None:
            over, under = args.over_under if args.over_under else (None, None)
            h, d, a = args.odds
            home_xg, away_xg = fit_expected_goals(h, d, a, over, under, model=model)
        else:
            if args.away_xg is None:
                parser.error("--home-xg needs --away-xg")
            home_xg, away_xg = args.home_xg, args.away_xg
        state = MatchState(
            minute=args.minute,
            home_goals=args.score[0],
            away_goals=args.score[1],
            home_red_cards=args.red_cards[0],
            away_red_cards=args.red_cards[1],
            period=Period(args.period) if args.period else None,
        )
        if command == "fair":
            out: dict[str, object] = {
                k: {o: round(p, 6) for o, p in v.items()}
                for k, v in fair_probabilities(score_model(home_xg, away_xg, state, model)).items()
            }
        else:
            book = price_match(home_xg, away_xg, state, args.margin, args.method, model)
            out = {m.key: {"status": "open" if m.offered else "closed", "odds": m.odds_text()} for m in book.markets()}
    except (ValueError, MarginError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1))
    return 0
