"""The access table and the identity it reads (mesh.access), and local tokens (edge.auth)."""

from pathlib import Path

import grpc
import jwt
import pytest
from google.protobuf import descriptor_pool

from edge import auth
from mesh import access, contracts


def test_every_rpc_of_every_livebet_service_has_an_explicit_level() -> None:
    contracts.load_all()
    pool = descriptor_pool.Default()
    for names in contracts.SERVICES.values():
        for full in names:
            svc = pool.FindServiceByName(full)
            assert f"/{full}/" in access.RULES, f"{full} has no entry in mesh.access.RULES"
            for m in svc.methods:
                assert access.level(f"/{full}/{m.name}") in {access.PUBLIC, access.ACCOUNT, access.ADMIN, access.FEED}


@pytest.mark.parametrize(
    ("method", "level"),
    [
        ("/livebet.odds.v1.OddsService/WatchOdds", access.PUBLIC),
        ("/livebet.feed.v1.FeedService/ListMatches", access.PUBLIC),
        ("/livebet.feed.v1.FeedService/PublishBatch", access.FEED),
        ("/livebet.betting.v1.BettingService/PlaceBet", access.ACCOUNT),
        ("/livebet.betting.v1.WalletService/Deposit", access.ACCOUNT),
        ("/livebet.odds.v1.TraderService/SuspendMatch", access.ADMIN),
        ("/livebet.settlement.v1.SettlementService/VoidMarket", access.ADMIN),
        ("/grpc.health.v1.Health/Check", access.PUBLIC),
    ],
)
def test_levels(method: str, level: str) -> None:
    assert access.level(method) == level


def test_refusals_say_what_is_missing() -> None:
    nobody = access.identity([])
    player = access.identity([("x-livebet-account", "a1"), ("x-livebet-roles", "")])
    trader = access.identity([("x-livebet-account", "t1"), ("x-livebet-roles", "admin")])
    feeder = access.identity([("x-livebet-account", "p1"), ("x-livebet-roles", "feed,other")])
    bet, suspend, publish = (
        "/livebet.betting.v1.BettingService/PlaceBet",
        "/livebet.odds.v1.TraderService/SuspendMatch",
        "/livebet.feed.v1.FeedService/PublishBatch",
    )
    assert access.refusal(bet, nobody)[0] == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[index]
    assert access.refusal(bet, player) is None
    assert access.refusal(suspend, player) == (grpc.StatusCode.PERMISSION_DENIED, "this call needs the 'admin' role")
    assert access.refusal(suspend, trader) is None
    assert access.refusal(publish, feeder) is None and access.refusal(publish, trader) is None  # admin has all
    assert access.refusal(publish, player)[0] == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[index]
    assert access.refusal("/livebet.odds.v1.OddsService/WatchOdds", nobody) is None


def test_roles_header_takes_commas_or_spaces() -> None:
    assert access.roles_of("admin,feed") == access.roles_of(" admin  feed ") == frozenset({"admin", "feed"})
    assert access.roles_of("") == frozenset()


def test_tokens_are_signed_with_the_generated_key_and_carry_the_claims(tmp_path: Path) -> None:
    keys = auth.ensure_keys(tmp_path / "edge")
    assert (keys.private_path.stat().st_mode & 0o777) == 0o600
    again = auth.ensure_keys(tmp_path / "edge")  # generated once, then reused
    assert again.kid == keys.kid
    token = auth.issue(keys, "acc-1", ["admin"], ttl=60, now=1_000_000)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == keys.kid
    public = jwt.PyJWK.from_dict(__import__("json").loads(keys.jwks_path.read_text())["keys"][0])
    claims = jwt.decode(
        token, public, algorithms=["ES256"], audience=auth.AUDIENCE, issuer=auth.ISSUER, options={"verify_exp": False}
    )
    assert claims["sub"] == "acc-1" and claims["roles"] == "admin" and claims["exp"] == 1_000_060
    with pytest.raises(ValueError, match="account"):
        auth.issue(keys, "", [])
