"""Player protection rules (responsible gambling), pure: no I/O.

A player's own limits come in sets (the stake limits: per bet and per 24 hours; the deposit
limits and the net loss limits: per 24 hours, 7 days and 30 days). Each amount is in minor units, or None for "no limit
of the player's own". Changing a set follows one rule, the one regulators ask for:

- **tighter at once**: a lower amount, or a limit where there was none, holds from the next bet
  or deposit;
- **looser after a cooling-off**: a higher amount, or no limit where there was one, waits
  (``pending``) until ``pending_from``; until then the tighter of the old and the new holds;
- asking again replaces whatever was pending (and starts a new cooling-off if it loosens).

A break (time-out or self-exclusion) only ever gets longer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from betting.domain.money import format_minor

Amounts = tuple[int | None, ...]

#: the shortest and the longest break a player can take
MIN_BREAK = timedelta(days=1)
MAX_BREAK = timedelta(days=1826)
#: the deposit (and loss) periods, in the order of a deposit (or loss) limit set
DEPOSIT_PERIODS = (("24 hours", timedelta(days=1)), ("7 days", timedelta(days=7)), ("30 days", timedelta(days=30)))
LOSS_PERIODS = DEPOSIT_PERIODS


def tighter(a: int | None, b: int | None) -> int | None:
    """The stricter of two limits (None: no limit)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


@dataclass(frozen=True)
class LimitSet:
    """A player's own limits of one kind: ``amounts`` in force, and a looser set asked for that
    takes over at ``pending_from`` (``pending`` is None when nothing waits)."""

    amounts: Amounts
    pending: Amounts | None = None
    pending_from: datetime | None = None

    def at(self, now: datetime) -> LimitSet:
        """The set as it stands at ``now``: a pending set whose cooling-off is over is in force."""
        if self.pending is not None and self.pending_from is not None and self.pending_from <= now:
            return LimitSet(self.pending)
        return self

    def change(self, wanted: Sequence[int | None], now: datetime, cooling_off: timedelta) -> LimitSet:
        """The set after the player asked for ``wanted`` at ``now``."""
        current = self.at(now).amounts
        wanted = tuple(wanted)
        if len(wanted) != len(current):
            raise ValueError(f"{len(wanted)} limits given for a set of {len(current)}")
        at_once = tuple(tighter(c, w) for c, w in zip(current, wanted, strict=True))
        if at_once == wanted:  # nothing loosened: all of it now, and nothing left pending
            return LimitSet(wanted)
        return LimitSet(at_once, wanted, now + cooling_off)


def deposit_refusal(limits: Amounts, deposited: Sequence[int], amount: int, currency: str) -> str | None:
    """Why a deposit of ``amount`` is refused (the first period whose limit it would pass), or
    None. ``deposited``: what the player deposited over each of :data:`DEPOSIT_PERIODS`."""
    for (period, _), limit, already in zip(DEPOSIT_PERIODS, limits, deposited, strict=True):
        if limit is not None and already + amount > limit:
            room = max(0, limit - already)
            return (
                f"deposits over {period} would be {format_minor(already + amount, currency)} {currency}, above your"
                f" limit of {format_minor(limit, currency)} {currency}"
                f" (you can deposit up to {format_minor(room, currency)} {currency} now)"
            )
    return None


def loss_refusal(period: int, limit: int, lost: int, stake: int, currency: str) -> str:
    """Why a bet of ``stake`` is refused for the loss limit of ``LOSS_PERIODS[period]``, the
    player's net loss over it being ``lost`` before this bet (negative when they are ahead)."""
    name = LOSS_PERIODS[period][0]
    room = max(0, limit - lost)
    return (
        f"net losses over {name} would be {format_minor(lost + stake, currency)} {currency} if this bet lost,"
        f" above your limit of {format_minor(limit, currency)} {currency}"
        f" (you can stake up to {format_minor(room, currency)} {currency} now)"
    )


def break_until(current: datetime | None, now: datetime, duration: timedelta) -> datetime:
    """The end of a break asked for at ``now``: never earlier than one already running."""
    wanted = now + duration
    return wanted if current is None or current < wanted else current
