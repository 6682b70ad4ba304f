"""The match simulator: deterministic, realistic, and its events are valid feed input."""

from collections import Counter

from feed.adapters.uof import parse
from feed.domain.simulator import Kind, expected_mean_goals, poisson_mean_goals, simulate
from feed.simulator import Normaliser, schedule, uof_fixture, uof_odds_change


def test_the_same_seed_plays_the_same_matches() -> None:
    a, b = simulate(5, seed=11), simulate(5, seed=11)
    assert [(m.home, m.away, m.final_score, len(m.incidents)) for m in a] == [
        (m.home, m.away, m.final_score, len(m.incidents)) for m in b
    ]
    assert [m.final_score for m in simulate(5, seed=12)] != [m.final_score for m in a]


def test_goals_follow_the_expected_goals_and_incidents_look_like_football() -> None:
    matches = simulate(400, seed=3)
    assert abs(poisson_mean_goals(matches) - expected_mean_goals(matches)) < 0.1 * expected_mean_goals(matches)
    per_match = {k: v / len(matches) for k, v in Counter(i.kind for m in matches for i in m.incidents).items()}
    assert 2.5 < per_match[Kind.YELLOW] < 6
    assert 0.03 < per_match[Kind.RED] < 0.4
    assert 0.1 < per_match[Kind.PENALTY_AWARDED] < 0.6
    assert per_match[Kind.VAR_STARTED] > 0
    assert per_match[Kind.POSSIBLE_GOAL] > per_match[Kind.GOAL]
    assert per_match[Kind.STOPPAGE_ANNOUNCED] == 2
    assert per_match[Kind.HALF_TIME] == per_match[Kind.FULL_TIME] == 1


def test_each_match_is_ordered_in_time_and_ends_at_full_time() -> None:
    for m in simulate(20, seed=5):
        seconds = [i.second for i in m.incidents]
        assert seconds == sorted(seconds)
        assert m.incidents[0].kind is Kind.KICK_OFF and m.incidents[-1].kind is Kind.FULL_TIME
        goals = [i for i in m.incidents if i.kind is Kind.GOAL]
        assert len(goals) == sum(m.final_score)
        # danger comes before the goal it announces
        for g in goals:
            before = [i for i in m.incidents if i.second <= g.second and i.side == g.side]
            assert any(i.kind in (Kind.POSSIBLE_GOAL, Kind.PENALTY_AWARDED) for i in before)


def test_normalised_events_have_increasing_sequences_and_uof_output_parses() -> None:
    matches = simulate(2, seed=9)
    norm = Normaliser()
    fixtures = [norm.fixture(m, 0) for m in matches]
    events = [e for _, m, i in schedule(matches) for e in norm.events(m, i, 1_000)]
    for m in matches:
        seqs = [e.sequence for e in events if e.match_id == m.match_id]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert all(e.event_id and e.WhichOneof("payload") for e in events)
    (parsed_fixture,) = parse(uof_fixture(fixtures[0]), "sim").events
    assert parsed_fixture.fixture_change.fixture.home.name == matches[0].home
    first = matches[0].match_id
    last_state = [e for e in events if e.WhichOneof("payload") == "match_state" and e.match_id == first][-1]
    (parsed,) = parse(uof_odds_change(last_state), "sim").events
    s = parsed.match_state.state
    assert (s.score.home, s.score.away) == matches[0].final_score


def test_staggered_kick_offs_do_not_tick_their_minutes_together() -> None:
    plain, staggered = simulate(8, seed=21), simulate(8, seed=21, stagger_s=120)
    assert [(m.home, m.away, m.final_score) for m in plain] == [(m.home, m.away, m.final_score) for m in staggered]
    offsets = [m.kick_off_offset for m in staggered]
    assert all(i * 120 <= o < i * 120 + 60 for i, o in enumerate(offsets)), offsets
    # each match's clock updates fall at its own second of the minute, not all at the same one
    clock_phase = {
        m.match_id: {(m.kick_off_offset + i.second) % 60 for i in m.incidents if i.kind is Kind.CLOCK}
        for m in staggered
    }
    assert len({frozenset(p) for p in clock_phase.values()}) > 4, clock_phase
    assert simulate(8, seed=21, stagger_s=120)[3].kick_off_offset == offsets[3]  # deterministic for a seed
