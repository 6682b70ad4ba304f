"""``python -m pricing``: the pricing models from the command line.

fair        fair probabilities of every market for a match state (JSON)
price       offered odds of every open market (JSON)
calibrate   fit every match of a football-data.co.uk CSV and score the model against the market
bench       median µs per full-match reprice
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in ("fair", "price"):
        from pricing.cli import main as cli

        return cli(command, rest)
    if command == "calibrate":
        from pricing.calibrate import main as calibrate

        return calibrate(rest)
    if command == "bench":
        from pricing.bench import main as bench

        return bench(rest)
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
