"""The settlement service process: ``python -m settlement.server``.

Depends on PostgreSQL (settlements; migrations run on start) and NATS (results in, events out).
SettlementService and ReportService are answered UNIMPLEMENTED by the generated base servicers
until the settlement issue fills them in.
"""

from __future__ import annotations

from pathlib import Path

from livebet.settlement.v1 import report_service_pb2_grpc, settlement_service_pb2_grpc

from mesh.deps import NatsDependency, PostgresDependency
from mesh.service import ServiceApp, run

MIGRATIONS = Path(__file__).with_name("migrations")


def build(app: ServiceApp) -> None:
    s = app.settings
    app.add_dependency(PostgresDependency(s.postgres_dsn, MIGRATIONS, "settlement", s.health_interval_seconds))
    app.add_dependency(NatsDependency(s.nats_url, s.instance, s.health_interval_seconds))
    settle = settlement_service_pb2_grpc.SettlementServiceServicer()
    reports = report_service_pb2_grpc.ReportServiceServicer()
    app.add_service(
        "livebet.settlement.v1.SettlementService",
        settle,
        settlement_service_pb2_grpc.add_SettlementServiceServicer_to_server,
    )
    app.add_service(
        "livebet.settlement.v1.ReportService", reports, report_service_pb2_grpc.add_ReportServiceServicer_to_server
    )


if __name__ == "__main__":
    run("settlement", build)
