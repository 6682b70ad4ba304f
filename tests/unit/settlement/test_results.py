"""Open legs to per-outcome results and returns, through pricing.settlement (no I/O)."""

from decimal import Decimal

from livebet.betting.v1 import bet_pb2

from settlement.domain.results import MatchResult, OpenLeg, results_by_market

D = Decimal


def _one(result: MatchResult, key: str, outcome: str, odds: str = "2.00") -> tuple[int, Decimal] | None:
    got = results_by_market(result, [OpenLeg(key, outcome, D(odds))])
    if key not in got:
        return None
    (r,) = got[key]
    return int(r["result"]), D(str(r["rpu"]))  # type: ignore[call-overload]


def test_quarter_lines_split_the_stake() -> None:
    one_nil = MatchResult(1, 0, ended=True)
    assert _one(one_nil, "asian_handicap|hcp=-0.25", "home") == (bet_pb2.BET_RESULT_WON, D("2.00"))
    assert _one(one_nil, "asian_handicap|hcp=-0.75", "home") == (bet_pb2.BET_RESULT_HALF_WON, D("1.500"))
    assert _one(one_nil, "asian_handicap|hcp=-1.0", "home") == (bet_pb2.BET_RESULT_VOID, D(1))
    assert _one(one_nil, "asian_handicap|hcp=-1.25", "home") == (bet_pb2.BET_RESULT_HALF_LOST, D("0.5"))
    assert _one(one_nil, "asian_handicap|hcp=-1.25", "away") == (bet_pb2.BET_RESULT_HALF_WON, D("1.500"))
    assert _one(one_nil, "total|total=1.25", "under") == (bet_pb2.BET_RESULT_HALF_WON, D("1.500"))
    assert _one(one_nil, "total|total=1.25", "over") == (bet_pb2.BET_RESULT_HALF_LOST, D("0.5"))


def test_only_what_the_result_decides_is_settled() -> None:
    live = MatchResult(1, 0, ended=False, goal_sides=("home",))
    assert _one(live, "1x2", "home") is None  # not over yet
    assert _one(live, "next_goal|goalnr=1", "home") == (bet_pb2.BET_RESULT_WON, D("2.00"))
    assert _one(live, "next_goal|goalnr=2", "none") is None
    assert _one(live, "halftime_1x2", "home") is None
    ht = MatchResult(1, 0, ended=False, halftime=(0, 0))
    assert _one(ht, "halftime_1x2", "draw") == (bet_pb2.BET_RESULT_WON, D("2.00"))
    ended = MatchResult(1, 0, ended=True, goal_sides=("home",))
    assert _one(ended, "next_goal|goalnr=2", "none") == (bet_pb2.BET_RESULT_WON, D("2.00"))
    assert _one(ended, "1x2", "nobody") == (bet_pb2.BET_RESULT_VOID, D(1))  # unknown outcome: stake back


def test_provider_results_apply_void_and_dead_heat_factors() -> None:
    from settlement.domain.results import provider_results

    legs = [OpenLeg("1x2", "home", D("3.00")), OpenLeg("1x2", "draw", D("3.00")), OpenLeg("btts", "yes", D("2.00"))]
    got = provider_results([("home", 1, "", "0.5"), ("draw", 1, "0.5", "")], legs, "1x2")
    assert [(r["outcome_id"], D(str(r["rpu"]))) for r in got] == [("draw", D("2.00")), ("home", D("1.50"))]
    assert provider_results([("away", 2, "", "")], legs, "1x2") == []  # nothing open on it
    assert provider_results([("home", 1, "", "7")], legs, "1x2") == []  # a factor out of range: left open
