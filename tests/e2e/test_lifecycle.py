"""`mesh up` on its own data folder: a clean stop leaves no process behind, data survives a
restart, and `mesh wipe` deletes it (refused while running)."""

import asyncio
import subprocess
import sys
from pathlib import Path

import nats
import psycopg

from mesh import infra
from mesh.migrate import discover, discover_repeatable
from mesh.supervisor import REPO_ROOT
from tests.e2e.conftest import Mesh, all_pids, free_port_topology, pid_alive, start_mesh
from tests.helpers import wait_for


def _ports(m: Mesh) -> tuple[str, str]:
    procs = {p["name"]: p for p in m.state()["processes"]}
    return f"nats://127.0.0.1:{procs['nats']['port']}", infra.postgres_dsn(procs["postgres"]["port"])


async def _write(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name="PERSIST_CHECK", subjects=["persist.check"])
    await js.publish("persist.check", b"kept", headers={"Nats-Msg-Id": "once"})
    await nc.close()


async def _read(nats_url: str) -> bytes:
    nc = await nats.connect(nats_url)
    msg = await nc.jetstream().get_msg("PERSIST_CHECK", 1)
    await nc.close()
    return bytes(msg.data or b"")


def _mesh_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_stop_leaves_no_orphans_and_data_survives_a_restart(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    data, topo = tmp_path / "data", free_port_topology(tmp_path)
    first = start_mesh(data, topo, tmp_path / "mesh-1.log")
    try:
        nats_url, dsn = _ports(first)
        asyncio.run(_write(nats_url))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE persist_check (v text); INSERT INTO persist_check VALUES ('kept')")
        wipe = _mesh_cli("wipe", "--yes", "--data-dir", str(data))
        assert wipe.returncode == 1 and "refusing" in wipe.stderr
        pids = all_pids(first)
    finally:
        code = first.stop()
    assert code == 0, first.log()[-3000:]
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30, what="every child gone")

    second = start_mesh(data, topo, tmp_path / "mesh-2.log")
    try:
        nats_url, dsn = _ports(second)
        assert asyncio.run(_read(nats_url)) == b"kept"
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT v FROM persist_check").fetchone() == ("kept",)
            # migrations ran once each, on the first start only
            folder = REPO_ROOT / "betting" / "migrations"
            row = conn.execute("SELECT count(*) FROM livebet_migrations WHERE component = 'betting'").fetchone()
            assert row == (len(discover(folder)),)
            row = conn.execute("SELECT count(*) FROM livebet_repeatables WHERE component = 'betting'").fetchone()
            assert row == (len(discover_repeatable(folder)),)
    finally:
        assert second.stop() == 0

    status = _mesh_cli("status", "--data-dir", str(data))
    assert status.returncode == 1 and "NOT running" in status.stdout
    wipe = _mesh_cli("wipe", "--yes", "--data-dir", str(data))
    assert wipe.returncode == 0, wipe.stderr
    assert not data.exists()


def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    """Even SIGKILL, which the supervisor cannot handle, leaves no process behind (PDEATHSIG)."""
    tmp_path.chmod(0o755)
    m = start_mesh(tmp_path / "data", free_port_topology(tmp_path), tmp_path / "mesh.log")
    names = {p["pid"]: p["name"] for p in m.state()["processes"] if p["pid"]}
    assert len(names) == 12  # servers, service replicas, Envoy and the simulator
    m.popen.kill()
    m.popen.wait(10)

    def left() -> list[str]:
        return [names[pid] for pid in names if pid_alive(pid)]

    try:
        # a service's stop is bounded by its stop budget (here 2 s grace + 2 s per step + 5 s)
        wait_for(lambda: not left(), 30)
    except AssertionError:
        tails = {name: (m.data_dir / "logs" / f"{name}.log").read_text(errors="replace")[-1500:] for name in left()}
        raise AssertionError(f"still alive 30 s after the supervisor died: {tails}") from None
