"""The betting service process: ``python -m betting.server``.

Depends on PostgreSQL (bets and the ledger; migrations run on start) and NATS (outbox relay).
BettingService and WalletService are answered UNIMPLEMENTED by the generated base servicers until
the bet-acceptance issue fills them in.
"""

from __future__ import annotations

from pathlib import Path

from livebet.betting.v1 import betting_service_pb2_grpc, wallet_service_pb2_grpc

from mesh.deps import NatsDependency, PostgresDependency
from mesh.service import ServiceApp, run

MIGRATIONS = Path(__file__).with_name("migrations")


def build(app: ServiceApp) -> None:
    s = app.settings
    app.add_dependency(PostgresDependency(s.postgres_dsn, MIGRATIONS, "betting", s.health_interval_seconds))
    app.add_dependency(NatsDependency(s.nats_url, s.instance, s.health_interval_seconds))
    bets = betting_service_pb2_grpc.BettingServiceServicer()
    wallet = wallet_service_pb2_grpc.WalletServiceServicer()
    app.add_service(
        "livebet.betting.v1.BettingService", bets, betting_service_pb2_grpc.add_BettingServiceServicer_to_server
    )
    app.add_service(
        "livebet.betting.v1.WalletService", wallet, wallet_service_pb2_grpc.add_WalletServiceServicer_to_server
    )


if __name__ == "__main__":
    run("betting", build)
