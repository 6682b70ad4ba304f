"""The odds ladder: the prices livebet offers. Odds are rounded *down* to the ladder, so the book
never falls below the target margin; they are clamped to [1.01, max_odds].

=============  ======
range          step
=============  ======
1.01 - 2.00    0.01
2.00 - 3.00    0.02
3.00 - 4.00    0.05
4.00 - 6.00    0.1
6.00 - 10.00   0.2
10.00 - 20.00  0.5
20.00 - 30.00  1
30.00 - 50.00  2
50.00 - 100    5
100 - 1000     10
=============  ======

(The familiar exchange ladder.) Prices are held as integer hundredths ("cents" of odds), so ``185``
is 1.85, and written as decimal strings in the contracts.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

_BANDS = (
    (101, 200, 1),
    (200, 300, 2),
    (300, 400, 5),
    (400, 600, 10),
    (600, 1000, 20),
    (1000, 2000, 50),
    (2000, 3000, 100),
    (3000, 5000, 200),
    (5000, 10000, 500),
    (10000, 100000, 1000),
)


def _build() -> NDArray[np.int64]:
    ticks: list[int] = []
    for lo, hi, step in _BANDS:
        ticks.extend(range(lo, hi, step))
    ticks.append(100000)
    return np.array(sorted(set(ticks)), dtype=np.int64)


LADDER = _build()
MIN_ODDS_CENTS = int(LADDER[0])
MAX_ODDS_CENTS = int(LADDER[-1])


def round_down(odds: NDArray[np.float64], max_odds_cents: int = MAX_ODDS_CENTS) -> NDArray[np.int64]:
    """Each decimal odds value rounded down to the ladder, as integer hundredths, clamped to
    [1.01, max_odds]. A hair of tolerance keeps 1.9 (stored as 1.8999999999) at 1.90."""
    idx = np.searchsorted(LADDER, odds * (100.0 * (1 + 1e-9)), side="right") - 1
    return np.minimum(LADDER.take(idx, mode="clip"), max_odds_cents)


def to_text(cents: int) -> str:
    """``185`` → ``"1.85"``."""
    return f"{cents // 100}.{cents % 100:02d}"


def is_on_ladder(cents: int) -> bool:
    i = int(np.searchsorted(LADDER, cents))
    return i < len(LADDER) and int(LADDER[i]) == cents
