"""Bookmaker margin: from decimal odds to fair probabilities (``remove_margin``) and from fair
probabilities to decimal odds with a target overround (``apply_margin``), by five methods.

Notation: ``pi_i = 1/odds_i`` are the inverse odds, ``B = sum(pi)`` the booksum (1 + margin).

=================  ==================================================  ======================================
method             fair probability from inverse odds (removal)        inverse odds from probability (apply)
=================  ==================================================  ======================================
``multiplicative`` ``p_i = pi_i / B``                                  ``pi_i = p_i * B``
``additive``       ``p_i = pi_i - (B - 1) / n``                        ``pi_i = p_i + (B - 1) / n``
``power``          ``p_i = pi_i ** k``, k such that ``sum(p) = 1``     ``pi_i = p_i ** k``, ``sum(pi) = B``
``shin``           ``p_i = (sqrt(z^2 + 4(1-z) pi_i^2 / B) - z)``       ``pi_i = b sqrt(z p_i + (1-z) p_i^2)``,
                   ``/ (2(1-z))``, z such that ``sum(p) = 1``          ``b = sum_j sqrt(z p_j + (1-z) p_j^2)``,
                                                                       z such that ``b^2 = B``
``odds_ratio``     ``p_i = pi_i / (c + pi_i - c pi_i)``, c such that    ``pi_i = c p_i / (1 - p_i + c p_i)``,
                   ``sum(p) = 1``                                      c such that ``sum(pi) = B``
=================  ==================================================  ======================================

Sources: Shin (1993) "Measuring the incidence of insider trading in a market for state-contingent
claims", Economic Journal 103; Clarke, Kovalchik & Ingram (2017) "Adjusting bookmaker's odds to allow
for overround", American Journal of Sports Science 5(6) (multiplicative, additive, power, Shin);
Cheung (2015) for the odds ratio; J. Buchdahl, "Wisdom of the Crowd". They are the definitions of the
R package ``implied`` (both directions) and of ``penaltyblog`` (removal).

The one-dimensional equations are solved with Brent's method to 1e-15; results agree with the
closed forms to far better than 1e-6. A method that cannot reach the target raises
:class:`MarginError` (e.g. additive removal giving a negative probability).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from scipy.optimize import brentq

METHODS = ("multiplicative", "additive", "power", "shin", "odds_ratio")
_XTOL = 1e-15
_RTOL = 4 * 2.220446049250313e-16


class MarginError(ValueError):
    """The odds, probabilities or margin are invalid for the method, or it cannot reach the target."""


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise MarginError(f"unknown margin method {method!r}; use one of {', '.join(METHODS)}")


def _solve(f: Callable[[float], float], lo: float, hi: float, what: str) -> float:
    flo, fhi = f(lo), f(hi)
    if flo == 0:
        return lo
    if fhi == 0:
        return hi
    if (flo > 0) == (fhi > 0):
        raise MarginError(f"{what}: no solution in [{lo}, {hi}]")
    return float(brentq(f, lo, hi, xtol=_XTOL, rtol=_RTOL, maxiter=500))


def remove_margin(odds: Sequence[float], method: str = "shin") -> list[float]:
    """Fair probabilities (summing to 1) from the decimal odds of one market."""
    _check_method(method)
    if len(odds) < 2:
        raise MarginError("a market needs at least two outcomes")
    if any(not math.isfinite(o) or o <= 1.0 for o in odds):
        raise MarginError(f"decimal odds must be finite and greater than 1, got {list(odds)}")
    pi = [1.0 / o for o in odds]
    booksum = sum(pi)
    n = len(pi)
    if method == "multiplicative":
        return [x / booksum for x in pi]
    if method == "additive":
        probs = [x - (booksum - 1.0) / n for x in pi]
        if min(probs) < 0:
            raise MarginError(
                f"additive removal gives a negative probability ({min(probs):.6f}): the longest odds are "
                "too long for this margin; use another method"
            )
        return probs
    if abs(booksum - 1.0) < 1e-15:
        return list(pi)
    if method == "power":
        # sum(pi^k) = 1; k > 1 when booksum > 1 (every pi < 1), k < 1 when booksum < 1.
        def f(k: float) -> float:
            return sum(x**k for x in pi) - 1.0

        k = _solve(f, 1e-6, 1.0, "power") if booksum < 1 else _solve(f, 1.0, 1e4, "power")
        return [x**k for x in pi]
    if method == "shin":
        if booksum < 1:
            raise MarginError(f"Shin's method needs a booksum of at least 1, got {booksum:.6f}")

        def shin(z: float) -> list[float]:
            return [(math.sqrt(z * z + 4 * (1 - z) * x * x / booksum) - z) / (2 * (1 - z)) for x in pi]

        z = _solve(lambda z: sum(shin(z)) - 1.0, 0.0, 0.999999, "shin")
        return shin(z)

    # odds ratio: p = pi / (c + pi - c pi); c > 1 when booksum > 1.
    def oddsratio(c: float) -> list[float]:
        return [x / (c + x - c * x) for x in pi]

    if booksum > 1:
        c = _solve(lambda c: sum(oddsratio(c)) - 1.0, 1.0, 1e6, "odds_ratio")
    else:
        c = _solve(lambda c: sum(oddsratio(c)) - 1.0, 1e-9, 1.0, "odds_ratio")
    return oddsratio(c)


def apply_margin(probabilities: Sequence[float], margin: float, method: str = "shin") -> list[float]:
    """Decimal odds whose inverse sum is exactly ``1 + margin`` (0.05 = 5 % overround)."""
    _check_method(method)
    p = list(probabilities)
    if len(p) < 2:
        raise MarginError("a market needs at least two outcomes")
    if any(not math.isfinite(x) or x <= 0 or x >= 1 for x in p):
        raise MarginError(f"probabilities must lie strictly between 0 and 1, got {p}")
    if abs(sum(p) - 1.0) > 1e-9:
        raise MarginError(f"probabilities must sum to 1, got {sum(p):.12f}")
    if not math.isfinite(margin) or margin <= -1 + 1e-9 or margin >= 10:
        raise MarginError(f"margin must be a finite overround in (-1, 10), e.g. 0.05; got {margin}")
    booksum = 1.0 + margin
    n = len(p)
    pi: list[float]
    if abs(margin) < 1e-12:
        pi = p
    elif method == "multiplicative":
        pi = [x * booksum for x in p]
    elif method == "additive":
        pi = [x + margin / n for x in p]
    elif method == "power":
        # sum(p^k) = booksum; k < 1 raises each p (margin > 0), k > 1 lowers it.
        def f(k: float) -> float:
            return sum(x**k for x in p) - booksum

        k = _solve(f, 1e-9, 1.0, "power") if margin > 0 else _solve(f, 1.0, 1e4, "power")
        pi = [x**k for x in p]
    elif method == "shin":
        if margin < 0:
            raise MarginError("Shin's method needs a margin of at least 0")
        # b(z)^2 with b = sum sqrt(z p + (1-z) p^2) grows from 1 (z=0) to sum(sqrt(p))^2 (z=1).
        top = sum(math.sqrt(x) for x in p) ** 2
        if booksum >= top:
            raise MarginError(f"Shin's method cannot reach a booksum of {booksum:.6f} for these probabilities")

        def b(z: float) -> float:
            return sum(math.sqrt(z * x + (1 - z) * x * x) for x in p)

        z = _solve(lambda z: b(z) ** 2 - booksum, 0.0, 1.0, "shin")
        bz = b(z)
        pi = [bz * math.sqrt(z * x + (1 - z) * x * x) for x in p]
    else:

        def ratio(c: float) -> list[float]:
            return [c * x / (1 - x + c * x) for x in p]

        if margin > 0:
            c = _solve(lambda c: sum(ratio(c)) - booksum, 1.0, 1e9, "odds_ratio")
        else:
            c = _solve(lambda c: sum(ratio(c)) - booksum, 1e-12, 1.0, "odds_ratio")
        pi = ratio(c)
    if any(x <= 0 for x in pi):
        raise MarginError(f"{method} cannot reach a margin of {margin} for these probabilities")
    if any(x >= 1 for x in pi):
        raise MarginError(f"a margin of {margin} by {method} would price an outcome at odds <= 1.00")
    return [1.0 / x for x in pi]
