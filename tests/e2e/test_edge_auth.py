"""The edge's security, through the real Envoy in front of the real services: tokens, identity,
roles and rate limits. Tokens come from `python -m mesh token` (the mesh's own signing key)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import jwt
import pytest

from edge import auth
from mesh.supervisor import REPO_ROOT
from tests.e2e.conftest import Mesh
from tests.helpers import wait_for

BUF = str(Path(sys.executable).parent / "buf")


def token(mesh: Mesh, account: str, *roles: str, ttl: float = 600) -> str:
    args = [sys.executable, "-m", "mesh", "token", "--data-dir", str(mesh.data_dir), "--account", account]
    for r in roles:
        args += ["--role", r]
    out = subprocess.run([*args, "--ttl", str(ttl)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def bearer(t: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {t}"),)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bad_tokens(mesh: Mesh) -> dict[str, str]:
    """Tokens Envoy must refuse, each wrong in one way."""
    keys = auth.Keys(mesh.data_dir / "edge")
    good = auth.issue(keys, "mallory", ["admin"])
    head, body, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged = _b64(json.dumps({**claims, "sub": "victim"}).encode())
    from cryptography.hazmat.primitives.asymmetric import ec

    stranger = ec.generate_private_key(ec.SECP256R1())
    return {
        "expired": auth.issue(keys, "mallory", ["admin"], ttl=60, now=time.time() - 3600),
        "alg none": _b64(b'{"alg":"none","typ":"JWT"}') + "." + body + ".",
        "wrong issuer": auth.issue(keys, "mallory", ["admin"], issuer="https://evil.example"),
        "wrong audience": auth.issue(keys, "mallory", ["admin"], audience="someone-else"),
        "tampered claims": f"{head}.{forged}.{sig}",
        "tampered signature": f"{head}.{body}.{sig[:-4]}{'AAAA' if not sig.endswith('AAAA') else 'BBBB'}",
        "another key": jwt.encode(
            claims, stranger, algorithm="ES256", headers={"kid": jwt.get_unverified_header(good)["kid"]}
        ),
        "no expiry": jwt.encode(
            {k: v for k, v in claims.items() if k != "exp"},
            keys.private_key(),
            algorithm="ES256",
            headers={"kid": keys.kid},
        ),
        "garbage": "not-a-token",
    }


def _metric(target: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _upstream_requests(mesh: Mesh, cluster: str) -> int:
    with urllib.request.urlopen(f"http://{mesh.state()['envoy_admin']}/stats?format=json", timeout=5) as resp:
        stats = json.loads(resp.read())["stats"]
    return int(next(s["value"] for s in stats if s.get("name") == f"cluster.{cluster}.upstream_rq_total"))


REFUSED_METHODS = (
    "/livebet.betting.v1.BettingService/PlaceBet",
    "/livebet.betting.v1.BettingService/ListBets",
    "/livebet.betting.v1.WalletService/GetBalance",
    "/livebet.odds.v1.TraderService/SuspendMatch",
)


def _calls_seen_by(mesh: Mesh, service: str) -> float:
    """The calls of the methods the test sends that the service's processes timed (their own
    /metrics). Only those: a stream of an earlier test (reflection, WatchBets) is timed when it
    ends, which can be while this test counts."""
    total = 0.0
    for p in mesh.state()["processes"]:
        if p["service"] == service and p["metrics"]:
            total += sum(_metric(p["metrics"], "livebet_rpc_duration_seconds_count", method=m) for m in REFUSED_METHODS)
    return total


def _stubs(mesh: Mesh):  # type: ignore[no-untyped-def]
    from livebet.betting.v1 import betting_service_pb2_grpc, wallet_service_pb2_grpc

    channel = grpc.insecure_channel(mesh.edge)
    return (
        betting_service_pb2_grpc.BettingServiceStub(channel),
        wallet_service_pb2_grpc.WalletServiceStub(channel),
    )


def _code(call, *args, **kwargs) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call(*args, timeout=10, **kwargs)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _eur(units: int):  # type: ignore[no-untyped-def]
    from livebet.common.v1 import common_pb2

    return common_pb2.Money(currency_code="EUR", minor_units=units)


def _deposit(mesh: Mesh, t: str, units: int) -> None:
    from livebet.betting.v1 import wallet_service_pb2 as ws

    _, wallet = _stubs(mesh)
    wallet.Deposit(ws.DepositRequest(request_id=uuid.uuid4().hex, amount=_eur(units)), metadata=bearer(t), timeout=10)


def _balance(mesh: Mesh, metadata: tuple[tuple[str, str], ...]) -> int:
    from livebet.betting.v1 import wallet_service_pb2 as ws

    _, wallet = _stubs(mesh)
    r = wallet.GetBalance(ws.GetBalanceRequest(currency_code="EUR"), metadata=metadata, timeout=10)
    return int(r.available.minor_units)


def open_selection(mesh: Mesh):  # type: ignore[no-untyped-def]
    """A selection on an open market of a live simulated match, at its current price."""
    from livebet.betting.v1 import bet_pb2
    from livebet.odds.v1 import market_pb2, odds_service_pb2, odds_service_pb2_grpc

    odds = odds_service_pb2_grpc.OddsServiceStub(grpc.insecure_channel(mesh.edge))
    found: list[bet_pb2.Selection] = []

    def look() -> bool:
        for m in odds.ListLiveMatches(odds_service_pb2.ListLiveMatchesRequest(page_size=20), timeout=5).matches:
            snap = odds.GetOddsSnapshot(odds_service_pb2.GetOddsSnapshotRequest(match_id=m.match_id), timeout=5)
            for market in snap.odds.markets:
                # an open market may have outcomes without a price (one already impossible)
                priced = [o for o in market.outcomes if o.odds.decimal]
                if market.status == market_pb2.MARKET_STATUS_OPEN and priced:
                    s = bet_pb2.Selection(market_version=market.version)
                    s.outcome.market.CopyFrom(market.ref)
                    s.outcome.outcome_id = priced[0].outcome_id
                    s.requested_odds.CopyFrom(priced[0].odds)
                    found.append(s)
                    return True
        return False

    wait_for(look, 60, interval=0.5, what="an open market on a live simulated match")
    return found[0]


def place(mesh: Mesh, metadata: tuple[tuple[str, str], ...], request_id: str | None = None):  # type: ignore[no-untyped-def]
    from livebet.betting.v1 import bet_pb2
    from livebet.betting.v1 import betting_service_pb2 as bs

    bets, _ = _stubs(mesh)
    request_id = request_id or uuid.uuid4().hex
    for attempt in range(5):
        req = bs.PlaceBetRequest(
            request_id=request_id,
            selections=[open_selection(mesh)],
            stake=_eur(100),
            odds_change_policy=bet_pb2.ODDS_CHANGE_POLICY_ANY,
        )
        try:
            return bets.PlaceBet(req, metadata=metadata, timeout=10).bet
        except grpc.RpcError as err:
            # the simulated match goes on: a market open a moment ago may be suspended now (a
            # refused bet wrote nothing, so the request id is free for the next try)
            if attempt == 4 or "is not open for betting" not in (err.details() or ""):  # type: ignore[attr-defined]
                raise
    raise AssertionError("unreachable")


def test_bad_tokens_are_unauthenticated_at_the_edge_and_reach_no_service(mesh: Mesh) -> None:
    from livebet.betting.v1 import betting_service_pb2 as bs
    from livebet.betting.v1 import wallet_service_pb2 as ws
    from livebet.odds.v1 import trader_service_pb2 as ts
    from livebet.odds.v1 import trader_service_pb2_grpc

    bets, wallet = _stubs(mesh)
    trader = trader_service_pb2_grpc.TraderServiceStub(grpc.insecure_channel(mesh.edge))
    _balance(mesh, bearer(token(mesh, "warm-up")))  # the betting cluster is up and has served a call
    before = (_upstream_requests(mesh, "betting"), _calls_seen_by(mesh, "betting"), _calls_seen_by(mesh, "pricing"))
    cases = {"no token": (), **{name: bearer(t) for name, t in bad_tokens(mesh).items()}}
    for name, metadata in cases.items():
        for call, request in (
            (bets.PlaceBet, bs.PlaceBetRequest(request_id="r1")),
            (bets.ListBets, bs.ListBetsRequest()),
            (wallet.GetBalance, ws.GetBalanceRequest(currency_code="EUR")),
            (trader.SuspendMatch, ts.SuspendMatchRequest(match_id="m1")),
        ):
            # a client-sent identity header must not help either
            md = (*metadata, ("x-livebet-account", "victim"), ("x-livebet-roles", "admin"))
            assert _code(call, request, metadata=md) == grpc.StatusCode.UNAUTHENTICATED, (name, call)
    after = (_upstream_requests(mesh, "betting"), _calls_seen_by(mesh, "betting"), _calls_seen_by(mesh, "pricing"))
    assert after == before, "a refused call reached a service"


def test_a_client_sent_identity_header_is_replaced_by_the_tokens(mesh: Mesh) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    _deposit(mesh, token(mesh, alice), 5000)
    _deposit(mesh, token(mesh, bob), 700)
    # Bob's token with Alice's name in the header: Bob's balance
    assert _balance(mesh, (*bearer(token(mesh, bob)), ("x-livebet-account", alice))) == 700
    assert _balance(mesh, bearer(token(mesh, alice))) == 5000


def test_an_account_cannot_read_list_or_watch_anothers_bets(mesh: Mesh) -> None:
    from livebet.betting.v1 import betting_service_pb2 as bs

    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    ta, tb = token(mesh, alice), token(mesh, bob)
    _deposit(mesh, ta, 10_000)
    bet = place(mesh, bearer(ta))
    bets, _ = _stubs(mesh)
    assert bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=bearer(ta), timeout=10).bet.bet_id == bet.bet_id
    with pytest.raises(grpc.RpcError) as theirs:
        bets.GetBet(bs.GetBetRequest(bet_id=bet.bet_id), metadata=bearer(tb), timeout=10)
    with pytest.raises(grpc.RpcError) as nobodys:
        bets.GetBet(bs.GetBetRequest(bet_id=str(uuid.uuid4())), metadata=bearer(tb), timeout=10)
    assert theirs.value.code() == nobodys.value.code() == grpc.StatusCode.NOT_FOUND
    # no existence leak: the message for someone else's bet reads like the one for no bet at all
    other_id = nobodys.value.details().split()[2]
    assert theirs.value.details().replace(bet.bet_id, "ID") == nobodys.value.details().replace(other_id, "ID")
    assert bets.ListBets(bs.ListBetsRequest(), metadata=bearer(tb), timeout=10).bets == []
    # Bob's WatchBets with include_open sees nothing of Alice's while her bet is open
    stream = bets.WatchBets(bs.WatchBetsRequest(include_open=True), metadata=bearer(tb), timeout=3)
    seen = []
    with pytest.raises(grpc.RpcError) as end:
        seen.extend(stream)
    assert end.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert all(r.bet.bet_id != bet.bet_id for r in seen if r.HasField("bet"))


def test_admin_apis_need_the_admin_role(mesh: Mesh) -> None:
    from livebet.betting.v1 import player_admin_service_pb2 as pa
    from livebet.betting.v1 import player_admin_service_pb2_grpc
    from livebet.odds.v1 import trader_service_pb2 as ts
    from livebet.odds.v1 import trader_service_pb2_grpc
    from livebet.settlement.v1 import report_service_pb2 as rs
    from livebet.settlement.v1 import report_service_pb2_grpc, settlement_service_pb2_grpc
    from livebet.settlement.v1 import settlement_service_pb2 as ss

    channel = grpc.insecure_channel(mesh.edge)
    trader = trader_service_pb2_grpc.TraderServiceStub(channel)
    settle = settlement_service_pb2_grpc.SettlementServiceStub(channel)
    reports = report_service_pb2_grpc.ReportServiceStub(channel)
    players = player_admin_service_pb2_grpc.PlayerAdminServiceStub(channel)
    player, admin = bearer(token(mesh, "player-1")), bearer(token(mesh, "trader-1", "admin"))
    calls = [
        (trader.SuspendMatch, ts.SuspendMatchRequest(match_id="no-such-match")),
        (settle.ListSettlements, ss.ListSettlementsRequest()),
        (reports.GetOpenLiability, rs.GetOpenLiabilityRequest()),
        (players.GetPlayer, pa.GetPlayerRequest(account_id="player-1")),
    ]
    for call, request in calls:
        assert _code(call, request, metadata=player) == grpc.StatusCode.PERMISSION_DENIED
        # a player who sends the role header is still a player
        assert (
            _code(call, request, metadata=(*player, ("x-livebet-roles", "admin"))) == grpc.StatusCode.PERMISSION_DENIED
        )
        assert _code(call, request, metadata=admin) not in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
        )


def test_services_refuse_calls_without_the_edges_identity_headers(mesh: Mesh) -> None:
    """Defence in depth: straight to a service's own port, bypassing Envoy."""
    from livebet.betting.v1 import wallet_service_pb2 as ws
    from livebet.betting.v1 import wallet_service_pb2_grpc
    from livebet.odds.v1 import trader_service_pb2 as ts
    from livebet.odds.v1 import trader_service_pb2_grpc

    betting = mesh.process("betting-0")["health_target"]
    pricing = mesh.process("pricing-0")["health_target"]
    wallet = wallet_service_pb2_grpc.WalletServiceStub(grpc.insecure_channel(betting))
    trader = trader_service_pb2_grpc.TraderServiceStub(grpc.insecure_channel(pricing))
    assert _code(wallet.GetBalance, ws.GetBalanceRequest(currency_code="EUR")) == grpc.StatusCode.UNAUTHENTICATED
    request = ts.SuspendMatchRequest(match_id="m")
    assert _code(trader.SuspendMatch, request) == grpc.StatusCode.UNAUTHENTICATED
    md = (("x-livebet-account", "someone"),)
    assert _code(trader.SuspendMatch, request, metadata=md) == grpc.StatusCode.PERMISSION_DENIED


