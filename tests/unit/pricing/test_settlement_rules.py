"""Settlement rules: results and returns per unit stake, in Decimal."""

from decimal import Decimal

import pytest

from pricing.settlement import Result, Settled, SettlementError, return_per_unit, settle

D = Decimal


@pytest.mark.parametrize(
    ("market", "spec", "outcome", "score", "expected"),
    [
        ("asian_handicap", {"hcp": "-0.25"}, "home", (1, 1), "0.50"),
        ("asian_handicap", {"hcp": "-0.75"}, "home", (2, 1), "1.45"),
        ("total", {"total": "2.75"}, "over", (2, 1), "1.45"),
        ("asian_handicap", {"hcp": "-1.0"}, "home", (2, 1), "1.00"),
        ("asian_handicap", {"hcp": "-0.25"}, "away", (1, 1), "1.45"),
        ("total", {"total": "2.5"}, "under", (2, 1), "0"),
        ("total", {"total": "3.0"}, "under", (2, 1), "1.00"),
        ("total", {"total": "3.25"}, "under", (2, 1), "1.45"),
        ("total", {"total": "2.75"}, "under", (2, 1), "0.50"),
        ("team_total", {"team": "away", "total": "0.5"}, "over", (2, 1), "1.90"),
        ("draw_no_bet", {}, "home", (1, 1), "1"),
        ("1x2", {}, "draw", (1, 1), "1.90"),
        ("double_chance", {}, "x2", (0, 3), "1.90"),
        ("btts", {}, "yes", (2, 0), "0"),
        ("correct_score", {}, "2-1", (2, 1), "1.90"),
        ("correct_score", {}, "other", (7, 0), "1.90"),
        ("exact_goals", {}, "7+", (4, 4), "1.90"),
        ("odd_even", {}, "odd", (2, 1), "1.90"),
    ],
)
def test_returns_per_unit_at_odds_1_90(
    market: str, spec: dict[str, str], outcome: str, score: tuple[int, int], expected: str
) -> None:
    result = settle(market, spec, outcome, *score)
    assert return_per_unit(result, D("1.90")) == D(expected)


def test_quarter_lines_give_half_results() -> None:
    assert settle("asian_handicap", {"hcp": "-0.25"}, "home", 1, 1) is Result.HALF_LOSE
    assert settle("asian_handicap", {"hcp": "-0.75"}, "home", 2, 1) is Result.HALF_WIN
    assert settle("asian_handicap", {"hcp": "+0.25"}, "home", 1, 1) is Result.HALF_WIN


def test_next_goal_settles_on_the_nth_goal_or_none() -> None:
    assert settle("next_goal", {"goalnr": "2"}, "away", 1, 1, goal_sides=["home", "away"]) is Result.WIN
    assert settle("next_goal", {"goalnr": "3"}, "none", 1, 1, goal_sides=["home", "away"]) is Result.WIN
    with pytest.raises(SettlementError, match="goal_sides"):
        settle("next_goal", {"goalnr": "1"}, "home", 1, 0)


def test_dead_heat_pays_the_factor_share_at_full_odds() -> None:
    assert Settled(Result.WIN, dead_heat_factor=D("0.5")).return_per_unit(D("4.00")) == D("2.00")


def test_void_factor_returns_that_share_of_the_stake() -> None:
    assert Settled(Result.WIN, void_factor=D("0.5")).return_per_unit(D("1.90")) == D("1.45")
    assert Settled(Result.LOSE, void_factor=D("0.5")).return_per_unit(D("1.90")) == D("0.5")
    assert Settled(Result.LOSE, void_factor=D("1")).return_per_unit(D("1.90")) == D("1")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: settle("1x2", {}, "hoem", 1, 0), "no outcome 'hoem'"),
        (lambda: settle("total", {}, "over", 1, 0), "specifier 'total'"),
        (lambda: settle("total", {"total": "2.3"}, "over", 1, 0), "steps of 0.25"),
        (lambda: settle("corners", {}, "over", 1, 0), "unknown market type"),
        (lambda: settle("1x2", {}, "home", -1, 0), "negative"),
        (lambda: return_per_unit(Result.WIN, D("0.5")), "at least 1"),
    ],
)
def test_unsettleable_input_is_refused_with_the_reason(call: object, message: str) -> None:
    with pytest.raises((SettlementError, ValueError), match=message):
        call()  # type: ignore[operator]
