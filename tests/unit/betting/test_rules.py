"""Bet rules and money without I/O."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from livebet.betting.v1 import bet_pb2

from betting.domain.money import MoneyError, format_minor, parse_decimal, to_minor
from betting.domain.rules import (
    Config,
    Kind,
    Leg,
    Quote,
    Refusal,
    Ticket,
    check_ticket,
    combined_odds,
    payout,
    price_leg,
)

CFG = Config()
LEG = Leg("m", "1x2", "1x2", "home", Decimal("2.10"), 3)


def test_money_parsing_refuses_what_a_currency_cannot_hold() -> None:
    assert parse_decimal("10.50", "EUR") == 1050 and parse_decimal("7", "JPY") == 7
    assert parse_decimal("1.234", "KWD") == 1234
    for text, cur in [("1.005", "EUR"), ("1.5", "JPY"), ("NaN", "EUR"), ("-1", "EUR"), ("1e3", "EUR"), ("", "EUR")]:
        with pytest.raises(MoneyError):
            parse_decimal(text, cur)
    with pytest.raises(MoneyError, match="disagree"):
        to_minor("EUR", 100, "2.00")
    with pytest.raises(MoneyError, match="too large"):
        to_minor("EUR", 10**16, "")
    with pytest.raises(MoneyError, match="not supported"):
        to_minor("XXX", 100, "")
    assert format_minor(-1050, "EUR") == "-10.50" and format_minor(7, "JPY") == "7"


@given(st.integers(1, 10**15), st.sampled_from(["EUR", "JPY", "KWD"]))
def test_money_round_trips_through_its_decimal_text(units: int, currency: str) -> None:
    assert parse_decimal(format_minor(units, currency), currency) == units


def test_policies() -> None:
    quote = Quote(True, Decimal("2.20"), 5)
    with pytest.raises(Refusal) as err:
        price_leg(LEG, quote, bet_pb2.ODDS_CHANGE_POLICY_NONE, CFG)
    assert err.value.reason == bet_pb2.REJECT_REASON_ODDS_CHANGED
    assert price_leg(LEG, quote, bet_pb2.ODDS_CHANGE_POLICY_HIGHER, CFG) == Decimal("2.20")
    lower = Quote(True, Decimal("2.00"), 5)
    with pytest.raises(Refusal):
        price_leg(LEG, lower, bet_pb2.ODDS_CHANGE_POLICY_HIGHER, CFG)
    assert price_leg(LEG, lower, bet_pb2.ODDS_CHANGE_POLICY_ANY, CFG) == Decimal("2.00")
    with pytest.raises(Refusal) as err:
        price_leg(LEG, Quote(False, Decimal("2.10"), 5, "goal"), bet_pb2.ODDS_CHANGE_POLICY_ANY, CFG)
    assert err.value.kind is Kind.FAILED_PRECONDITION and "goal" in err.value.message


def test_combined_odds_round_down_and_payout_floors() -> None:
    assert combined_odds([Decimal("1.91"), Decimal("2.37")]) == Decimal("4.52")  # 4.5267
    assert payout(333, Decimal("1.95")) == 649  # 649.35
    with pytest.raises(Refusal) as err:
        check_ticket(Ticket("r", (LEG,), "EUR", 5, 1), [Decimal("2")], CFG)
    assert err.value.reason == bet_pb2.REJECT_REASON_STAKE_LIMIT
    with pytest.raises(Refusal) as err:
        check_ticket(Ticket("r", (LEG,), "EUR", 1_000_000, 1), [Decimal("500")], CFG)
    assert err.value.reason == bet_pb2.REJECT_REASON_PAYOUT_LIMIT


def test_config_from_env() -> None:
    c = Config.from_env(
        {"LIVEBET_BETTING_MAX_STAKE": "500", "LIVEBET_BETTING_IN_PLAY_DELAY": "football=5,football/next_goal=8"}
    )
    assert c.max_stake == Decimal(500)
    assert c.delay("football", "next_goal", True) == 8 and c.delay("football", "1x2", True) == 5
    assert c.delay("football", "1x2", False) == 0
    for bad in ({"LIVEBET_BETTING_MAX_STAKE": "NaN"}, {"LIVEBET_BETTING_IN_PLAY_DELAY": "football=x"}):
        with pytest.raises(ValueError, match="LIVEBET_BETTING"):
            Config.from_env(bad)
