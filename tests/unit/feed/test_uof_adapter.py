"""UOF XML into normalised events, on the real samples in ../shared/data/uof."""

import pytest
from livebet.feed.v1 import event_pb2 as ev

from feed.adapters.uof import MAX_MESSAGE_BYTES, UofError, parse
from tests.shared_data import UOF, needs

SAMPLES = UOF
pytestmark = needs(SAMPLES)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def test_odds_change_gives_the_live_match_state() -> None:
    p = parse(sample("odds_change-0.xml"), "sportradar")
    assert p.message_type == "odds_change"
    (e,) = p.events
    assert e.provider == "sportradar:2"
    assert e.match_id == "sr:match:123"
    s = e.match_state.state
    assert s.status == ev.MATCH_STATUS_LIVE
    assert s.period == ev.PERIOD_SECOND_HALF
    assert (s.clock.minute, s.clock.second) == (75, 2)
    assert (s.score.home, s.score.away) == (2, 2)
    assert [(x.home, x.away) for x in s.period_scores] == [(2, 0), (0, 2)]
    assert (s.home_cards.yellow, s.away_cards.yellow, s.home_cards.red, s.away_cards.red) == (1, 1, 0, 0)
    assert e.produced_at.ToMilliseconds() == 1234
    # its markets (47, 48, 49, 123, 188, 899, ...) are not traded by livebet: counted and skipped
    assert p.skipped_markets >= 6


def test_the_same_message_gets_the_same_event_ids_and_another_message_others() -> None:
    raw = sample("odds_change-0.xml")
    a, b = parse(raw), parse(raw)
    assert [e.event_id for e in a.events] == [e.event_id for e in b.events]
    changed = raw.replace(b'home_score="2" away_score="2"', b'home_score="3" away_score="2"')
    assert parse(changed).events[0].event_id != a.events[0].event_id


def test_fixture_document_gives_teams_start_and_competition() -> None:
    (e,) = parse(sample("fixture-0.xml")).events
    f = e.fixture_change.fixture
    assert f.match_id == "sr:match:18001015"
    assert (f.home.name, f.away.name) == ("Ajax Amsterdam", "Tottenham Hotspur")
    assert f.competition == "UEFA Champions League"
    assert f.start_time.ToJsonString() == "2019-05-08T19:00:00Z"


def test_settlement_factors_map_to_results() -> None:
    # the real sample, with its market 201 renumbered to total (18) and outcomes to over/under
    raw = sample("bet_settlement.xml").replace(b'<market id="201">', b'<market id="18" specifiers="total=2.25">')
    raw = raw.replace(b'id="863"', b'id="12"').replace(b'id="864"', b'id="13"')
    p = parse(raw, "sportradar")
    (e,) = p.events
    assert e.bet_settlement.certainty == ev.SETTLEMENT_CERTAINTY_CONFIRMED
    (market,) = e.bet_settlement.markets
    assert market.market.market_key == "total|total=2.25"
    over, under = market.outcomes
    assert (over.outcome_id, over.result, over.void_factor) == ("over", ev.OUTCOME_RESULT_VOID, "1")
    assert (under.outcome_id, under.result, under.void_factor) == ("under", ev.OUTCOME_RESULT_HALF_LOSE, "0.5")
    assert p.skipped_markets == 4  # 193, 204 (tennis), 535 and 40 are not traded


def test_real_settlement_cancel_and_rollback_samples_of_untraded_markets_are_skipped_not_widened() -> None:
    for name in ("bet_settlement.xml", "bet_cancel.xml", "rollback_bet_cancel.xml"):
        p = parse(sample(name))
        assert p.skipped_message and not p.events, name  # never "every market of the match"
        assert p.skipped_markets >= 1


def test_bet_cancel_window_and_reason() -> None:
    raw = sample("bet_cancel.xml").replace(b'id="62" specifiers="goalnr=1"', b'id="8" specifiers="goalnr=1"')
    (e,) = parse(raw).events
    c = e.bet_cancel
    assert c.start_time.ToMilliseconds() == 1564597838000
    assert c.end_time.ToMilliseconds() == 1564598513000
    assert c.void_reason == "12"
    assert c.markets[0].market_key == "next_goal|goalnr=1"


def test_rollback_of_a_cancel_names_its_market() -> None:
    raw = sample("rollback_bet_cancel.xml").replace(b'id="48" specifiers="score=41.5"', b'id="1"')
    (e,) = parse(raw).events
    assert [m.market_key for m in e.rollback_bet_cancel.markets] == ["1x2"]


def test_alive_bet_stop_and_snapshot_complete() -> None:
    (alive,) = parse(b'<alive product="1" timestamp="1700000000000" subscribed="1"/>', "sr").events
    assert alive.provider == "sr:1" and alive.provider_alive.subscribed and alive.match_id == ""
    (stop,) = parse(b'<bet_stop event_id="sr:match:9" product="1" timestamp="1" groups="all"/>').events
    assert list(stop.bet_stop.market_groups) == ["all"]
    (snap,) = parse(b'<snapshot_complete product="1" request_id="42" timestamp="1"/>').events
    assert snap.snapshot_complete.request_id == "42"


def test_unknown_message_types_are_skipped() -> None:
    p = parse(sample("markets-1.xml"))
    assert p.skipped_message and not p.events


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"<odds_change event_id='x'", "not well-formed"),
        (b"<odds_change timestamp='1'/>", "event_id"),
        (b"<odds_change event_id='m' timestamp='soon'/>", "milliseconds"),
        (
            b"<bet_settlement event_id='m' timestamp='1'><outcomes><market id='1'><outcome id='1' result='2'/>"
            b"</market></outcomes></bet_settlement>",
            "result must be 0 or 1",
        ),
        (b"<bet_stop event_id='m' timestamp='1' product='x'/><!-- ok -->" + b" " * MAX_MESSAGE_BYTES, "limit"),
        (b'<!DOCTYPE x [<!ENTITY a "aaaa">]><alive timestamp="1">&a;</alive>', "refused XML"),
        (
            b"<odds_change event_id='m' timestamp='1'><odds><market id='18'><outcome id='12' odds='1.9'/></market>"
            b"</odds></odds_change>",
            "needs specifiers",
        ),
    ],
)
def test_bad_messages_are_refused_with_the_reason(raw: bytes, message: str) -> None:
    with pytest.raises(UofError, match=message):
        parse(raw)
