"""Session-wide real servers: NATS with JetStream, Valkey and PostgreSQL, each started once on free
ports in a temporary folder with the same code `make run` uses (mesh.infra)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh import infra
from tests.helpers import Proc


@dataclass
class Server:
    proc: Proc
    url: str
    port: int
    data_dir: Path


@pytest.fixture(scope="session")
def servers_root() -> Iterator[Path]:
    # Under /tmp with mode 0755 so that PostgreSQL's unprivileged user can reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="livebet-test-"))
    root.chmod(0o755)
    yield root
    if os.environ.get("LIVEBET_KEEP_TEST_DIRS") != "1":
        shutil.rmtree(root, ignore_errors=True)


def start_nats(root: Path, name: str = "nats") -> Server:
    port, monitor = infra.free_port(), infra.free_port()
    data = root / name
    proc = Proc(infra.nats(data, port, monitor), root / f"{name}.log").start()
    return Server(proc, f"nats://127.0.0.1:{port}", port, data)


def start_valkey(root: Path, name: str = "redis") -> Server:
    port = infra.free_port()
    proc = Proc(infra.valkey(root / name, port, persist=False), root / f"{name}.log").start()
    return Server(proc, f"redis://127.0.0.1:{port}/0", port, root / name)


def start_postgres(root: Path, name: str = "postgres") -> Server:
    port = infra.free_port()
    proc = Proc(infra.postgres(root / name, port, durable=False), root / f"{name}.log").start()
    return Server(proc, infra.postgres_dsn(port), port, root / name)


@pytest.fixture(scope="session")
def nats_server(servers_root: Path) -> Iterator[Server]:
    s = start_nats(servers_root)
    yield s
    s.proc.stop()


@pytest.fixture(scope="session")
def redis_server(servers_root: Path) -> Iterator[Server]:
    s = start_valkey(servers_root)
    yield s
    s.proc.stop()


@pytest.fixture(scope="session")
def postgres_server(servers_root: Path) -> Iterator[Server]:
    s = start_postgres(servers_root)
    yield s
    s.proc.stop()
