"""The compiled hot path of pricing: margin and ladder for a whole book in one pass.

Same definitions as :mod:`pricing.margin` (the scalar reference, solved with Brent's method in
pure Python). Every market is a row of one flat vector of fair probabilities; for each open row the
kernel (numba-compiled, cached on disk) drops outcomes below the minimum probability, renormalises,
solves the method's one-dimensional equation by a safeguarded Newton iteration (the root stays
bracketed; a step that leaves the bracket bisects; it stops below 1e-14), scales up a row the
method cannot bring to the target (Shin's booksum is capped at ``(sum sqrt p)^2``), holds near-certain
outcomes at 1.01 giving their excess inverse probability to the others, and rounds every price
down to the ladder. The tests check agreement with the scalar reference.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

METHOD_CODES = {"multiplicative": 0, "additive": 1, "power": 2, "shin": 3, "odds_ratio": 4}
_MAX_ITER = 100
_TOL = 1e-14


@numba.njit(cache=True)
def _booksum(method: int, x: float, p: FloatArray, logp: FloatArray, a: int, b: int) -> tuple[float, float]:
    """The row's booksum at parameter ``x`` and its derivative (inactive positions hold p == 0)."""
    s = 0.0
    d = 0.0
    if method == 2:  # power: sum p^k
        for i in range(a, b):
            if p[i] > 0.0:
                t = math.exp(x * logp[i])
                s += t
                d += t * logp[i]
        return s, d
    if method == 3:  # shin: (sum sqrt(p^2 + z (p - p^2)))^2
        h = 0.0
        dh = 0.0
        for i in range(a, b):
            q = p[i] - p[i] * p[i]
            root = math.sqrt(p[i] * p[i] + x * q)
            h += root
            if root > 0.0:
                dh += q / (2.0 * root)
        return h * h, 2.0 * h * dh
    for i in range(a, b):  # odds ratio: sum c p / (1 - p + c p)
        den = 1.0 - p[i] + x * p[i]
        s += x * p[i] / den
        d += p[i] * (1.0 - p[i]) / (den * den)
    return s, d


@numba.njit(cache=True)
def solve_row(method: int, p: FloatArray, logp: FloatArray, a: int, b: int, booksum: float, r: FloatArray) -> None:
    """Inverse odds of positions a..b-1 into ``r``: they sum to ``booksum`` (p sums to 1)."""
    if method == 0:
        for i in range(a, b):
            r[i] = p[i] * booksum
        return
    if method == 1:
        n = 0
        for i in range(a, b):
            if p[i] > 0.0:
                n += 1
        for i in range(a, b):
            r[i] = p[i] + (booksum - 1.0) / n if p[i] > 0.0 else 0.0
        return
    # brackets: power k in (0, 1] (the booksum falls as k grows); shin z in [0, 1); odds ratio c >= 1
    if method == 2:
        lo, hi, x = 1e-9, 1.0, 1.0
    elif method == 3:
        lo, hi, x = 0.0, 1.0, 0.0
    else:
        lo, hi, x = 1.0, 1e12, 1.0
    for _ in range(_MAX_ITER):
        s, d = _booksum(method, x, p, logp, a, b)
        f = s - booksum
        if (f > 0.0) == (method == 2):
            lo = x
        else:
            hi = x
        nxt = x - f / d if d != 0.0 else 0.5 * (lo + hi)
        if not (lo < nxt < hi):
            nxt = 0.5 * (lo + hi)
        done = abs(nxt - x) <= _TOL * max(1.0, abs(x))
        x = nxt
        if done:
            break
    h = 0.0
    for i in range(a, b):
        if p[i] <= 0.0:
            r[i] = 0.0
        elif method == 2:
            r[i] = math.exp(x * logp[i])
        elif method == 3:
            r[i] = math.sqrt(p[i] * p[i] + x * (p[i] - p[i] * p[i]))
            h += r[i]
        else:
            r[i] = x * p[i] / (1.0 - p[i] + x * p[i])
    if method == 3:  # pi_i = b sqrt(...), with b the sum of the roots
        for i in range(a, b):
            r[i] *= h


@numba.njit(cache=True)
def price_rows(
    method: int,
    fair: FloatArray,
    row_start: IntArray,
    row_size: IntArray,
    live: BoolArray,
    booksums: FloatArray,
    min_probability: float,
    ladder: IntArray,
    max_cents: int,
    out_cents: IntArray,
) -> None:
    """Odds (integer hundredths, 0 = not offered) of every live row of a flat book; ``booksums``
    is each row's target (1 + margin)."""
    n = len(fair)
    p = np.zeros(n)
    logp = np.zeros(n)
    r = np.zeros(n)
    max_inverse = 100.0 / ladder[0]
    for row in range(len(row_start)):
        a = row_start[row]
        b = a + row_size[row]
        for i in range(a, b):
            out_cents[i] = 0
        if not live[row]:
            continue
        total = 0.0
        active = 0
        for i in range(a, b):
            if fair[i] >= min_probability:
                total += fair[i]
                active += 1
        if active < 2:
            continue  # a one-sided market is not offered
        for i in range(a, b):
            p[i] = fair[i] / total if fair[i] >= min_probability else 0.0
            logp[i] = math.log(p[i]) if p[i] > 0.0 else 0.0
        booksum = booksums[row]
        solve_row(method, p, logp, a, b, booksum, r)
        # a method that cannot reach the target (Shin is capped at (sum sqrt p)^2 for very lopsided
        # markets) gets the rest multiplicatively, so the book is never short of the target
        got = 0.0
        for i in range(a, b):
            got += r[i]
        if got < booksum * (1.0 - 1e-12):
            for i in range(a, b):
                r[i] *= booksum / got
        # hold near-certain outcomes at 1.01 and give the excess to the others
        excess = 0.0
        rest = 0.0
        for i in range(a, b):
            if r[i] > max_inverse:
                excess += r[i] - max_inverse
                r[i] = max_inverse
            elif p[i] > 0.0:
                rest += r[i]
        if excess > 0.0 and rest > 0.0:
            for i in range(a, b):
                if p[i] > 0.0 and r[i] < max_inverse:
                    r[i] += excess * r[i] / rest
        for i in range(a, b):
            if p[i] <= 0.0:
                continue
            cents = 100.0 / r[i] * (1.0 + 1e-9)
            k = np.searchsorted(ladder, cents, side="right") - 1
            c = ladder[max(k, 0)]
            out_cents[i] = min(c, max_cents)
