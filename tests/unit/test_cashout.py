"""Cash-out pricing (betting.domain.cashout): the value of a bet from its legs' live prices."""

from decimal import Decimal

import pytest
from livebet.betting.v1 import bet_pb2

from betting.domain.cashout import CashOutLeg, offer
from betting.domain.rules import Config, Refusal

D = Decimal
NO_MARGIN = D(0)


def test_a_single_is_worth_its_stake_times_the_odds_taken_over_the_odds_now() -> None:
    # 10.00 at 3.00; the outcome is now 1.50 (it got likelier): worth 20.00 before the margin
    assert offer(1_000, [CashOutLeg(D("3.00"), current=D("1.50"))], NO_MARGIN, 3_000) == 2_000
    assert offer(1_000, [CashOutLeg(D("3.00"), current=D("1.50"))], D("0.05"), 3_000) == 1_900
    # drifted to 6.00: worth half the stake
    assert offer(1_000, [CashOutLeg(D("3.00"), current=D("6.00"))], NO_MARGIN, 3_000) == 500


def test_the_offer_is_rounded_down_and_never_above_the_potential_payout() -> None:
    assert offer(1_000, [CashOutLeg(D("2.00"), current=D("3.00"))], NO_MARGIN, 2_000) == 666  # 666.67
    # at 1.01 now a 5.00 bet at 2.00 is worth 990.09: capped at what it could ever pay
    assert offer(500, [CashOutLeg(D("2.00"), current=D("1.01"))], NO_MARGIN, 1_000) == 990
    assert offer(1_000, [CashOutLeg(D("2.00"), current=D("1.01"))], NO_MARGIN, 1_500) == 1_500


def test_an_accumulator_multiplies_its_open_legs_and_the_returns_of_its_settled_ones() -> None:
    legs = [
        CashOutLeg(D("2.00"), settled_return=D("2.00")),  # won
        CashOutLeg(D("1.80"), settled_return=D("1")),  # void
        CashOutLeg(D("3.00"), current=D("2.00")),  # open, shortened
    ]
    # 10.00 x 2.00 x 1 x 1.5 = 30.00
    assert offer(1_000, legs, NO_MARGIN, 10_800) == 3_000
    half_won = [CashOutLeg(D("1.90"), settled_return=D("1.45")), CashOutLeg(D("2.00"), current=D("2.00"))]
    assert offer(1_000, half_won, NO_MARGIN, 3_800) == 1_450


def test_a_lost_leg_leaves_no_offer() -> None:
    legs = [CashOutLeg(D("2.00"), settled_return=D("0")), CashOutLeg(D("3.00"), current=D("1.20"))]
    with pytest.raises(Refusal) as info:
        offer(1_000, legs, NO_MARGIN, 6_000)
    assert info.value.reason == bet_pb2.REJECT_REASON_CASH_OUT_UNAVAILABLE and "lost" in info.value.message


def test_a_bet_worth_less_than_a_cent_has_no_offer() -> None:
    with pytest.raises(Refusal) as info:
        offer(10, [CashOutLeg(D("1.50"), current=D("900"))], NO_MARGIN, 15)
    assert info.value.reason == bet_pb2.REJECT_REASON_CASH_OUT_UNAVAILABLE


def test_an_open_leg_without_a_price_or_a_bad_margin_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="no current price"):
        offer(1_000, [CashOutLeg(D("2.00"))], NO_MARGIN, 2_000)
    with pytest.raises(ValueError, match="margin"):
        offer(1_000, [CashOutLeg(D("2.00"), current=D("2.00"))], D("1"), 2_000)


def test_the_cash_out_margin_is_configurable_and_checked() -> None:
    assert Config().cash_out_margin == D("0.05")
    assert Config.from_env({"LIVEBET_BETTING_CASH_OUT_MARGIN": "0.08"}).cash_out_margin == D("0.08")
    assert Config.from_env({"LIVEBET_BETTING_CASH_OUT_MARGIN": "0"}).cash_out_margin == D("0")
    for bad in ("-0.1", "0.9", "NaN", "lots"):
        with pytest.raises(ValueError, match="CASH_OUT_MARGIN"):
            Config.from_env({"LIVEBET_BETTING_CASH_OUT_MARGIN": bad})
