"""The FEED stream's partition transform on a real nats-server agrees with ``partition_of``, and
each share's filter sees its matches plus every provider-wide event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from livebet.feed.v1 import event_pb2
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from feed.adapters.jetstream import (
    PARTITIONS,
    STREAM,
    ensure_stream,
    partition_of,
    partition_subjects,
    replay,
    subject_for,
)
from tests.conftest import start_nats

IDS = ["sr:match:61301159", "lo1", "rep7", "a.b c", "x" * 60, "ü-match", "_", "sr:match:1"]


def test_the_stream_partitions_matches_as_partition_of_says(servers_root: Path) -> None:
    server = start_nats(servers_root, "nats-partitions")

    async def go() -> tuple[dict[str, int], dict[int, list[str]]]:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_stream(js)
        for i, match_id in enumerate(IDS):
            e = event_pb2.FeedEvent(event_id=f"p{i}", provider="push", match_id=match_id)
            await js.publish(subject_for("push", match_id), e.SerializeToString())
        down = event_pb2.FeedEvent(event_id="down", provider="push")
        await js.publish(subject_for("push", ""), down.SerializeToString())
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)
        sub = await js.pull_subscribe_bind((await js.add_consumer(STREAM, config)).name, stream=STREAM)
        stored: dict[str, int] = {}
        for msg in await sub.fetch(len(IDS) + 1, timeout=5):
            e = event_pb2.FeedEvent.FromString(msg.data)
            if e.match_id:
                stored[e.match_id] = int(msg.subject.split(".")[2])
        seen: dict[int, list[str]] = {}
        for k in sorted(set(stored.values())):
            got: list[str] = []
            await replay(js, 10**9, lambda e, got=got: got.append(e.match_id or "<provider>"), partition_subjects(k))
            seen[k] = got
        await nc.close()
        return stored, seen

    try:
        stored, seen = asyncio.run(go())
    finally:
        server.proc.stop()
    assert stored == {m: partition_of(m, PARTITIONS) for m in IDS}
    assert len(set(stored.values())) > 3
    for k, got in seen.items():
        assert sorted(got) == sorted([m for m in IDS if stored[m] == k] + ["<provider>"])
