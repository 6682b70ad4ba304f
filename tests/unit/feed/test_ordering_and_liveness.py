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


def test_a_finished_match_is_forgotten_once_the_stream_no_longer_holds_its_events() -> None:
    from livebet.feed.v1 import event_pb2 as ev

    from feed.service import FORGET_AFTER_S, FeedCore

    core = FeedCore(publisher=None)  # type: ignore[arg-type]  # apply and forget publish nothing

    def event(match_id: str, kind: str, seq: int, at_s: float, status: int = ev.MATCH_STATUS_LIVE) -> ev.FeedEvent:
        e = ev.FeedEvent(event_id=f"{match_id}:{seq}", provider="p", match_id=match_id, sequence=seq)
        e.received_at.FromMilliseconds(int(at_s * 1000))
        if kind == "fixture":
            e.fixture_change.fixture.match_id = match_id
        else:
            e.match_state.state.status = status  # type: ignore[assignment]
        return e

    for m in ("ended", "live", "late"):
        core.apply(event(m, "fixture", 1, 1000.0))
    core.apply(event("ended", "state", 2, 2000.0, ev.MATCH_STATUS_ENDED))
    core.apply(event("live", "state", 2, 2000.0))
    core.apply(event("late", "state", 2, 2000.0, ev.MATCH_STATUS_CANCELLED))
    core.apply(event("late", "fixture", 3, 5000.0))  # heard of later: kept longer
    assert core.forget_finished(2000.0 + FORGET_AFTER_S - 1) == 0
    assert core.forget_finished(2000.0 + FORGET_AFTER_S) == 1
    assert set(core.matches) == {"live", "late"}
    assert ("p", "ended") not in core.sequencer._cursors and ("p", "live") in core.sequencer._cursors
    assert core.forget_finished(10**12) == 1  # "late" goes too; a live match never does
    assert set(core.matches) == {"live"}


