"""Recording live ingestion and replaying it into another feed: the same events, stored once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import nats
import pytest
from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc

from mesh.supervisor import REPO_ROOT
from tests.component.test_feed_service import fixture, state
from tests.conftest import start_nats
from tests.helpers import Proc, feed_channel, service_spec
from tests.shared_data import UOF, needs


async def _ids(url: str) -> list[str]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info("FEED")
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        out.append(ev.FeedEvent.FromString((await js.get_msg("FEED", seq)).data or b"").event_id)
    await nc.close()
    return out


def test_a_recording_replays_into_another_feed_and_twice_stores_once(servers_root: Path, tmp_path: Path) -> None:
    recording = tmp_path / "feed.rec"
    n1, n2 = start_nats(servers_root, "nats-rec-1"), start_nats(servers_root, "nats-rec-2")
    live_env = {"LIVEBET_NATS_URL": n1.url, "LIVEBET_FEED_RECORD": str(recording)}
    live = Proc(service_spec("feed", "feed.server", live_env), servers_root / "feed-rec.log").start()
    other_spec = service_spec("feed", "feed.server", {"LIVEBET_NATS_URL": n2.url})
    other = Proc(other_spec, servers_root / "feed-replay.log").start()
    try:
        stub = feed_service_pb2_grpc.FeedServiceStub(feed_channel(live.spec.health_target))
        stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[fixture("rp1")]))
        for i in range(1, 6):
            stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[state("rp1", i, 0, 0, i)]))
        with pytest.raises(grpc.RpcError):  # refused batches are not recorded
            stub.PublishBatch(fs.PublishBatchRequest(provider="push", events=[state("nope", 1, 0, 0, 1)]))
        assert len(recording.read_text().splitlines()) == 6

        def replay() -> str:
            out = subprocess.run(
                [sys.executable, "-m", "feed.replay", str(recording), "--target", other_spec.health_target, "--fast"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            return out.stdout

        assert "6 events stored, 0 already there" in replay()
        assert "0 events stored" in replay()  # the second replay: every event already there
        assert asyncio.run(_ids(n2.url)) == asyncio.run(_ids(n1.url))
    finally:
        live.stop()
        other.stop()
        n1.proc.stop()
        n2.proc.stop()


def test_a_corrupt_recording_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.rec"
    bad.write_text('{"at": 1, "provider": "p", "events": ["%%%"]}\n')
    out = subprocess.run(
        [sys.executable, "-m", "feed.replay", str(bad), "--target", "127.0.0.1:1", "--fast"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "bad.rec:1: not a recording line" in out.stderr


@needs(UOF)
def test_uof_xml_files_are_ingested_from_disk(servers_root: Path, tmp_path: Path) -> None:
    samples = UOF
    n = start_nats(servers_root, "nats-files")
    spec = service_spec("feed", "feed.server", {"LIVEBET_NATS_URL": n.url})
    proc = Proc(spec, servers_root / "feed-files.log").start()
    try:
        odds = tmp_path / "odds_change.xml"
        odds.write_bytes((samples / "odds_change-0.xml").read_bytes().replace(b"sr:match:123", b"sr:match:18001015"))
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "feed.replay",
                str(samples / "fixture-0.xml"),
                str(odds),
                "--target",
                spec.health_target,
                "--fast",
                "--provider",
                "sportradar",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "2 events stored" in out.stdout
        stub = feed_service_pb2_grpc.FeedServiceStub(feed_channel(spec.health_target))
        got = stub.GetMatchState(fs.GetMatchStateRequest(match_id="sr:match:18001015"), timeout=5)
        assert got.fixture.away.name == "Tottenham Hotspur" and got.state.clock.minute == 75
    finally:
        proc.stop()
        n.proc.stop()
