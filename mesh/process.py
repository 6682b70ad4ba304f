"""Run one real process from a :class:`~mesh.infra.ProcessSpec` synchronously, outside the
supervisor: the tests and the benchmarks start NATS, PostgreSQL, Valkey and service processes with
it. Also a blocking gRPC health call and a polling helper."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.infra import ProcessSpec, free_port
from mesh.supervisor import GEN_ROOT, REPO_ROOT, _die_with_parent


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> None:
    """Poll ``predicate`` until true; raise ``AssertionError`` naming ``what`` after ``timeout`` (a
    functional limit, not a speed assertion: speed is measured by benchmarks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def health(target: str, service: str = "", metadata: tuple[tuple[str, str], ...] = ()) -> str:
    """Health status name of the gRPC server at ``target``, or UNREACHABLE."""
    with grpc.insecure_channel(target) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1, metadata=metadata
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU time each process used so far (Linux ``/proc``)."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except OSError:
            continue  # gone (a PostgreSQL backend that closed)
        out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return out


class CpuMeter:
    """CPU time per operation of groups of processes, e.g. ``{"betting": lambda: [pid]}``
    (the lists are read again at the end: PostgreSQL backends come and go)."""

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups
        self.start = {name: cpu_seconds(pids()) for name, pids in groups.items()}

    def per_op_ms(self, ops: float) -> dict[str, float]:
        out = {}
        for name, pids in self.groups.items():
            now, before = cpu_seconds(pids()), self.start[name]
            used = sum(t - before.get(pid, 0.0) for pid, t in now.items())
            out[f"{name}_cpu_ms"] = round(1000 * used / max(ops, 1), 3)
        return out


class Process:
    """A real process started from a :class:`ProcessSpec`, logging to a file."""

    def __init__(self, spec: ProcessSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Process:
        self.spec.prepare()
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.popen = subprocess.Popen(
            self.spec.argv,
            env={**os.environ, **self.spec.env},
            cwd=self.spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, self.spec.stop_signal),
            **self.spec.identity(),
        )
        wait_for(lambda: self.alive_or_fail() and self.spec.ready(), timeout, what=f"{self.spec.name} ready")
        self.spec.after_ready()
        return self

    def alive_or_fail(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.spec.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(self.spec.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        if self._log:
            self._log.close()
        return int(self.popen.returncode)


def service_spec(
    name: str, module: str, env: dict[str, str], grpc_port: int | None = None, cwd: Path = REPO_ROOT
) -> ProcessSpec:
    """A service process (``python -m module``) on free ports; ready when health says SERVING."""
    port = grpc_port or free_port()
    target = f"127.0.0.1:{port}"
    full_env = {
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(GEN_ROOT)]),
        "LIVEBET_GRPC_PORT": str(port),
        "LIVEBET_METRICS_PORT": str(free_port()),
        "LIVEBET_HEALTH_INTERVAL_SECONDS": "0.2",
        "LIVEBET_GRACE_SECONDS": "3",
        **env,
    }
    return ProcessSpec(
        name=name,
        kind="service",
        argv=[sys.executable, "-m", module],
        env=full_env,
        cwd=cwd,
        port=port,
        health_target=target,
        ready=lambda: health(target) == "SERVING",
    )