def test_placing_bets_faster_than_the_rate_limit_is_resource_exhausted_and_places_nothing(mesh: Mesh) -> None:
    from livebet.betting.v1 import bet_pb2
    from livebet.betting.v1 import betting_service_pb2 as bs

    account = f"flood-{uuid.uuid4().hex[:6]}"
    t = token(mesh, account)
    _deposit(mesh, t, 1_000_000)
    selection = open_selection(mesh)
    bets, _ = _stubs(mesh)

    def one(i: int) -> grpc.StatusCode:
        req = bs.PlaceBetRequest(
            request_id=f"flood-{i}",
            selections=[selection],
            stake=_eur(100),
            odds_change_policy=bet_pb2.ODDS_CHANGE_POLICY_ANY,
        )
        return _code(bets.PlaceBet, req, metadata=bearer(t))

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(60)))
    limited = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    accepted = codes.count(grpc.StatusCode.OK)
    assert limited >= 60 - 20 - 10, codes  # burst 20, 10 more a second, and this took under ~1 s
    listed = bets.ListBets(bs.ListBetsRequest(page_size=100), metadata=bearer(t), timeout=10).bets
    assert len(listed) == accepted, (codes, len(listed))
    # another account is not limited by this one's flood
    other = token(mesh, f"calm-{uuid.uuid4().hex[:6]}")
    _deposit(mesh, other, 10_000)
    assert place(mesh, bearer(other)).bet_id


