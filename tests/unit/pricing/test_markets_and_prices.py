"""Every market from one grid: sums, monotonicity, closing, agreement with settlement, and prices."""

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing import ladder
from pricing.football import MAX_GOALS, POISSON, MatchState, Period, score_model
from pricing.margin import METHODS, apply_margin
from pricing.markets import match_markets
from pricing.pricer import price_match
from pricing.settlement import Result, settle

states = st.builds(
    lambda minute, h, a, hr, ar: MatchState(
        minute=minute,
        home_goals=h,
        away_goals=a,
        home_red_cards=hr,
        away_red_cards=ar,
        period=Period.FIRST_HALF if minute < 45 else Period.SECOND_HALF,
    ),
    st.floats(0, 89.9),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 2),
    st.integers(0, 2),
)
xg = st.floats(0.3, 3.5)


@settings(max_examples=120, deadline=None)
@given(state=states, hxg=xg, axg=xg)
def test_every_market_sums_to_one_and_double_chance_to_two(state: MatchState, hxg: float, axg: float) -> None:
    for m in match_markets(score_model(hxg, axg, state)):
        assert np.all(m.probabilities >= -1e-15), m.key
        assert m.probabilities.sum() == pytest.approx(2.0 if m.key == "double_chance" else 1.0, abs=1e-9), m.key


@settings(max_examples=100, deadline=None)
@given(state=states, hxg=xg, axg=xg)
def test_a_home_goal_never_lowers_the_home_win_probability(state: MatchState, hxg: float, axg: float) -> None:
    before = match_markets(score_model(hxg, axg, state))[0].as_dict()["home"]
    after_state = MatchState(
        minute=state.minute,
        home_goals=state.home_goals + 1,
        away_goals=state.away_goals,
        home_red_cards=state.home_red_cards,
        away_red_cards=state.away_red_cards,
        period=state.period,
    )
    after = match_markets(score_model(hxg, axg, after_state))[0].as_dict()["home"]
    assert after >= before - 1e-12


@settings(max_examples=60, deadline=None)
@given(h=st.integers(0, 8), a=st.integers(0, 8), hxg=xg, axg=xg)
def test_at_full_time_every_market_collapses_to_its_result(h: int, a: int, hxg: float, axg: float) -> None:
    state = MatchState(minute=90, home_goals=h, away_goals=a, period=Period.FULL_TIME)
    sides = ["home"] * h + ["away"] * a
    for m in match_markets(score_model(hxg, axg, state)):
        assert m.closed, m.key
        spec = dict(m.specifiers)
        for outcome, p in m.as_dict().items():
            result = settle(m.market_type, spec, outcome, h, a, goal_sides=sides)
            if result is Result.WIN:
                assert p == pytest.approx(1.0, abs=1e-12), (m.key, outcome)
            elif result is Result.LOSE:
                assert p == pytest.approx(0.0, abs=1e-12), (m.key, outcome)


def _expected_from_settlement(m, sm) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Push-adjusted win share of each outcome, by settling every cell of the grid."""
    h0, a0 = sm.state.score
    win = dict.fromkeys(m.outcomes, 0.0)
    lose = dict.fromkeys(m.outcomes, 0.0)
    weight = {
        Result.WIN: (1, 0),
        Result.LOSE: (0, 1),
        Result.VOID: (0, 0),
        Result.HALF_WIN: (0.5, 0),
        Result.HALF_LOSE: (0, 0.5),
    }
    for i in range(MAX_GOALS + 1):
        for j in range(MAX_GOALS + 1):
            p = sm.grid[i, j]
            for o in m.outcomes:
                w, lo = weight[settle(m.market_type, dict(m.specifiers), o, h0 + i, a0 + j)]
                win[o] += p * w
                lose[o] += p * lo
    return {o: win[o] / (win[o] + lose[o]) if win[o] + lose[o] > 0 else 0.5 for o in m.outcomes}


@pytest.mark.parametrize(
    "state",
    [
        MatchState(),
        MatchState(minute=60, home_goals=1, period=Period.SECOND_HALF),
        MatchState(minute=30, home_goals=1, away_goals=2, period=Period.FIRST_HALF),
    ],
)
def test_prices_and_settlement_follow_one_rule(state: MatchState) -> None:
    """Each market's probability equals the expectation of the settlement rules over the grid."""
    sm = score_model(1.6, 1.1, state, POISSON)
    for m in match_markets(sm):
        if m.market_type in ("next_goal", "halftime_1x2", "double_chance"):
            continue  # need the goal order / first-half grid; double chance is not push-adjusted
        expected = _expected_from_settlement(m, sm)
        for o, p in m.as_dict().items():
            assert p == pytest.approx(expected[o], abs=1e-9), (m.key, o)


def test_a_decided_market_is_closed_and_not_priced() -> None:
    state = MatchState(minute=70, home_goals=2, away_goals=1, period=Period.SECOND_HALF)
    book = {m.key: m for m in price_match(1.5, 1.2, state).markets()}
    for key in ("total:2.5", "btts", "total:0.5", "team_total:home:1.5"):
        assert book[key].closed and not book[key].offered and not any(book[key].odds_cents), key
    assert book["total:3.5"].offered
    assert book["next_goal:4"].offered
    assert "halftime_1x2" not in book
    cs = dict(zip(book["correct_score"].outcomes, book["correct_score"].odds_cents, strict=True))
    assert cs["1-1"] == 0 and cs["2-1"] > 0  # scores already passed are not offered


@settings(max_examples=80, deadline=None)
@given(state=states, hxg=xg, axg=xg, margin=st.floats(0.0, 0.12), method=st.sampled_from(METHODS))
def test_the_rounded_book_never_falls_below_the_target_margin(
    state: MatchState, hxg: float, axg: float, margin: float, method: str
) -> None:
    for m in price_match(hxg, axg, state, margin, method).markets():
        if not m.offered:
            continue
        assert all(ladder.is_on_ladder(c) for c in m.odds_cents if c)
        assert all(c >= ladder.MIN_ODDS_CENTS for c in m.odds_cents if c)
        inverse = sum(100 / c for c in m.odds_cents if c)
        if m.key == "double_chance":
            continue  # each outcome is booked against its complement, not against the others
        assert inverse >= 1 + margin - 1e-9, (m.key, m.odds_cents)


@settings(max_examples=60, deadline=None)
@given(
    p=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=6).map(lambda xs: [x / sum(xs) for x in xs]),
    margin=st.floats(0.005, 0.12),
    method=st.sampled_from(METHODS),
)
def test_the_compiled_kernel_agrees_with_the_reference_margin(p: list[float], margin: float, method: str) -> None:
    from pricing.fast_margin import METHOD_CODES, solve_row

    if max(p) * (1 + margin) >= 0.98:
        return
    pa = np.array(p)
    r = np.zeros(len(p))
    solve_row(METHOD_CODES[method], pa, np.log(pa), 0, len(p), 1 + margin, r)
    try:
        reference = [1 / o for o in apply_margin(p, margin, method)]
    except ValueError:
        return
    assert r == pytest.approx(reference, abs=1e-10)


def test_ladder_rounds_down_and_clamps() -> None:
    cents = ladder.round_down(np.array([1.0, 1.005, 1.9, 2.03, 3.07, 7.3, 1e6]), 50000)
    assert cents.tolist() == [101, 101, 190, 202, 305, 720, 50000]
    assert ladder.to_text(185) == "1.85"
    assert Decimal(ladder.to_text(1050)) == Decimal("10.50")
