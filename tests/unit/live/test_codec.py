"""The engine's hand-assembled protobuf bytes against the protobuf library's own encoding."""

from google.protobuf.timestamp_pb2 import Timestamp
from livebet.common.v1 import common_pb2
from livebet.odds.v1 import market_pb2

from pricing.live import codec
from pricing.live.engine import Engine
from tests.helpers import simulated_events


def _reference_delta(d, m, now: Timestamp, received_ms: int) -> market_pb2.OddsDelta:  # type: ignore[no-untyped-def]
    out = market_pb2.OddsDelta(
        match_id=d.match_id,
        version=d.version,
        previous_version=d.previous_version,
        cause=d.cause,
        markets=[codec.market(d.match_id, q, d.version) for q in d.markets],
        score=f"{m.home_goals}-{m.away_goals}",
        minute=int(m.minute),
    )
    out.published_at.CopyFrom(now)
    if received_ms:
        out.feed_received_at.FromMilliseconds(received_ms)
    return out


def test_deltas_and_snapshots_are_byte_for_byte_what_protobuf_writes() -> None:
    events = simulated_events(2, 11)
    engine, cache = Engine(), codec.MarketCache()
    now = Timestamp(seconds=1_790_000_000, nanos=5)
    reasons, statuses, compared = set(), set(), 0
    published: dict[str, dict[str, market_pb2.Market]] = {}  # what a client applying every delta has
    for n, e in enumerate(events):
        for d in engine.apply(e):
            m = engine.matches[d.match_id]
            raw = codec.delta(d, m, now, n, cache.update(d))
            reference = _reference_delta(d, m, now, n)
            assert raw == reference.SerializeToString()
            head = codec.DeltaHead.FromString(raw)  # what the stream tier routes by
            assert (head.match_id, head.version, head.previous_version) == (d.match_id, d.version, d.previous_version)
            assert head.HasField("feed_received_at") == bool(n) and head.feed_received_at.ToMilliseconds() == n
            published.setdefault(d.match_id, {}).update({x.ref.market_key: x for x in reference.markets})
            reasons |= {q.reason for q in d.markets}
            statuses |= {q.status for q in d.markets}
            compared += 1
    assert compared > 100 and len(statuses) == 3 and {"goal", "decided", ""} <= reasons
    for m in engine.matches.values():
        snap = market_pb2.MatchOdds.FromString(codec.snapshot(m, now, cache))
        assert snap.version == m.version and snap.home_team == m.home and snap.published_at == now
        assert snap.sport == common_pb2.SPORT_FOOTBALL and snap.score == f"{m.home_goals}-{m.away_goals}"
        # every market as last published, at the version it last changed at
        assert {x.ref.market_key: x for x in snap.markets} == published[m.match_id]
        assert len(snap.markets) == len(m.quotes)
