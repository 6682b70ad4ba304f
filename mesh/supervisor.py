"""The local supervisor behind ``python -m mesh up``.

Starts NATS, Valkey and PostgreSQL, then every service replica as its own process, then Envoy;
waits until each is ready (services: gRPC health SERVING); restarts whatever exits with
exponential backoff; writes its state to ``<data>/run/mesh.json`` for ``mesh status``; on
SIGINT/SIGTERM stops Envoy, then the services (gracefully), then the servers, leaving no orphan.

Children run in their own process group (a Ctrl-C reaches only the supervisor, which stops them in
order) and get ``PR_SET_PDEATHSIG`` so that they die with the supervisor even if it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import json
import logging
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge import auth, envoy_config
from mesh import infra, sla
from mesh.backoff import Backoff
from mesh.infra import ProcessSpec
from mesh.topology import ServiceSpec, Topology

log = logging.getLogger("mesh.supervisor")

REPO_ROOT = Path(__file__).resolve().parents[1]
GEN_ROOT = REPO_ROOT / "gen" / "python"
STATE_FILE = "mesh.json"
CONTROL_SOCKET = "control.sock"
DRAIN_SECONDS = 1.5
_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int = signal.SIGTERM) -> None:  # runs in the child between fork and exec
    """Ask the kernel to send ``sig`` when our parent dies: the process's own stop signal, so that
    PostgreSQL gets SIGINT (fast shutdown) rather than SIGTERM (smart: wait for every client)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


@dataclass
class Managed:
    """A supervised process and what we know of it."""

    spec: ProcessSpec
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    status: str = "stopped"  # starting | ready | serving | not_serving | backoff | exited | stopped
    started_at: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(0.1, 10.0, jitter=False))
    log_file: IO[bytes] | None = None
    retired: bool = False  # replaced by a rolling restart: stopped on purpose, never restarted

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.returncode is None else None


