"""Zero downtime: every service is rolled (`python -m mesh roll`) while clients keep placing bets
and watching odds through Envoy. No PlaceBet fails (retries with the same request_id are allowed
and counted), every odds stream resumes without a gap, no bet is lost or doubled."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from livebet.betting.v1 import bet_pb2, betting_service_pb2_grpc
from livebet.betting.v1 import betting_service_pb2 as bs
from livebet.common.v1 import common_pb2
from livebet.odds.v1 import odds_service_pb2, odds_service_pb2_grpc

from mesh import topology
from mesh.supervisor import REPO_ROOT
from tests.e2e.conftest import Mesh, free_port_topology, start_mesh
from tests.e2e.test_edge_auth import _deposit, bearer, open_selection, token

TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}


@pytest.fixture(scope="module")
def rolling_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="livebet-roll-"))  # short: the control socket lives in it
    root.chmod(0o755)
    m = start_mesh(root / "data", free_port_topology(root), root / "mesh.log")
    yield m
    assert m.stop() == 0, m.log()[-4000:]
    subprocess.run(["rm", "-rf", str(root)], check=False)


@dataclass
class Bettor:
    account: str
    token: str
    calls: int = 0
    retried: int = 0
    failed: int = 0
    refused: int = 0
    placed: dict[str, str] = field(default_factory=dict)  # request_id -> bet_id


def bet_loop(mesh: Mesh, b: Bettor, stop: threading.Event) -> None:
    stub = betting_service_pb2_grpc.BettingServiceStub(grpc.insecure_channel(mesh.edge))
    selection = open_selection(mesh)
    while not stop.is_set():
        request = bs.PlaceBetRequest(
            request_id=uuid.uuid4().hex,
            selections=[selection],
            stake=common_pb2.Money(currency_code="EUR", minor_units=100),
            odds_change_policy=bet_pb2.ODDS_CHANGE_POLICY_ANY,
        )
        b.calls += 1
        for attempt in range(40):
            try:
                bet = stub.PlaceBet(request, metadata=bearer(b.token), timeout=5).bet
                b.placed[request.request_id] = bet.bet_id
                break
            except grpc.RpcError as err:
                if err.code() in TRANSIENT and attempt < 39:
                    b.retried += 1  # the same request_id again: idempotent
                    time.sleep(0.1)
                    continue
                if err.code() in TRANSIENT:
                    b.failed += 1
                else:  # the market moved on (suspended, closed): a business answer, not a failure
                    b.refused += 1
                    selection = open_selection(mesh)
                break
        time.sleep(0.15)  # ~6 a second: under the per-account rate limit


@dataclass
class Watcher:
    versions: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    resumed: int = 0
    resyncs: int = 0
    gaps: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def watch_loop(mesh: Mesh, w: Watcher, stop: threading.Event) -> None:
    stub = odds_service_pb2_grpc.OddsServiceStub(grpc.insecure_channel(mesh.edge))
    first = True
    while not stop.is_set():
        if not first:
            w.resumed += 1
        first = False
        request = odds_service_pb2.WatchOddsRequest(heartbeat_interval_ms=300, resume_from=dict(w.versions))
        stream = stub.WatchOdds(request)
        try:
            for msg in stream:
                w.messages += 1
                kind = msg.WhichOneof("message")
                if kind == "image":
                    if msg.resync:
                        w.resyncs += 1
                    w.versions[msg.image.match_id] = msg.image.version
                elif kind == "delta":
                    d = msg.delta
                    last = w.versions.get(d.match_id)
                    if last is not None and d.previous_version != last:
                        w.gaps.append(f"{d.match_id}: had {last}, got {d.previous_version}->{d.version}")
                    w.versions[d.match_id] = d.version
                if stop.is_set():
                    stream.cancel()
                    return
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                w.errors.append(err.code().name)
            time.sleep(0.1)


def test_rolling_every_service_under_load_loses_nothing(rolling_mesh: Mesh) -> None:
    mesh = rolling_mesh
    open_selection(mesh)  # the simulator's matches are priced
    bettors = []
    for i in range(3):
        account = f"roller-{i}-{uuid.uuid4().hex[:6]}"
        t = token(mesh, account)
        _deposit(mesh, t, 1_000_000)
        bettors.append(Bettor(account, t))
    watchers = [Watcher() for _ in range(3)]
    stop = threading.Event()
    threads = [threading.Thread(target=bet_loop, args=(mesh, b, stop), daemon=True) for b in bettors]
    threads += [threading.Thread(target=watch_loop, args=(mesh, w, stop), daemon=True) for w in watchers]
    for th in threads:
        th.start()
    time.sleep(3)
    services = [s.name for s in topology.load().services]
    started = time.monotonic()
    rolled = subprocess.run(
        [sys.executable, "-m", "mesh", "roll", *services, "--data-dir", str(mesh.data_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    roll_seconds = time.monotonic() - started
    time.sleep(3)  # load goes on after the last roll
    stop.set()
    for th in threads:
        th.join(30)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr

    calls = sum(b.calls for b in bettors)
    retried = sum(b.retried for b in bettors)
    failed = sum(b.failed for b in bettors)
    refused = sum(b.refused for b in bettors)
    placed = sum(len(b.placed) for b in bettors)
    resumed = [w.resumed for w in watchers]
    print(
        f"\nrolled {len(services)} services in {roll_seconds:.1f}s: PlaceBet calls {calls}, placed {placed}, "
        f"retried {retried}, refused by the market {refused}, failed {failed}; "
        f"streams resumed {resumed} (resyncs {[w.resyncs for w in watchers]}), "
        f"messages {[w.messages for w in watchers]}, stream errors {[w.errors for w in watchers]}"
    )
    assert failed == 0
    assert placed > 0 and placed + refused == calls
    for w in watchers:
        assert w.gaps == [], w.gaps[:5]
        assert w.resumed >= 1  # both odds replicas were replaced under it
        assert w.messages > 0
    # no bet lost or doubled: each account holds exactly the bets it was told were placed
    stub = betting_service_pb2_grpc.BettingServiceStub(grpc.insecure_channel(mesh.edge))
    for b in bettors:
        seen: dict[str, str] = {}
        page = ""
        while True:
            r = stub.ListBets(bs.ListBetsRequest(page_size=100, page_token=page), metadata=bearer(b.token), timeout=10)
            for bet in r.bets:
                assert bet.request_id not in seen, f"request {bet.request_id} placed twice"
                seen[bet.request_id] = bet.bet_id
            page = r.next_page_token
            if not page:
                break
        assert seen == b.placed
    # every process was replaced and the platform is healthy
    code, status = mesh.status()
    assert code == 0, status
