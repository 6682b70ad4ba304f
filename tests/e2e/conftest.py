"""The whole platform as `make run` starts it (python -m mesh up), on free ports in a temp folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mesh import topology
from mesh.supervisor import REPO_ROOT, _die_with_parent
from tests.helpers import wait_for


@dataclass
class Mesh:
    popen: subprocess.Popen[bytes]
    data_dir: Path
    topology_path: Path
    log_path: Path

    def status(self) -> tuple[int, dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, "-m", "mesh", "status", "--json", "--data-dir", str(self.data_dir)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.returncode, (json.loads(out.stdout) if out.stdout.strip().startswith("{") else {})

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "run" / "mesh.json").read_text()))

    def process(self, name: str) -> dict[str, Any]:
        return next(p for p in self.state()["processes"] if p["name"] == name)

    @property
    def edge(self) -> str:
        return str(self.state()["edge"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        return int(self.popen.returncode)


def free_port_topology(folder: Path) -> Path:
    """The default topology with every port set to 0 (free ports chosen at start-up)."""
    text = re.sub(r"(?m)^(\w*port) = \d+", r"\1 = 0", topology.DEFAULT_PATH.read_text())
    path = folder / "topology.toml"
    path.write_text(text)
    return path


def start_mesh(data_dir: Path, topology_path: Path, log_path: Path, timeout: float = 120) -> Mesh:
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    popen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mesh",
            "up",
            "--topology",
            str(topology_path),
            "--data-dir",
            str(data_dir),
            "--fast",
            "--grace",
            "2",
        ],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    mesh = Mesh(popen, data_dir, topology_path, log_path)

    def up() -> bool:
        if popen.poll() is not None:
            raise AssertionError(f"mesh up exited with {popen.returncode}:\n{mesh.log()[-4000:]}")
        return "livebet is up" in mesh.log()

    wait_for(up, timeout, interval=0.2, what="mesh up")
    return mesh


def all_pids(mesh: Mesh) -> list[int]:
    return [p["pid"] for p in mesh.state()["processes"] if p["pid"]]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="session")
def mesh_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="livebet-e2e-"))
    root.chmod(0o755)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="session")
def mesh(mesh_root: Path) -> Iterator[Mesh]:
    m = start_mesh(mesh_root / "data", free_port_topology(mesh_root), mesh_root / "mesh.log")
    pids = all_pids(m)
    yield m
    assert m.stop() == 0, m.log()[-4000:]
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30, what="no orphan process after mesh stop")