def _buf_curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BUF, "curl", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("protocol", ["grpc", "grpcweb"])
def test_buf_curl_watches_odds_and_places_a_bet_through_envoy(mesh: Mesh, protocol: str) -> None:
    from google.protobuf import json_format

    selection = open_selection(mesh)
    match_id = selection.outcome.market.match_id
    out = _buf_curl(
        "--protocol",
        protocol,
        "--http2-prior-knowledge",
        "--schema",
        "gen/livebet.binpb",
        "--timeout",
        "3s",
        "-d",
        json.dumps({"matchIds": [match_id], "heartbeatIntervalMs": 500}),
        f"http://{mesh.edge}/livebet.odds.v1.OddsService/WatchOdds",
    )
    # the stream never ends by itself: buf curl stops it at --timeout after printing what came
    messages = [json.loads(m) for m in out.stdout.replace("}\n{", "}\x00{").split("\x00") if m.strip()]
    assert messages and "image" in messages[0], out.stdout[:500] + out.stderr
    assert messages[0]["image"]["matchId"] == match_id

    account = f"curl-{protocol}-{uuid.uuid4().hex[:6]}"
    t = token(mesh, account)
    _deposit(mesh, t, 10_000)
    common = ["--protocol", protocol, "--http2-prior-knowledge", "--schema", "gen/livebet.binpb"]
    url = f"http://{mesh.edge}/livebet.betting.v1.BettingService/PlaceBet"
    for _ in range(5):  # the simulated match goes on: a market open a moment ago may be suspended now
        request = {
            "requestId": uuid.uuid4().hex,
            "selections": [json.loads(json_format.MessageToJson(open_selection(mesh)))],
            "stake": {"currencyCode": "EUR", "minorUnits": "100"},
            "oddsChangePolicy": "ODDS_CHANGE_POLICY_ANY",
        }
        placed = _buf_curl(*common, "-H", f"Authorization: Bearer {t}", "-d", json.dumps(request), url)
        if "is not open for betting" not in placed.stderr:
            break
    assert placed.returncode == 0, placed.stderr
    bet = json.loads(placed.stdout)["bet"]
    assert bet["accountId"] == account and bet["status"] in ("BET_STATUS_PENDING", "BET_STATUS_ACCEPTED")
    refused = _buf_curl(*common, "-d", json.dumps(request), url)
    assert refused.returncode != 0 and "unauthenticated" in refused.stderr.lower()
