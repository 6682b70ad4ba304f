"""Cash-out pricing (betting.domain.cashout): the value of a bet from its legs' live prices."""

from decimal import Decimal

import pytest
from livebet.betting.v1 import bet_pb2

from betting.domain.cashout import CashOutLeg, offer, part_problem, split
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


def test_a_part_leaves_the_payout_its_rest_would_have_had_and_releases_the_remainder() -> None:
    # 10.00 at 2.35 (potential payout 23.50); 3.00 closed: 7.00 left pays 16.45, the part took 7.05
    part = split(1_000, 2_350, D("2.35"), 300)
    assert (part.stake, part.left_payout, part.released) == (300, 1_645, 705)
    # rounding down stays with the bet left: 0.33 at 3.33 (1.09) of 1.00 at 3.33 (3.33)
    part = split(100, 333, D("3.33"), 67)
    assert (part.left_payout, part.released) == (109, 224)
    # the part's offer is priced on its own stake and capped at what it released
    assert offer(300, [CashOutLeg(D("2.35"), current=D("1.01"))], NO_MARGIN, part.released) == part.released
    for bad in (0, 1_000, 1_001, -1):
        with pytest.raises(ValueError):
            split(1_000, 2_350, D("2.35"), bad)


def test_a_part_and_what_it_leaves_must_each_be_at_least_the_minimum_stake() -> None:
    assert part_problem(1_000, 300, 10, "EUR") is None
    assert part_problem(1_000, 1_000, 10, "EUR") is None  # the whole stake: a whole cash-out
    assert part_problem(1_000, 5, 10, "EUR") == "0.05 EUR is below the minimum stake 0.10 EUR"
    assert part_problem(1_000, 995, 10, "EUR") == (
        "9.95 EUR would leave 0.05 EUR on the bet, below the minimum stake 0.10 EUR"
    )
    assert part_problem(1_000, 1_001, 10, "EUR") == "10.01 EUR is more than the bet's stake 10.00 EUR"
    assert part_problem(1_000, 0, 10, "EUR") == "must be more than 0"
    assert part_problem(500, 250, 1, "JPY") is None
