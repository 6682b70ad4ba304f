"""Two pricing engine replicas on real NATS and Valkey: the matches are split between them by
lease, a trader call reaches whichever holds the match, and when one is killed the other takes
its matches over with versions that never go backwards."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import pytest
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc
from livebet.odds.v1 import market_pb2, odds_service_pb2, odds_service_pb2_grpc, trader_service_pb2_grpc
from livebet.odds.v1 import trader_service_pb2 as ts

from feed.adapters.jetstream import PARTITIONS, partition_of
from pricing.leases import BUCKET
from tests.component.test_feed_service import fixture, state
from tests.component.test_live_odds import goal
from tests.conftest import start_nats, start_valkey
from tests.helpers import Proc, admin_channel, feed_channel, service_spec, wait_for

MATCHES = [f"rep{i}" for i in range(12)]


@dataclass
class Cluster:
    nats_url: str
    feed: feed_service_pb2_grpc.FeedServiceStub
    engines: list[Proc]
    odds: odds_service_pb2_grpc.OddsServiceStub

    def send(self, *events: object) -> None:
        self.feed.PublishBatch(fs.PublishBatchRequest(provider="push", events=list(events)), timeout=10)  # type: ignore[arg-type]

    def snapshot(self, match_id: str) -> market_pb2.MatchOdds | None:
        try:
            return self.odds.GetOddsSnapshot(odds_service_pb2.GetOddsSnapshotRequest(match_id=match_id), timeout=5).odds
        except grpc.RpcError:
            return None

    def trader(self, i: int) -> trader_service_pb2_grpc.TraderServiceStub:
        return trader_service_pb2_grpc.TraderServiceStub(admin_channel(self.engines[i].spec.health_target))

    def holders(self) -> dict[int, str]:
        async def read() -> dict[int, str]:
            nc = await nats.connect(self.nats_url)
            kv = await nc.jetstream().key_value(BUCKET)
            out = {}
            for k in range(PARTITIONS):
                try:
                    entry = await kv.get(f"p.{k}")
                except Exception:
                    continue
                if entry.value:
                    out[k] = entry.value.decode()
            await nc.close()
            return out

        return asyncio.run(read())


@pytest.fixture(scope="module")
def cluster(servers_root: Path) -> Iterator[Cluster]:
    n, r = start_nats(servers_root, "nats-rep"), start_valkey(servers_root, "redis-rep")
    env = {
        "LIVEBET_NATS_URL": n.url,
        "LIVEBET_REDIS_URL": r.url,
        "LIVEBET_FEED_PROVIDER_SILENCE_SECONDS": "120",
        "LIVEBET_FEED_MATCH_SILENCE_SECONDS": "3600",  # matches left in play by earlier tests stay open
    }
    feed = Proc(service_spec("feed", "feed.server", env), servers_root / "rep-feed.log").start()
    engines = [
        Proc(
            service_spec(f"pricing-{i}", "pricing.server", {**env, "LIVEBET_REPLICA": str(i)}),
            servers_root / f"rep-pricing-{i}.log",
        ).start()
        for i in range(2)
    ]
    odds = Proc(service_spec("odds", "pricing.stream_server", env), servers_root / "rep-odds.log").start()
    yield Cluster(
        n.url,
        feed_service_pb2_grpc.FeedServiceStub(feed_channel(feed.spec.health_target)),
        engines,
        odds_service_pb2_grpc.OddsServiceStub(grpc.insecure_channel(odds.spec.health_target)),
    )
    for p in [odds, *engines, feed]:
        p.stop()
    r.proc.stop()
    n.proc.stop()


def _owner(holders: dict[int, str], match_id: str) -> str:
    return holders.get(partition_of(match_id), "").rsplit("-", 1)[0]


def test_the_replicas_split_the_matches_and_a_killed_one_is_taken_over(cluster: Cluster) -> None:
    def split() -> bool:
        h = cluster.holders()
        return len(h) == PARTITIONS and {v.rsplit("-", 1)[0] for v in h.values()} == {"pricing-0", "pricing-1"}

    wait_for(split, 30, what="both replicas holding shares")
    holders = cluster.holders()
    per = {name: sum(1 for v in holders.values() if v.startswith(name + "-")) for name in ("pricing-0", "pricing-1")}
    assert per == {"pricing-0": PARTITIONS // 2, "pricing-1": PARTITIONS // 2}, per

    cluster.send(*[e for m in MATCHES for e in (fixture(m), state(m, 1, 0, 0, 20))])
    wait_for(lambda: all((s := cluster.snapshot(m)) and s.minute == 20 for m in MATCHES), 30, what="all priced")
    owners = {m: _owner(holders, m) for m in MATCHES}
    assert set(owners.values()) == {"pricing-0", "pricing-1"}  # 12 matches land on both (fixed hash)

    # a trader call to replica 0 for a match replica 1 prices is forwarded and applied there
    victim = next(m for m in MATCHES if owners[m] == "pricing-1")
    before = cluster.snapshot(victim)
    assert before is not None
    reply = cluster.trader(0).SuspendMatch(
        ts.SuspendMatchRequest(request_id="rep-suspend", match_id=victim, reason="test"), timeout=10
    )
    assert reply.version == before.version + 1
    after = cluster.snapshot(victim)
    assert after is not None and after.version == reply.version
    assert {m.status for m in after.markets} <= {market_pb2.MARKET_STATUS_SUSPENDED, market_pb2.MARKET_STATUS_CLOSED}
    cluster.trader(0).ResumeMatch(ts.ResumeMatchRequest(request_id="rep-resume", match_id=victim), timeout=10)

    # kill replica 1; a goal in one of its matches is priced by replica 0 once it took the share over
    base = cluster.snapshot(victim)
    assert base is not None
    watch = cluster.odds.WatchOdds(odds_service_pb2.WatchOddsRequest(match_ids=[victim]), timeout=60)
    assert next(watch).image.version == base.version
    cluster.engines[1].signal(signal.SIGKILL)
    killed = time.monotonic()
    cluster.send(goal(victim, 1, 0, 2))
    versions, causes = [base.version], []
    for msg in watch:
        if msg.WhichOneof("message") == "delta":
            assert msg.delta.previous_version == versions[-1]  # no gap and nothing older
            versions.append(msg.delta.version)
            causes.append(msg.delta.cause)
        if causes[-2:] == ["goal", "goal"]:
            break
    watch.cancel()
    took = time.monotonic() - killed
    print(f"\nreplica killed -> its match repriced by the other replica in {took:.2f} s")
    wait_for(
        lambda: (
            set(cluster.holders().values())
            and all(v.startswith("pricing-0-") for v in cluster.holders().values())
            and len(cluster.holders()) == PARTITIONS
        ),
        15,
        what="replica 0 holding every share",
    )
    assert versions == sorted(versions) and len(set(versions)) == len(versions)

    # the dead replica comes back: it gets its fair part again without anyone restarting
    cluster.engines[1].start()
    wait_for(split, 30, what="the shares balanced again")
    cluster.send(state(victim, 3, 1, 0, 25))
    wait_for(lambda: (s := cluster.snapshot(victim)) is not None and s.minute == 25, 30, what="priced after rebalance")
    final = cluster.snapshot(victim)
    assert final is not None and final.version > versions[-1]