async def grpc_health(target: str, timeout: float = 1.0, service: str = "") -> str:
    """``SERVING`` / ``NOT_SERVING`` / ``UNREACHABLE`` for the gRPC server at ``target``."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            resp = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


class Supervisor:
    def __init__(
        self,
        topology: Topology,
        data_dir: Path,
        *,
        durable: bool = True,
        grace_seconds: float = 5.0,
        out: Callable[[str], None] = print,
        slo_path: Path = sla.DEFAULT_PATH,
    ) -> None:
        self.t = topology.resolve_ports()
        self.data_dir = data_dir.resolve()
        self.run_dir = self.data_dir / "run"
        self.log_dir = self.data_dir / "logs"
        self.durable = durable
        self.grace = grace_seconds
        self.out = out
        self.stopping = asyncio.Event()
        self.procs: list[Managed] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._lock_fd: int | None = None
        self.slo_path = slo_path
        self.sla_breaches = 0
        self._rolling = asyncio.Lock()

    # --- what to run -------------------------------------------------------------------------
    def infra_specs(self) -> list[ProcessSpec]:
        t, d = self.t, self.data_dir
        return [
            infra.nats(d / "nats", t.nats_port, t.nats_monitor_port, t.host),
            infra.valkey(d / "redis", t.redis_port, t.host, persist=self.durable),
            infra.postgres(d / "postgres", t.postgres_port, t.host, durable=self.durable),
        ]

    def service_env(self) -> dict[str, str]:
        t = self.t
        return {
            "LIVEBET_NATS_URL": f"nats://{t.host}:{t.nats_port}",
            "LIVEBET_REDIS_URL": f"redis://{t.host}:{t.redis_port}/0",
            "LIVEBET_POSTGRES_DSN": infra.postgres_dsn(t.postgres_port, t.host),
            "LIVEBET_GRACE_SECONDS": str(self.grace),
            # Envoy health-checks every second: a stopping service keeps serving until it noticed
            "LIVEBET_DRAIN_SECONDS": str(DRAIN_SECONDS),
        }

    def service_spec(self, s: ServiceSpec, i: int, port: int, mport: int) -> ProcessSpec:
        """Replica ``i`` of service ``s`` on gRPC port ``port`` and metrics port ``mport``."""
        env = {
            **self.service_env(),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(GEN_ROOT)]),
            "LIVEBET_REPLICA": str(i),
            "LIVEBET_GRPC_HOST": self.t.host,
            "LIVEBET_GRPC_PORT": str(port),
            "LIVEBET_METRICS_HOST": self.t.host,
            "LIVEBET_METRICS_PORT": str(mport),
        }
        return ProcessSpec(
            name=f"{s.name}-{i}",
            kind="service",
            argv=[sys.executable, "-m", s.module],
            ready=lambda: False,
            port=port,
            env=env,
            cwd=REPO_ROOT,
            health_target=f"{self.t.host}:{port}",
            replica=i,
            service=s.name,
        )

    def service_specs(self) -> list[ProcessSpec]:
        return [
            self.service_spec(s, i, port, mport)
            for s in self.t.services
            for i, (port, mport) in enumerate(zip(s.grpc_ports, s.metrics_ports, strict=True))
        ]

    def tool_specs(self) -> list[ProcessSpec]:
        addresses = {s.name: f"{self.t.host}:{s.grpc_ports[0]}" for s in self.t.services}
        # {run}: a number new at every start (minutes since 1970), so what a tool creates - the
        # simulator's match ids - never collides with what an earlier run left in the data folder
        addresses["run"] = str(int(time.time()) // 60)
        # {edge} and {feed_token}: a provider-like tool publishes through Envoy with a token, so it
        # keeps working while the feed service is rolled
        addresses["edge"] = f"{self.t.host}:{self.t.edge_port}"
        addresses["feed_token"] = auth.issue(auth.ensure_keys(self.data_dir / "edge"), "svc:simulator", ["feed"])
        specs = []
        for tool in self.t.tools:
            args = [a.format(**addresses) for a in tool.args]
            specs.append(
                ProcessSpec(
                    name=tool.name,
                    kind="tool",
                    argv=[sys.executable, "-m", tool.module, *args],
                    ready=lambda: True,
                    env={"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(GEN_ROOT)])},
                    cwd=REPO_ROOT,
                )
            )
        return specs

    def envoy_spec(self) -> ProcessSpec:
        path = self.run_dir / "envoy.json"
        keys = auth.ensure_keys(self.data_dir / "edge")
        schema, web = REPO_ROOT / "gen" / "livebet.binpb", REPO_ROOT / "edge" / "web"
        path.write_text(envoy_config.render(self.t, str(keys.jwks_path), str(schema), str(web)))
        return infra.envoy(path, self.t.host, self.t.admin_port, self.t.edge_port)

    # --- process control ---------------------------------------------------------------------
    async def _spawn(self, m: Managed) -> None:
        spec = m.spec
        if m.log_file is None:
            m.log_file = open(m.log_path, "ab")  # noqa: SIM115, ASYNC230 - lives as long as the process
        env = {**os.environ, **spec.env}
        m.proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=m.log_file,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=spec.cwd,
            process_group=0,
            preexec_fn=functools.partial(_die_with_parent, spec.stop_signal),
            **spec.identity(),
        )
        m.started_at = time.monotonic()
        m.status = "starting"
        self.write_state()

    async def _ready(self, m: Managed, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            if m.proc is None or m.proc.returncode is not None:
                return False
            if m.spec.kind == "service":
                if await grpc_health(m.spec.health_target, 0.5) == "SERVING":
                    m.status = "serving"
                    self.write_state()
                    return True
            elif await asyncio.to_thread(m.spec.ready):
                m.status = "ready"
                self.write_state()
                return True
            await asyncio.sleep(0.05)
        return False

    async def _start(self, spec: ProcessSpec, timeout: float, attempts: int = 3) -> Managed:
        """Start ``spec`` and wait until ready; a process that dies while starting is tried again
        (``attempts`` in all), then start-up fails with the end of its log."""
        m = Managed(spec, self.log_dir / f"{spec.name}.log")
        self.procs.append(m)
        await asyncio.to_thread(spec.prepare)
        for attempt in range(1, attempts + 1):
            await self._spawn(m)
            if await self._ready(m, timeout):
                break
            if self.stopping.is_set():
                raise RuntimeError("stopped while starting")
            assert m.proc is not None
            if m.proc.returncode is None:
                raise RuntimeError(f"{spec.name} did not become ready in {timeout:.0f}s; see {m.log_path}")
            tail = "\n    ".join(m.log_path.read_text(errors="replace").splitlines()[-8:])
            if attempt == attempts:
                raise RuntimeError(f"{spec.name} exited with {m.proc.returncode} while starting:\n    {tail}")
            m.restarts += 1
            await asyncio.sleep(m.backoff.next())
        await asyncio.to_thread(spec.after_ready)
        self._watchers.append(asyncio.create_task(self._watch(m), name=f"watch-{spec.name}"))
        return m

    async def _watch(self, m: Managed) -> None:
        """Restart ``m`` whenever it exits, with backoff; keep its health status current."""
        while not self.stopping.is_set():
            assert m.proc is not None
            health = asyncio.create_task(self._track_health(m))
            rc = await m.proc.wait()
            health.cancel()
            if self.stopping.is_set() or m.retired:
                return
            uptime = time.monotonic() - m.started_at
            if uptime > 30:
                m.backoff.reset()
            delay = m.backoff.next()
            m.status = "backoff"
            m.restarts += 1
            self.write_state()
            log.warning(
                "%s exited with %s after %.1fs; restart #%d in %.2fs",
                m.spec.name,
                rc,
                uptime,
                m.restarts,
                delay,
            )
            self.out(f"! {m.spec.name} exited ({rc}); restarting in {delay:.1f}s (restart #{m.restarts})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return
            await self._spawn(m)
            if await self._ready(m, 60):
                self.out(f"  {m.spec.name} is back ({m.status}) in {time.monotonic() - m.started_at:.2f}s")

    async def _track_health(self, m: Managed) -> None:
        if m.spec.kind != "service":
            return
        while True:
            await asyncio.sleep(1.0)
            if m.status in ("serving", "not_serving"):
                h = await grpc_health(m.spec.health_target, 0.5)
                new = "serving" if h == "SERVING" else "not_serving"
                if new != m.status:
                    m.status = new
                    self.write_state()

    async def _stop(self, m: Managed) -> None:
        if m.proc is None or m.proc.returncode is not None:
            m.status = "stopped"
            return
        with contextlib.suppress(ProcessLookupError):
            m.proc.send_signal(m.spec.stop_signal)
        try:
            await asyncio.wait_for(m.proc.wait(), self.grace + 5)
        except TimeoutError:
            log.warning("%s did not stop in time; killing its process group", m.spec.name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(m.proc.pid, signal.SIGKILL)
            await m.proc.wait()
        m.status = "stopped"
        if m.log_file is not None:
            m.log_file.close()
            m.log_file = None

    # --- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        t = self.t
        return {
            "supervisor_pid": os.getpid(),
            "edge": f"{t.host}:{t.edge_port}",
            "envoy_admin": f"{t.host}:{t.admin_port}",
            "sla_breaches": self.sla_breaches,
            "processes": [
                {
                    "name": m.spec.name,
                    "kind": m.spec.kind,
                    "service": m.spec.service,
                    "pid": m.pid,
                    "port": m.spec.port,
                    "health_target": m.spec.health_target,
                    "metrics": (
                        f"{t.host}:{m.spec.env['LIVEBET_METRICS_PORT']}"
                        if "LIVEBET_METRICS_PORT" in m.spec.env
                        else None
                    ),
                    "restarts": m.restarts,
                    "status": m.status,
                    "log": str(m.log_path),
                }
                for m in self.procs
            ],
        }

    def write_state(self) -> None:
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        tmp.replace(self.run_dir / STATE_FILE)

    def _lock(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / "mesh.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another `mesh up` is running on {self.data_dir}") from None
        self._lock_fd = fd

    # --- the whole thing ---------------------------------------------------------------------
    async def up(self) -> None:
        started = time.monotonic()
        self._lock()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            self.out(f"livebet: starting from {self.data_dir}")
            await asyncio.gather(*(self._start(s, 60) for s in self.infra_specs()))
            self.out(f"  servers ready in {time.monotonic() - started:.1f}s: NATS, Valkey, PostgreSQL")
            await asyncio.gather(*(self._start(s, 60) for s in self.service_specs()))
            self.out(f"  services SERVING in {time.monotonic() - started:.1f}s")
            await self._start(self.envoy_spec(), 30)
            for tool in self.tool_specs():
                await self._start(tool, 10)
            self.out(f"livebet is up in {time.monotonic() - started:.1f}s\n")
            self.out(self.table())
            edge = f"http://{'localhost' if self.t.host == '127.0.0.1' else self.t.host}:{self.t.edge_port}"
            demo = auth.issue(auth.ensure_keys(self.data_dir / "edge"), "demo")
            self.out(
                f"\nweb app:  {edge}/   (signed in as 'demo': {edge}/#token={demo} )"
                f"\nEnvoy:    {edge} serves gRPC, gRPC-web and REST (/v1/...)"
                "   tokens: python -m mesh token --account A"
                f"\nlogs:     {self.log_dir}   Ctrl-C stops everything"
            )
            self._watchers.append(asyncio.create_task(self._check_sla()))
            try:
                control: asyncio.Server | None = await asyncio.start_unix_server(
                    self._control, path=str(self.run_dir / CONTROL_SOCKET)
                )
            except OSError as exc:  # e.g. a data folder path too long for a socket
                control = None
                self.out(f"note: no control socket ({exc}); `mesh roll` is unavailable")
            await self.stopping.wait()
            if control is not None:
                control.close()
        finally:
            await self.down()

    # --- rolling restarts ----------------------------------------------------------------------
    async def _envoy_sees(self, port: int, healthy: bool, timeout: float = 15.0) -> bool:
        """Wait until Envoy's health checks report the endpoint on ``port`` healthy (or not)."""
        url = f"http://{self.t.host}:{self.t.admin_port}/clusters?format=json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read())
                for c in json.loads(text)["cluster_statuses"]:
                    for h in c.get("host_statuses", []):
                        if h["address"]["socket_address"].get("port_value") == port:
                            ok = h["health_status"].get("eds_health_status") == "HEALTHY" and not h[
                                "health_status"
                            ].get("failed_active_health_check", False)
                            if ok == healthy:
                                return True
            except (OSError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.1)
        return False

    async def roll(self, service: str, say: Callable[[str], None]) -> float:
        """Replace every replica of ``service``, one at a time, without downtime: start the new
        process in the free slot, wait until it is SERVING and Envoy routes to it, then stop the old
        one gracefully (NOT_SERVING, drain, in-flight calls finish, streams end with OK so their
        clients resume elsewhere). Returns the seconds it took."""
        s = self.t.service(service)
        started = time.monotonic()
        old = sorted(
            (m for m in self.procs if m.spec.service == service and not m.retired), key=lambda m: m.spec.replica or 0
        )
        for m in old:
            used = {p.spec.port for p in self.procs if p.spec.service == service and not p.retired}
            port, mport = next((p, mp) for p, mp in s.slots if p not in used)
            say(f"{m.spec.name}: starting its replacement on port {port}")
            new = await self._start(self.service_spec(s, m.spec.replica or 0, port, mport), 60)
            if not await self._envoy_sees(port, healthy=True):
                say(f"{m.spec.name}: Envoy does not route to the new process yet; going on")
            say(f"{m.spec.name}: new process {new.pid} SERVING; draining the old one ({m.pid})")
            m.retired = True
            await self._stop(m)
            self.procs.remove(m)
            self.write_state()
            say(f"{m.spec.name}: replaced")
        return time.monotonic() - started

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One command a connection, as a JSON line: ``{"roll": ["betting", ...]}``; progress and
        the result come back as JSON lines."""

        def say(text: str) -> None:
            writer.write((json.dumps({"progress": text}) + "\n").encode())

        try:
            request = json.loads(await reader.readline())
            names = request.get("roll") or []
            known = {s.name for s in self.t.services}
            if not names or set(names) - known:
                raise ValueError(f"roll what? services: {sorted(known)}")
            async with self._rolling:
                for name in names:
                    took = await self.roll(name, say)
                    say(f"{name}: rolled in {took:.1f}s")
                    self.out(f"rolled {name} in {took:.1f}s")
            writer.write((json.dumps({"ok": True}) + "\n").encode())
        except Exception as exc:  # the caller gets the reason; the platform keeps running
            writer.write((json.dumps({"ok": False, "error": str(exc)}) + "\n").encode())
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
                writer.close()

    async def _check_sla(self) -> None:
        """Every interval, judge the calls of that interval against the SLOs: a breach is printed,
        appended to ``logs/sla.log`` (JSON lines) and counted in the state (``mesh status``)."""
        config = sla.load(self.slo_path)
        targets = [
            f"{self.t.host}:{m.spec.env['LIVEBET_METRICS_PORT']}" for m in self.procs if m.spec.kind == "service"
        ]
        checker = sla.Checker(config, targets)
        log_path = self.log_dir / "sla.log"
        while not self.stopping.is_set():
            try:
                rows = await asyncio.to_thread(checker.round)
            except OSError as exc:  # a service restarting: its counters start again, try next time
                checker.previous = None
                self.out(f"SLA check skipped: {exc}")
                rows = []
            broken = [r for r in rows if r.breaches]
            self.sla_breaches = checker.breaches
            if broken:
                lines = "".join(json.dumps({"ts": time.time(), **sla.as_json([r])[0]}) + "\n" for r in broken)
                await asyncio.to_thread(_append, log_path, lines)
                self.out("SLA breach: " + "; ".join(f"{r.name}: {', '.join(r.breaches)}" for r in broken))
                self.write_state()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), config.interval_seconds)

    async def down(self) -> None:
        self.stopping.set()
        for task in self._watchers:
            task.cancel()
        self.out("livebet: stopping")
        order = [[m for m in self.procs if m.spec.kind == k] for k in ("tool", "edge", "service", "infra")]
        for group in order:
            await asyncio.gather(*(self._stop(m) for m in group))
        self.write_state()
        self.out("livebet: stopped")

    def table(self) -> str:
        rows = [("process", "address", "pid", "status")]
        for m in self.procs:
            address = f"{self.t.host}:{m.spec.port}" if m.spec.port else "-"
            rows.append((m.spec.name, address, str(m.pid or "-"), m.status))
        width = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)) for r in rows)
