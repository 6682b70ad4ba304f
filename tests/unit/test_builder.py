"""Bet builder pricing (pricing.builder), its rules in a bet slip (betting.domain.rules) and its
cash-out (betting.domain.cashout)."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from livebet.betting.v1 import bet_pb2
from livebet.betting.v1 import betting_service_pb2 as bs
from livebet.odds.v1 import market_pb2

from betting.domain.cashout import builder_offer
from betting.domain.rules import BadRequest, Config, Quote, Refusal, is_builder, parse_request, price_builder
from pricing import builder as bb
from pricing.football import MAX_GOALS, MatchState, Period, score_model
from pricing.live import codec
from pricing.live.book import LiveMatch

STATE = MatchState(minute=0.0)
_I, _J = np.indices((MAX_GOALS + 1, MAX_GOALS + 1))


def _brute(grid: np.ndarray, wins: np.ndarray) -> float:
    return float((grid * wins).sum())


def test_the_joint_probability_is_the_grid_over_the_scores_where_every_pick_wins() -> None:
    sm = score_model(1.6, 1.1, STATE)
    picks = [bb.Pick("1x2", "home"), bb.Pick("total|total=2.5", "over")]
    assert bb.joint_probability(sm, picks) == pytest.approx(_brute(sm.grid, (_I > _J) & (_I + _J > 2.5)))
    home = _brute(sm.grid, _I > _J)
    over = _brute(sm.grid, _I + _J > 2.5)
    joint = bb.joint_probability(sm, picks)
    assert joint > home * over  # they go together
    anti = bb.joint_probability(sm, [bb.Pick("1x2", "home"), bb.Pick("btts", "no")])
    assert anti == pytest.approx(_brute(sm.grid, (_I > _J) & ((_I == 0) | (_J == 0))))
    three = [
        bb.Pick("double_chance", "x2"),
        bb.Pick("team_total|team=away|total=1.5", "over"),
        bb.Pick("odd_even", "odd"),
    ]
    expected = (_I <= _J) & (_J > 1.5) & ((_I + _J) % 2 == 1)
    assert bb.joint_probability(sm, three) == pytest.approx(_brute(sm.grid, expected))
    hcp = [bb.Pick("asian_handicap|hcp=-1.5", "home"), bb.Pick("exact_goals", "3")]
    assert bb.joint_probability(sm, hcp) == pytest.approx(_brute(sm.grid, (_I - 1.5 > _J) & (_I + _J == 3)))


def test_the_score_so_far_counts_in_play() -> None:
    state = MatchState(minute=60.0, home_goals=2, away_goals=0, period=Period.SECOND_HALF)
    sm = score_model(1.4, 1.2, state)
    # over 1.5 is won already: the pair is as likely as btts no alone (the away side scores no more)
    pair = bb.joint_probability(sm, [bb.Pick("btts", "no"), bb.Pick("total|total=1.5", "over")])
    assert pair == pytest.approx(_brute(sm.grid, _J == 0))
    cs = bb.joint_probability(sm, [bb.Pick("correct_score", "2-1"), bb.Pick("1x2", "home")])
    assert cs == pytest.approx(float(sm.grid[0, 1]))


@pytest.mark.parametrize(
    ("key", "outcome", "why"),
    [
        ("draw_no_bet", "home", "draw_no_bet cannot be in a bet builder"),
        ("next_goal|goalnr=1", "home", "next_goal cannot"),
        ("halftime_1x2", "home", "halftime_1x2 cannot"),
        ("total|total=2", "over", "only half lines"),
        ("total|total=2.25", "over", "only half lines"),
        ("asian_handicap|hcp=-1", "home", "only half lines"),
        ("total", "over", "no valid total line"),
        ("1x2", "nobody", "nobody"),
        ("correct_score", "two-one", "correct_score"),
    ],
)
def test_markets_that_can_push_or_do_not_follow_the_final_score_cannot_be_combined(
    key: str, outcome: str, why: str
) -> None:
    with pytest.raises(bb.NotCombinable, match=why):
        bb.check_combinable(bb.Pick(key, outcome))


def test_the_odds_carry_the_margin_and_are_rounded_down_to_the_ladder() -> None:
    # 1 / (0.25 x 1.10) = 3.636...: the ladder steps by 0.05 between 3 and 4
    assert bb.builder_odds(0.25, Decimal("0.10")) == Decimal("3.60")
    assert bb.builder_odds(0.5, Decimal("0")) == Decimal("2.00")
    with pytest.raises(bb.NotOffered, match="cannot all win"):
        bb.builder_odds(0.0, Decimal("0.10"))
    with pytest.raises(bb.NotOffered, match="all but certain"):
        bb.builder_odds(0.99, Decimal("0.10"))
    with pytest.raises(bb.NotOffered, match="above the ladder"):
        bb.builder_odds(0.0002, Decimal("0.10"))


def test_a_builder_takes_two_to_ten_picks_one_per_market() -> None:
    inputs = bb.ModelInputs(1.5, 1.2, STATE)
    with pytest.raises(bb.NotCombinable, match="2-10"):
        bb.price(inputs, [bb.Pick("1x2", "home")])
    with pytest.raises(bb.NotCombinable, match="one outcome of each market"):
        bb.price(inputs, [bb.Pick("1x2", "home"), bb.Pick("1x2", "draw")])
    with pytest.raises(bb.NotOffered):
        bb.price(inputs, [bb.Pick("1x2", "home"), bb.Pick("correct_score", "0-0")])
    odds, p = bb.price(inputs, [bb.Pick("1x2", "home"), bb.Pick("btts", "yes")])
    assert odds == bb.builder_odds(p, bb.DEFAULT_MARGIN)


def test_the_snapshot_carries_the_model_the_engine_priced_from() -> None:
    m = LiveMatch("u1", home_goals=1, minute=55.5, live=True, home_reds=1, stoppage=None)
    m.home_xg, m.away_xg = 1.7, 0.9
    m.reprice("test")
    snap = market_pb2.MatchOdds.FromString(codec.snapshot(m, Timestamp()))
    inputs = codec.model_inputs(snap)
    assert inputs is not None
    assert (inputs.home_xg, inputs.away_xg, inputs.state) == (1.7, 0.9, m.model_state())
    m.ended = True
    ended = codec.model_inputs(market_pb2.MatchOdds.FromString(codec.snapshot(m, Timestamp())))
    assert ended is not None and ended.state.period is Period.FULL_TIME
    bad = market_pb2.MatchOdds.FromString(codec.snapshot(m, Timestamp()))
    bad.model.minute = 130.0  # not a state the model prices: no inputs, rather than an error per bet
    assert codec.model_inputs(bad) is None
    for xg in (0.0, -1.0, float("nan"), float("inf")):
        odd = market_pb2.MatchOdds.FromString(codec.snapshot(m, Timestamp()))
        odd.model.home_expected_goals = xg
        assert codec.model_inputs(odd) is None
    m.mode = "provider"
    assert codec.model_inputs(market_pb2.MatchOdds.FromString(codec.snapshot(m, Timestamp()))) is None


def _slip(legs: list[tuple[str, str, str]], odds: str | None = "3.10") -> bs.PlaceBetRequest:
    req = bs.PlaceBetRequest(request_id="r")
    req.stake.currency_code, req.stake.minor_units = "EUR", 1_000
    for match, key, outcome in legs:
        s = req.selections.add()
        s.outcome.market.match_id, s.outcome.market.market_key, s.outcome.outcome_id = match, key, outcome
    if odds is not None:
        req.bet_builder_odds.decimal = odds
    return req


def test_a_slip_with_builder_odds_is_a_builder_and_its_legs_carry_them() -> None:
    t = parse_request(_slip([("m", "1x2", "home"), ("m", "btts", "yes")]), Config())
    assert t.builder == Decimal("3.10") and [leg.requested_odds for leg in t.legs] == [Decimal("3.10")] * 2
    assert is_builder([{"match_id": "m"}, {"match_id": "m"}])
    assert not is_builder([{"match_id": "m"}]) and not is_builder([{"match_id": "m"}, {"match_id": "n"}])
    with pytest.raises(BadRequest) as err:
        parse_request(_slip([("m", "1x2", "home"), ("n", "btts", "yes")]), Config())
    assert err.value.violations == [("selections[1]", "a bet builder's selections are all on one match, not n")]
    with pytest.raises(BadRequest) as err:
        parse_request(_slip([("m", "1x2", "home"), ("m", "btts", "yes")], None), Config())
    assert err.value.violations[0][0] == "selections[0].requested_odds"  # no builder odds: priced alone


def test_price_builder_applies_the_policy_to_the_builder_odds() -> None:
    inputs = bb.ModelInputs(1.5, 1.2, STATE)
    t = parse_request(_slip([("m", "1x2", "home"), ("m", "btts", "yes")]), Config())
    quotes = [Quote(True, Decimal("2.10"), 4), Quote(True, Decimal("1.85"), 4)]
    singles, odds = price_builder(t.legs, quotes, inputs, Decimal(0), bet_pb2.ODDS_CHANGE_POLICY_ANY, Config())
    assert singles == [Decimal("2.10"), Decimal("1.85")]
    price_builder(t.legs, quotes, inputs, odds, bet_pb2.ODDS_CHANGE_POLICY_NONE, Config())
    with pytest.raises(Refusal) as r:
        price_builder(t.legs, quotes, inputs, odds + 1, bet_pb2.ODDS_CHANGE_POLICY_HIGHER, Config())
    assert r.value.reason == bet_pb2.REJECT_REASON_ODDS_CHANGED
    with pytest.raises(Refusal) as r:
        price_builder(t.legs, [quotes[0], Quote(False, None, 5)], inputs, odds, 0, Config())
    assert r.value.reason == bet_pb2.REJECT_REASON_MARKET_NOT_OPEN
    with pytest.raises(Refusal) as r:
        price_builder(t.legs, quotes, None, odds, bet_pb2.ODDS_CHANGE_POLICY_ANY, Config())
    assert r.value.reason == bet_pb2.REJECT_REASON_INVALID_COMBINATION and "provider" in r.value.message


def test_a_builder_cash_out_is_its_payout_times_the_probability_less_the_margin() -> None:
    assert builder_offer(3_100, 0.3, Decimal("0.05")) == 883  # 3100 x 0.3 x 0.95 = 883.5
    assert builder_offer(3_100, 1.0, Decimal("0")) == 3_100
    with pytest.raises(Refusal):
        builder_offer(3_100, 0.0, Decimal("0.05"))
    with pytest.raises(ValueError):
        builder_offer(3_100, 1.5, Decimal("0.05"))


def test_the_builder_margin_is_a_setting() -> None:
    assert Config.from_env({}).builder_margin == Decimal("0.10")
    assert Config.from_env({"LIVEBET_BETTING_BUILDER_MARGIN": "0.15"}).builder_margin == Decimal("0.15")
    for bad in ("0.6", "-0.1", "abc", "NaN"):
        with pytest.raises(ValueError, match="LIVEBET_BETTING_BUILDER_MARGIN"):
            Config.from_env({"LIVEBET_BETTING_BUILDER_MARGIN": bad})
