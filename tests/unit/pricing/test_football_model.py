"""The in-play model: the plain configuration is independent Poisson; the full one is documented."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.football import (
    INPLAY,
    POISSON,
    MatchState,
    Period,
    fit_expected_goals,
    fit_profile_slope,
    remaining_means,
    remaining_share,
    score_model,
)
from pricing.margin import apply_margin
from pricing.markets import fair_probabilities


def test_plain_poisson_at_kick_off_gives_the_published_numbers() -> None:
    f = fair_probabilities(score_model(1.6, 1.1, MatchState(), POISSON))
    assert f["1x2"]["home"] == pytest.approx(0.489574, abs=5e-7)
    assert f["1x2"]["draw"] == pytest.approx(0.248911, abs=5e-7)
    assert f["1x2"]["away"] == pytest.approx(0.261515, abs=5e-7)
    assert f["total:2.5"]["over"] == pytest.approx(0.506376, abs=5e-7)
    assert f["btts"]["yes"] == pytest.approx(0.532438, abs=5e-7)


@settings(max_examples=100, deadline=None)
@given(minute=st.floats(0, 90), hxg=st.floats(0.2, 4), axg=st.floats(0.2, 4))
def test_plain_poisson_scales_expected_goals_by_the_remaining_fraction_of_90(
    minute: float, hxg: float, axg: float
) -> None:
    state = MatchState(minute=minute, period=Period.FIRST_HALF if minute < 45 else Period.SECOND_HALF)
    h, a = remaining_means(hxg, axg, state, POISSON)
    assert h == pytest.approx(hxg * (90 - minute) / 90, abs=1e-12)
    assert a == pytest.approx(axg * (90 - minute) / 90, abs=1e-12)


def test_plain_poisson_btts_in_play_is_the_product_of_poisson_terms() -> None:
    f = fair_probabilities(score_model(1.6, 1.1, MatchState(minute=60, home_goals=1), POISSON))
    away_scores = 1 - math.exp(-1.1 / 3)
    assert f["btts"]["yes"] == pytest.approx(away_scores, abs=1e-9)


def test_more_of_the_intensity_is_late_in_the_inplay_profile() -> None:
    first = remaining_share(MatchState(), INPLAY).first_half
    assert 0.40 < first < 0.47
    assert fit_profile_slope(first) == pytest.approx(INPLAY.profile_slope, abs=1e-9)
    early = 1 - remaining_share(MatchState(minute=15, period=Period.FIRST_HALF), INPLAY).match
    late = remaining_share(MatchState(minute=75, period=Period.SECOND_HALF), INPLAY).match
    assert late > early  # the last 15 minutes (and stoppage) carry more than the first 15


def test_announced_stoppage_replaces_the_expected_one() -> None:
    base = MatchState(minute=90, period=Period.SECOND_HALF)
    more = MatchState(minute=90, period=Period.SECOND_HALF, stoppage_announced=10)
    assert remaining_share(more, INPLAY).match > remaining_share(base, INPLAY).match > 0
    played = MatchState(minute=90, period=Period.SECOND_HALF, stoppage_announced=4, stoppage_played=4)
    assert remaining_share(played, INPLAY).match == 0


def test_a_red_card_moves_scoring_from_the_ten_men_to_their_opponents() -> None:
    s0 = MatchState(minute=30, period=Period.FIRST_HALF)
    s1 = MatchState(minute=30, period=Period.FIRST_HALF, home_red_cards=1)
    (h0, a0), (h1, a1) = remaining_means(1.5, 1.2, s0, INPLAY), remaining_means(1.5, 1.2, s1, INPLAY)
    assert h1 == pytest.approx(h0 * INPLAY.red_card_own)
    assert a1 == pytest.approx(a0 * INPLAY.red_card_opponent)
    f0 = fair_probabilities(score_model(1.5, 1.2, s0))["1x2"]["home"]
    f1 = fair_probabilities(score_model(1.5, 1.2, s1))["1x2"]["home"]
    assert f1 < f0


def test_fitting_recovers_the_expected_goals_that_made_the_odds() -> None:
    f = fair_probabilities(score_model(1.7, 0.9, MatchState(), POISSON))
    p = [f["1x2"]["home"], f["1x2"]["draw"], f["1x2"]["away"]]
    odds = apply_margin(p, 0.0, "shin")
    ou = apply_margin([f["total:2.5"]["over"], f["total:2.5"]["under"]], 0.0, "shin")
    hx, ax = fit_expected_goals(*odds, *ou, model=POISSON)
    assert (hx, ax) == pytest.approx((1.7, 0.9), abs=1e-6)


def test_the_same_odds_are_fitted_once() -> None:
    """A fixture re-sent with the same odds (a provider's recovery re-sends hundreds) costs no fit."""
    odds = (2.05, 3.55, 3.85, 1.83, 2.02)
    first = fit_expected_goals(*odds)
    hits = fit_expected_goals.cache_info().hits
    assert fit_expected_goals(*odds) == first
    assert fit_expected_goals.cache_info().hits == hits + 1
    assert fit_expected_goals(2.05, 3.55, 3.9, 1.83, 2.02) != first  # other odds: fitted


def test_fitted_model_reproduces_a_real_demargined_market() -> None:
    # Arsenal v Nott'm Forest, 12 Aug 2023, Pinnacle closing: 1.19 / 8.00 / 16.00, O/U 2.5 1.49 / 2.65
    hx, ax = fit_expected_goals(1.19, 8.0, 16.0, 1.49, 2.65)
    from pricing.margin import remove_margin

    market = remove_margin([1.19, 8.0, 16.0], "shin")
    f = fair_probabilities(score_model(hx, ax, MatchState()))
    model = [f["1x2"]["home"], f["1x2"]["draw"], f["1x2"]["away"]]
    assert model == pytest.approx(market, abs=0.01)
    assert hx > 2 * ax


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"minute": 95}, "minute must be between 0 and 90"),
        ({"home_goals": -1}, "cannot be negative"),
        ({"away_red_cards": 6}, "abandoned"),
    ],
)
def test_impossible_states_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MatchState(**kwargs)  # type: ignore[arg-type]


def test_non_positive_expected_goals_are_refused() -> None:
    with pytest.raises(ValueError, match="expected goals must be positive"):
        score_model(0.0, 1.0, MatchState())
