"""The feed's pure policies: per-match ordering and provider liveness."""

import pytest

from feed.domain.liveness import Liveness, Status
from feed.domain.ordering import Sequencer, Verdict


def _publish(s: Sequencer, kind: str, seq: int, ms: int = -1) -> Verdict:
    d = s.decide("p", "m", kind, seq, ms)
    if d.verdict is Verdict.PUBLISH:
        s.commit("p", "m", kind, seq, ms)
    return d.verdict


def test_a_gap_is_reported_and_the_event_still_published() -> None:
    s = Sequencer()
    assert _publish(s, "match_state", 1) is Verdict.PUBLISH
    d = s.decide("p", "m", "match_state", 5, -1)
    assert d.verdict is Verdict.PUBLISH and d.gap == 3


def test_an_older_state_update_never_overwrites_a_newer_one() -> None:
    s = Sequencer()
    _publish(s, "match_state", 5)
    assert _publish(s, "match_state", 4) is Verdict.DROP_STALE
    assert _publish(s, "provider_odds", 3) is Verdict.DROP_STALE


def test_state_without_sequence_is_ordered_by_production_time() -> None:
    s = Sequencer()
    _publish(s, "match_state", 0, 2_000)
    assert _publish(s, "match_state", 0, 1_000) is Verdict.DROP_STALE
    assert _publish(s, "match_state", 0, 3_000) is Verdict.PUBLISH


@pytest.mark.parametrize(
    "kind",
    [
        "bet_settlement",
        "bet_cancel",
        "rollback_bet_settlement",
        "rollback_bet_cancel",
        "goal",
        "card",
        "fixture_change",
    ],
)
def test_results_cancels_rollbacks_and_incidents_are_never_dropped(kind: str) -> None:
    s = Sequencer()
    _publish(s, "match_state", 10, 5_000)
    d = s.decide("p", "m", kind, 2, 1_000)
    assert d.verdict is Verdict.PUBLISH and d.out_of_order


def test_a_batch_that_was_not_published_can_be_judged_again() -> None:
    s = Sequencer()
    _publish(s, "match_state", 1)
    saved = s.save({("p", "m"), ("p", "new")})
    _publish(s, "match_state", 2)
    s.decide("p", "new", "match_state", 1, -1)
    s.commit("p", "new", "match_state", 1, -1)
    s.load(saved)
    assert _publish(s, "match_state", 2) is Verdict.PUBLISH
    assert s.cursor("p", "new").last_sequence == 0


def test_a_silent_producer_goes_down_once_and_recovers_with_its_snapshot() -> None:
    live = Liveness(threshold=20)
    live.heard("sr:1", now=0)
    assert live.tick(now=19) == []
    (down,) = live.tick(now=21)
    assert (down.producer, down.status, down.last_seen) == ("sr:1", Status.DOWN, 0)
    assert live.tick(now=30) == []  # only once
    back = live.heard("sr:1", now=31)
    assert back is not None and back.status is Status.RECOVERING
    assert live.status("sr:1") is Status.RECOVERING
    up = live.heard("sr:1", now=32, snapshot_complete=True)
    assert up is not None and up.status is Status.UP
    assert live.status("sr:1") is Status.UP


def test_liveness_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Liveness(0)
