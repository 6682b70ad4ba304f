"""Loads every livebet contract into the default descriptor pool, so that server reflection in any
process can describe any livebet service (Envoy may route a reflection call to any of them)."""

from __future__ import annotations

import importlib
from pathlib import Path

#: Fully-qualified gRPC service names, by generated module.
SERVICES = {
    "feed": ["livebet.feed.v1.FeedService"],
    "pricing": ["livebet.odds.v1.TraderService"],
    "odds": ["livebet.odds.v1.OddsService"],
    "betting": [
        "livebet.betting.v1.BettingService",
        "livebet.betting.v1.WalletService",
        "livebet.betting.v1.PlayerAdminService",
    ],
    "settlement": ["livebet.settlement.v1.SettlementService", "livebet.settlement.v1.ReportService"],
}


def load_all() -> list[str]:
    """Import every generated ``*_pb2`` module under ``livebet``; returns their names."""
    import livebet  # generated namespace package (gen/python)

    loaded = []
    # The generated packages have no __init__.py (namespace packages), which pkgutil does not walk.
    for root in map(Path, livebet.__path__):
        for path in sorted(root.rglob("*_pb2.py")):
            rel = path.relative_to(root.parent).with_suffix("")
            name = ".".join(rel.parts)
            importlib.import_module(name)
            loaded.append(name)
    return loaded


def schema_image() -> bytes:
    """A FileDescriptorSet (a Buf image) of every livebet contract plus grpc.health.v1 and the
    google.rpc error details, so that tools without reflection (``buf curl --schema FILE.binpb``
    over HTTP/1.1 gRPC-web) and Envoy's REST transcoder know them."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.rpc import error_details_pb2, status_pb2
    from grpc_health.v1 import health_pb2

    load_all()
    pool = descriptor_pool.Default()
    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        fd = pool.FindFileByName(name)
        for dep in fd.dependencies:
            add(dep.name)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        fds.file.append(proto)

    add(health_pb2.DESCRIPTOR.name)
    # rich error details (BadRequest, ErrorInfo): Envoy's transcoder prints them in REST errors
    add(error_details_pb2.DESCRIPTOR.name)
    add(status_pb2.DESCRIPTOR.name)
    for name in sorted(n for n in _livebet_files(pool)):
        add(name)
    return fds.SerializeToString()


def _livebet_files(pool: object) -> list[str]:
    import sys

    names = []
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("livebet.") and mod_name.endswith("_pb2"):
            names.append(mod.DESCRIPTOR.name)
    return names
