"""Cash-out pricing (pure: no I/O): what an accepted bet is worth now, from the live prices of its
open legs.

A leg bet at odds ``a`` whose outcome is offered now at ``c`` is worth ``a / c`` per unit staked:
backing the same outcome now with ``a / c`` units would pay what the leg pays. A leg already
settled is worth its return per unit (its odds when won, 1 when void, half-way values for the
quarter lines); one that lost makes the bet worth nothing. An accumulator is worth its stake times
the product over its legs. The offer is that value less the cash-out margin, rounded down to the
currency's minor unit, and never more than the bet's potential payout.

The prices on offer carry the bookmaker's margin already (they are shorter than fair), so ``a / c``
is a little more than the leg is fairly worth; the cash-out margin (``Config.cash_out_margin``,
5 % by default) keeps the house from paying out above value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from livebet.betting.v1 import bet_pb2

from betting.domain.money import format_minor
from betting.domain.rules import Kind, Refusal, payout


@dataclass(frozen=True)
class CashOutLeg:
    accepted: Decimal  # the odds the leg stands at
    settled_return: Decimal | None = None  # return per unit once its market is settled (0: lost)
    current: Decimal | None = None  # the price on offer now, for a leg still open


def offer(stake: int, legs: Sequence[CashOutLeg], margin: Decimal, potential_payout: int) -> int:
    """The cash-out amount in minor units, or a :class:`Refusal` (CASH_OUT_UNAVAILABLE) when the
    bet is worth nothing: a leg lost. A leg still open must come with its current price (the caller
    refuses a bet with a leg whose market is not open before asking)."""
    if not 0 <= margin < 1:
        raise ValueError(f"cash-out margin must be in [0, 1), got {margin}")
    value = Decimal(stake)
    for i, leg in enumerate(legs):
        if leg.settled_return is not None:
            if leg.settled_return <= 0:
                raise Refusal(Kind.FAILED_PRECONDITION, bet_pb2.REJECT_REASON_CASH_OUT_UNAVAILABLE, "a leg has lost")
            value *= leg.settled_return
        elif leg.current is None or leg.current <= 0:
            raise ValueError(f"leg {i} is open and has no current price")
        else:
            value *= leg.accepted / leg.current
    amount = int((value * (1 - margin)).to_integral_value(rounding=ROUND_DOWN))
    amount = min(amount, potential_payout)
    if amount <= 0:
        raise Refusal(Kind.FAILED_PRECONDITION, bet_pb2.REJECT_REASON_CASH_OUT_UNAVAILABLE, "the bet is worth nothing")
    return amount


@dataclass(frozen=True)
class Part:
    """A partial cash-out of ``stake`` minor units of a bet's stake."""

    stake: int  # the part closed
    left_payout: int  # the potential payout of the stake left
    released: int  # the potential payout the part takes with it (the most its offer can be)


def split(stake: int, potential_payout: int, odds: Decimal, part: int) -> Part:
    """Close ``part`` of a bet of ``stake`` at combined ``odds``: the stake left has the potential
    payout it would have had if placed so (``rules.payout``), the part takes the rest."""
    if not 0 < part < stake:
        raise ValueError(f"a part must be more than 0 and less than the stake {stake}, got {part}")
    left = min(payout(stake - part, odds), potential_payout)
    return Part(part, left, potential_payout - left)


def part_problem(stake: int, part: int, min_stake: int, currency: str) -> str | None:
    """Why ``part`` cannot be cashed out of a bet staking ``stake`` (None: it can). The part and
    what is left must each be at least the minimum stake; the whole stake is a whole cash-out."""

    def m(amount: int) -> str:
        return f"{format_minor(amount, currency)} {currency}"

    if part <= 0:
        return "must be more than 0"
    if part > stake:
        return f"{m(part)} is more than the bet's stake {m(stake)}"
    if part < min_stake:
        return f"{m(part)} is below the minimum stake {m(min_stake)}"
    if part < stake and stake - part < min_stake:
        return f"{m(part)} would leave {m(stake - part)} on the bet, below the minimum stake {m(min_stake)}"
    return None


def builder_offer(payout_if_won: int, probability: float, margin: Decimal) -> int:
    """A bet builder's cash-out amount in minor units. It pays ``payout_if_won`` if every leg
    wins, which the match's model puts at ``probability`` now (the open legs together, counting how
    they depend on each other; the legs already won are certain). It is worth that payout times the
    probability; the offer is that less the cash-out margin, rounded down, and never more than the
    payout. A :class:`Refusal` (CASH_OUT_UNAVAILABLE) when it is worth nothing.

    A leg's own price cannot be used as for an accumulator: the legs of one match are not
    independent, so the product of ``accepted / current`` would misprice the bet."""
    if not 0 <= margin < 1:
        raise ValueError(f"cash-out margin must be in [0, 1), got {margin}")
    if not 0 <= probability <= 1:
        raise ValueError(f"a probability is in [0, 1], got {probability}")
    value = Decimal(payout_if_won) * Decimal(repr(probability))
    amount = min(int((value * (1 - margin)).to_integral_value(rounding=ROUND_DOWN)), payout_if_won)
    if amount <= 0:
        raise Refusal(Kind.FAILED_PRECONDITION, bet_pb2.REJECT_REASON_CASH_OUT_UNAVAILABLE, "the bet is worth nothing")
    return amount