class _Stored:
    """A publisher keeping what it was given (or failing, when told to)."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self.fail = False

    async def publish(self, events: list[tuple[object, int]]) -> object:
        if self.fail:
            raise ConnectionError("JetStream unavailable")
        self.events += [e for e, _ in events]
        return None


def test_a_match_in_play_without_events_gets_a_bet_stop_once_per_silence() -> None:
    """Its producer alive (alive messages) but nothing for the match for longer than the limit:
    the feed stops betting on it, once; a break has a longer limit; not started or ended matches,
    and matches of a producer that is down (provider_down covers them), get none."""
    import asyncio

    from livebet.feed.v1 import event_pb2 as ev

    from feed.service import FeedCore

    now = [1000.0]
    out = _Stored()
    core = FeedCore(out, liveness_threshold=20.0, clock=lambda: now[0], match_silence=30.0, break_silence=600.0)  # type: ignore[arg-type]

    def event(match_id: str, seq: int, status: int = ev.MATCH_STATUS_LIVE, period: int = 1, p: str = "p") -> None:
        e = ev.FeedEvent(event_id=f"{match_id}:{seq}", provider=p, match_id=match_id, sequence=seq)
        e.received_at.FromMilliseconds(int(now[0] * 1000))
        if seq == 0:
            e.fixture_change.fixture.match_id = match_id
        else:
            s = e.match_state.state
            s.status, s.period = status, period  # type: ignore[assignment]
        core.apply(e)

    def alive(p: str = "p") -> None:
        e = ev.FeedEvent(event_id=f"{p}:alive:{now[0]}", provider=p)
        e.provider_alive.subscribed = True
        e.received_at.FromMilliseconds(int(now[0] * 1000))
        core.apply(e)

    def check() -> list[ev.FeedEvent]:
        return [e for e in asyncio.run(core.check_liveness()) if e.WhichOneof("payload") == "bet_stop"]

    for m in ("play", "break", "soon", "over"):
        event(m, 0)
    for m, due in (("late", now[0] + 20.0), ("later", now[0] + 3600.0)):  # scheduled kick-offs
        f = ev.FeedEvent(event_id=f"{m}:0", provider="p", match_id=m)
        f.fixture_change.fixture.match_id = m
        f.fixture_change.fixture.start_time.FromMilliseconds(int(due * 1000))
        f.received_at.FromMilliseconds(int(now[0] * 1000))
        core.apply(f)
    event("play", 1)
    event("break", 1, period=ev.PERIOD_HALFTIME)
    event("soon", 1, status=ev.MATCH_STATUS_NOT_STARTED)
    event("over", 1, status=ev.MATCH_STATUS_ENDED)
    event("other", 0, p="q")
    event("other", 1, p="q")
    now[0] += 30.0
    alive()  # p stays alive; q says nothing more, so it goes down, and "other" is provider_down's
    assert check() == []  # 30 s is not more than the limit
    now[0] += 1.0
    alive()
    (stop,) = check()
    assert (stop.match_id, stop.provider) == ("play", "p")
    assert stop.bet_stop.reason == "no event for this match for more than 30s"
    assert stop.event_id == "p:play:silent:1000000" and stop.received_at.ToMilliseconds() == 1_031_000
    assert core.liveness.status("q") is Status.DOWN
    assert check() == []  # once per silence
    now[0] += 20.0  # "late" is 31 s past its kick-off and has said nothing for 51 s: it may be under way
    alive()
    (late,) = check()
    assert late.match_id == "late" and late.bet_stop.reason == "kick-off was due 31s ago and the match has not started"
    now[0] -= 20.0  # (the rest of the test keeps its times)

    event("play", 2)  # the match speaks again: a new silence gets a new bet_stop, with another id
    now[0] += 31.0
    alive()
    out.fail = True  # not stored: tried again at the next check
    with pytest.raises(ConnectionError):
        asyncio.run(core.check_liveness())
    out.fail = False
    (again,) = check()
    assert again.event_id == "p:play:silent:1031000"
    now[0] += 600.0
    alive()
    assert [e.match_id for e in check()] == ["break"]  # the break's own limit
    stopped = [e.match_id for e in out.events if e.WhichOneof("payload") == "bet_stop"]  # type: ignore[attr-defined]
    assert stopped == ["play", "late", "play", "break"]  # "later" is not due yet

    # rebuilt from the stream, a feed knows the bet_stops it published: none is sent again
    rebuilt = FeedCore(_Stored(), clock=lambda: now[0], match_silence=30.0, break_silence=600.0)  # type: ignore[arg-type]
    rebuilt_events = []
    for m in ("play",):
        f = ev.FeedEvent(event_id=f"{m}:0", provider="p", match_id=m)
        f.fixture_change.fixture.match_id = m
        f.received_at.FromMilliseconds(1_000_000)
        s = ev.FeedEvent(event_id=f"{m}:2", provider="p", match_id=m, sequence=2)
        s.match_state.state.status, s.match_state.state.period = ev.MATCH_STATUS_LIVE, 1  # type: ignore[assignment]
        s.received_at.FromMilliseconds(1_031_000)
        rebuilt_events += [f, s, again]
    for e in rebuilt_events:
        rebuilt.apply(e)
    assert [e for e in asyncio.run(rebuilt.check_liveness()) if e.WhichOneof("payload") == "bet_stop"] == []


def test_a_provider_down_read_back_from_the_stream_is_not_a_sign_of_life() -> None:
    """Rebuilt from the stream, a feed takes a provider_down it finds as the producer being down
    (not as a message from it), so it does not declare the same silence again under another id;
    a message from the producer after it still counts."""
    import asyncio

    from livebet.feed.v1 import event_pb2 as ev

    from feed.service import FeedCore

    now = [1000.0]
    out = _Stored()
    core = FeedCore(out, liveness_threshold=20.0, clock=lambda: now[0])  # type: ignore[arg-type]
    alive = ev.FeedEvent(event_id="p:alive:1", provider="p")
    alive.provider_alive.subscribed = True
    alive.received_at.FromMilliseconds(900_000)
    down = ev.FeedEvent(event_id="p:provider_down:900000", provider="p")
    down.provider_down.last_seen.FromMilliseconds(900_000)
    down.received_at.FromMilliseconds(921_000)
    core.apply(alive)
    core.apply(down)
    assert core.liveness.status("p") is Status.DOWN
    assert asyncio.run(core.check_liveness()) == [] and out.events == []
    later = ev.FeedEvent(event_id="p:alive:2", provider="p")
    later.provider_alive.subscribed = True
    later.received_at.FromMilliseconds(990_000)
    core.apply(later)
    assert core.liveness.status("p") is Status.RECOVERING
