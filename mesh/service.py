"""The grpc.aio server bootstrap every livebet service runs on.

It wires, once, at start-up: the standard ``grpc.health.v1`` service (SERVING only while every
dependency is up), server reflection, the observability interceptor, the ``/metrics`` endpoint,
JSON logs, and graceful shutdown on SIGTERM/SIGINT:

1. health goes NOT_SERVING (``enter_graceful_shutdown``) so Envoy and clients stop sending;
2. ``stopping`` is set: long-lived streams built with :meth:`ServiceApp.until_stopping` end
   cleanly with status OK, so clients resume elsewhere;
3. ``server.stop(grace)`` lets in-flight calls finish within the grace period;
4. dependencies are drained and closed.

Garbage collection: the first time the service turns SERVING (its modules imported, its state
built), every object alive is moved out of the cyclic collector's reach (``gc.freeze``). A full
collection walks every tracked object with the event loop stopped: ~0.4 µs an object here, so the
~120,000-180,000 objects of a service's code and wiring made each one a 50-270 ms pause, every
few seconds under load. Frozen, they are skipped; only what the service made since is walked.
Every collection's pause is measured (``livebet_gc_pause_seconds``).

With ``LIVEBET_DRAIN_SECONDS`` set, step 1 is followed by that long a wait, still serving, so the
load balancer moves new calls elsewhere before step 3 refuses them (a rolling restart).

Every step is bounded, and so is the whole: a process asked to stop is gone within its stop budget
(:meth:`ServiceApp.stop_budget`) even if a library swallows a cancellation, a thread is stuck in a
blocking call, or the servers it talks to died with it. Past the budget a watchdog thread logs
what overran and ends the process (exit code 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from mesh import contracts, eventloop, logs, tracing
from mesh.access import AccessInterceptor
from mesh.deps import Dependency
from mesh.metrics import Metrics, ObservabilityInterceptor
from mesh.settings import Settings
from mesh.tasks import cancel_and_wait

log = logging.getLogger("mesh.service")

T = TypeVar("T")
D = TypeVar("D", bound=Dependency)
S = TypeVar("S")
Register = Callable[[grpc.aio.Server], None]
Hook = Callable[[], Awaitable[None]]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

#: Channel/server options shared by every service: keepalive so dead peers are noticed, and no
#: SO_REUSEPORT so that two processes can never silently share a port.
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]
DEFAULT_MAX_RECEIVE_BYTES = 8 * 1024 * 1024
#: added to a stop's budget for the interpreter's own exit (threads, atexit handlers, log flushing)
STOP_MARGIN_SECONDS = 5.0
#: a collection pausing the process this long or longer, once its heap is frozen, is logged
LONG_GC_SECONDS = 0.02


def _log_long_pause(generation: int, seconds: float, collected: int) -> None:
    log.warning(
        "long garbage collection pause",
        extra={"generation": generation, "ms": round(seconds * 1000, 1), "collected": collected},
    )


class ServiceApp:
    """One service process: a gRPC server, its dependencies and their health."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dependencies: list[Dependency] = []
        self.metrics = Metrics(settings.service)
        self.health = health_aio.HealthServicer()
        self.stopping = asyncio.Event()
        self.grpc_port = 0
        #: largest request message accepted (bigger: RESOURCE_EXHAUSTED before it is parsed)
        self.max_receive_bytes = DEFAULT_MAX_RECEIVE_BYTES
        self._service_names: list[str] = []
        self._registrations: list[Register] = []
        self._on_start: list[Hook] = []
        self._on_stop: list[Hook] = []
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()
        self._serving: bool | None = None
        self._health_dirty = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_stage = ""  # where a stop is, for the watchdog's message
        self._frozen = False  # gc.freeze done (the first time the service turned SERVING)
        self._gc_callback: Callable[[str, dict[str, int]], None] | None = None

    # --- wiring ------------------------------------------------------------------------------
    def add_dependency(self, dependency: D) -> D:
        """Declare a dependency: health is SERVING only while all of them are up."""
        self.dependencies.append(dependency)
        return dependency

    def add_service(self, full_name: str, servicer: S, add_to_server: Callable[[S, grpc.aio.Server], None]) -> None:
        """Serve ``servicer`` as gRPC service ``full_name`` (its health follows the dependencies),
        e.g. ``add_service("livebet.feed.v1.FeedService", api, add_FeedServiceServicer_to_server)``."""
        self._service_names.append(full_name)
        self._registrations.append(lambda server: add_to_server(servicer, server))

    def on_start(self, hook: Hook) -> None:
        """Run ``hook`` after the server started (e.g. start consumers)."""
        self._on_start.append(hook)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background for the life of the service (cancelled on stop); an
        exception in it is logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task failed", exc_info=t.exception())

        task.add_done_callback(done)
        return task

    def on_stop(self, hook: Hook) -> None:
        """Run ``hook`` during shutdown, after the server stopped accepting calls."""
        self._on_stop.append(hook)

    # --- health ------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return all(d.up for d in self.dependencies)

    def _dependency_changed(self) -> None:
        self._health_dirty.set()

    async def _refresh_health(self) -> None:
        m = self.metrics
        for d in self.dependencies:
            m.dependency_up.labels(m.service, d.name).set(1 if d.up else 0)
        if self.stopping.is_set():
            return
        serving = self.healthy
        if serving == self._serving:
            return
        if serving and not self._frozen:  # start-up is over: before the first call is routed here
            self._freeze_heap()
        self._serving = serving
        status = SERVING if serving else NOT_SERVING
        for name in ["", *self._service_names]:
            await self.health.set(name, status)
        m.serving.labels(m.service).set(1 if serving else 0)
        log.info("health %s", "SERVING" if serving else "NOT_SERVING")

    def _freeze_heap(self) -> None:
        """Collect once, then move every object alive out of the collector's reach (see the
        module's doc). Once per process: what is frozen is never collected, so a cycle that dies
        later stays; objects alive at start-up are the process's code and wiring, made to last."""
        started = time.perf_counter()
        gc.collect()
        gc.freeze()
        self._frozen = True
        self.metrics.gc_frozen.set(gc.get_freeze_count())
        log.info(
            "heap frozen",
            extra={"objects": gc.get_freeze_count(), "ms": round((time.perf_counter() - started) * 1000, 1)},
        )

    def _watch_gc(self) -> None:
        """Time every collection into ``livebet_gc_pause_seconds`` (removed again at stop); once
        the heap is frozen, log each pause of ``LONG_GC_SECONDS`` or more (``long garbage
        collection pause``, with its generation), so a latency outlier can be matched to one."""
        started = [0.0]
        observe = self.metrics.gc_pause.observe
        loop = asyncio.get_running_loop()

        def callback(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
                return
            pause = time.perf_counter() - started[0]
            observe(pause)
            if pause >= LONG_GC_SECONDS and self._frozen and not loop.is_closed():
                # not logged from inside the collection (the logging handler's lock may be held by
                # the code it interrupted): the loop logs it as soon as it runs again
                loop.call_soon_threadsafe(_log_long_pause, info["generation"], pause, info["collected"])

        self._gc_callback = callback
        gc.callbacks.append(callback)

    async def _health_loop(self) -> None:
        """Re-evaluate health at once when a dependency changes, and every interval anyway."""
        while not self.stopping.is_set():
            await self._refresh_health()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._health_dirty.wait(), self.settings.health_interval_seconds)
            self._health_dirty.clear()

    # --- streams -----------------------------------------------------------------------------
    async def until_stopping(self, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield from ``source`` until shutdown starts, then end the stream cleanly (status OK)."""
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            while True:
                nxt = asyncio.ensure_future(anext(source))
                done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    await cancel_and_wait(nxt)
                    return
                try:
                    yield nxt.result()
                except StopAsyncIteration:  # pragma: no cover - result() raises, not yield
                    return
        except StopAsyncIteration:
            return
        finally:
            stop.cancel()
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        contracts.load_all()
        server = grpc.aio.server(
            interceptors=[*tracing.server_interceptors(), ObservabilityInterceptor(self.metrics), AccessInterceptor()],
            options=[*SERVER_OPTIONS, ("grpc.max_receive_message_length", self.max_receive_bytes)],
        )
        for register in self._registrations:
            register(server)
        # Health starts NOT_SERVING: nothing is connected yet.
        for name in ["", *self._service_names]:
            await self.health.set(name, NOT_SERVING)
        self.metrics.serving.labels(self.metrics.service).set(0)
        self._serving = False
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                *self._service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        self.grpc_port = server.add_insecure_port(f"{s.grpc_host}:{s.grpc_port}")
        if self.grpc_port == 0:
            raise RuntimeError(f"could not bind gRPC port {s.grpc_host}:{s.grpc_port}")
        metrics_port = self.metrics.serve(s.metrics_host, s.metrics_port)
        self._watch_gc()
        await server.start()
        self._server = server
        for d in self.dependencies:
            d.on_change(self._dependency_changed)
            await d.start()
        self._health_task = asyncio.create_task(self._health_loop(), name="health")
        for hook in self._on_start:
            await hook()
        log.info(
            "listening",
            extra={
                "grpc_port": self.grpc_port,
                "metrics_port": metrics_port,
                "replica": s.replica,
                "event_loop": eventloop.name_of(asyncio.get_running_loop()),
            },
        )

    def stop_budget(self) -> float:
        """Seconds a stop may take in all: the drain, the grace period, each stop hook and each
        dependency's close at its own bound, and a margin for the interpreter's exit."""
        s = self.settings
        steps = len(self._on_stop) + len(self.dependencies)
        return s.drain_seconds + s.grace_seconds + steps * self._step_limit() + STOP_MARGIN_SECONDS

    def _step_limit(self) -> float:
        return max(1.0, self.settings.grace_seconds)

    def _arm_stop_watchdog(self) -> None:
        budget = self.stop_budget()

        def overran() -> None:
            log.error(
                "shutdown overran its budget; exiting now",
                extra={"budget_seconds": round(budget, 1), "stage": self._stop_stage},
            )
            logging.shutdown()
            os._exit(1)

        timer = threading.Timer(budget, overran)
        timer.daemon = True  # never what keeps the process alive
        timer.start()

    async def stop(self) -> None:
        """Graceful shutdown (idempotent)."""
        if self._stop_stage:
            await self._stopped.wait()
            return
        self._stop_stage = "drain"
        self._arm_stop_watchdog()
        log.info("shutting down", extra={"grace_seconds": self.settings.grace_seconds})
        await self.health.enter_graceful_shutdown()
        self.metrics.serving.labels(self.metrics.service).set(0)
        if self.settings.drain_seconds > 0:  # still serving while the load balancer notices
            await asyncio.sleep(self.settings.drain_seconds)
        self.stopping.set()
        self._stop_stage = "grpc server"
        if self._server is not None:
            await self._server.stop(self.settings.grace_seconds)
        for task in list(self._tasks):
            task.cancel()
        # every step is bounded: a dependency that is already gone must not keep the process alive
        limit = self._step_limit()
        for hook in self._on_stop:
            self._stop_stage = f"stop hook {getattr(hook, '__qualname__', hook)}"
            with contextlib.suppress(Exception):
                await asyncio.wait_for(hook(), limit)
        for d in reversed(self.dependencies):
            self._stop_stage = f"closing {d.name}"
            with contextlib.suppress(Exception):
                await asyncio.wait_for(d.close(), limit)
        self._health_task.cancel()
        if self._gc_callback in gc.callbacks:
            gc.callbacks.remove(self._gc_callback)
        self._stop_stage = "exit"
        self._stopped.set()
        log.info("stopped")

    async def serve(self) -> None:
        """Start, then run until SIGTERM or SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))
        await self.start()
        await self._stopped.wait()


def run(service: str, build: Callable[[ServiceApp], Any]) -> None:
    """Entry point of a service process: settings, logs, wiring via ``build(app)``, serve."""
    settings = Settings.from_env(service)
    logs.configure(settings.instance, settings.log_level)
    tracing.setup(service, settings.instance)

    async def main() -> None:
        app = ServiceApp(settings)
        build(app)
        await app.serve()

    eventloop.run(main())
