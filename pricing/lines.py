"""Handicap and total lines: the one rule pricing and settlement share.

A line ending in .25 or .75 is a *quarter line*: the stake is split in two halves on the
neighbouring lines (over 2.75 = half on over 2.5, half on over 3.0). A whole line (2.0, -1.0) pushes
(stake returned) when the value lands on it; a half line (2.5) never pushes.
"""

from __future__ import annotations

from decimal import Decimal


def sub_lines(line: Decimal) -> tuple[Decimal, ...]:
    """The one or two lines a stake on ``line`` is split over."""
    quarter = Decimal("0.25")
    if (line * 4) % 1 != 0:
        raise ValueError(f"lines are in steps of 0.25, got {line}")
    if (line * 2) % 1 != 0:  # .25 or .75
        return (line - quarter, line + quarter)
    return (line,)


def parse_line(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise ValueError(f"not a line: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a line: {text!r}")
    sub_lines(value)
    return value


def format_line(line: Decimal | float) -> str:
    """Canonical text of a line: ``2.5``, ``-0.25``, ``1`` → ``1.0``."""
    d = Decimal(str(line)).normalize()
    text = format(d, "f")
    return text if "." in text else text + ".0"
