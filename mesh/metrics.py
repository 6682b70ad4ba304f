"""Prometheus metrics of one process and the gRPC server interceptor that records every RPC."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import inspect
import itertools
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from mesh import logs
from mesh.access import rewrap

log = logging.getLogger("mesh.rpc")

#: Buckets in seconds, fine at the low end where the SLOs live (ms) and up to long calls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class LoopCounter:
    """A label-free counter for code on the event loop's thread: ``inc`` is one addition
    (prometheus_client's ``Counter.inc`` takes a lock), for counts made per message sent. The
    ``/metrics`` thread reads the value as it stands."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name, self.documentation = name.removesuffix("_total"), documentation
        self.value = 0
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)


class LoopHistogram:
    """A label-free histogram for code on the event loop's thread: ``observe`` is a bisect and two
    additions (prometheus_client's takes two locks), for latencies observed per message sent. The
    exposition is the same as ``prometheus_client.Histogram``'s (tested)."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self._upper = [*buckets, math.inf]
        self._counts = [0] * len(self._upper)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._upper, value)] += 1
        self._sum += value

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        counts, total = list(self._counts), self._sum
        buckets = [(floatToGoString(u), c) for u, c in zip(self._upper, itertools.accumulate(counts), strict=True)]
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family


class Metrics:
    """The metrics every livebet process exposes on its own ``/metrics`` endpoint."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.rpc_latency = Histogram(
            "livebet_rpc_duration_seconds",
            "Server-side RPC latency (for streams: the stream's lifetime).",
            ["service", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rpc_errors = Counter(
            "livebet_rpc_errors_total",
            "RPCs that ended with a status other than OK.",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.rpc_in_flight = Gauge(
            "livebet_rpc_in_flight", "RPCs and streams being served.", ["service"], registry=self.registry
        )
        self.dependency_up = Gauge(
            "livebet_dependency_up",
            "1 while a dependency (nats, redis, postgres) is connected.",
            ["service", "dependency"],
            registry=self.registry,
        )
        self.serving = Gauge(
            "livebet_health_serving",
            "1 while the gRPC health status is SERVING.",
            ["service"],
            registry=self.registry,
        )
        self.consumer_pending = Gauge(
            "livebet_jetstream_consumer_pending",
            "Messages in the stream this process's consumer has not been delivered yet (its lag).",
            ["service", "stream", "consumer"],
            registry=self.registry,
        )
        self.consumer_ack_pending = Gauge(
            "livebet_jetstream_consumer_ack_pending",
            "Messages delivered to this process's consumer and not acknowledged yet.",
            ["service", "stream", "consumer"],
            registry=self.registry,
        )
        self.consumer_redelivered = Gauge(
            "livebet_jetstream_consumer_redelivered",
            "Messages delivered more than once and not acknowledged yet.",
            ["service", "stream", "consumer"],
            registry=self.registry,
        )
        # pauses of the garbage collector: every one stops the event loop (LoopHistogram: lock-free,
        # so safe to observe from inside a collection whatever lock the collected thread holds)
        self.gc_pause = LoopHistogram(
            "livebet_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector (each stops the process's event loop).",
            GC_BUCKETS,
            self.registry,
        )
        self.gc_frozen = Gauge(
            "livebet_gc_frozen_objects",
            "Objects moved out of the collector's reach when the service first turned SERVING (gc.freeze).",
            registry=self.registry,
        )
        self.service = service
        self.port = 0

    async def watch_consumers(
        self,
        js: Callable[[], Any],
        stream: str,
        names: Callable[[], Iterable[str]],
        stopping: asyncio.Event,
        interval: float = 5.0,
    ) -> None:
        """Every ``interval`` s, the JetStream figures of the durable consumers ``names()`` (the ones
        this process consumes now); a consumer no longer in the list loses its series."""
        shown: set[str] = set()
        gauges = (self.consumer_pending, self.consumer_ack_pending, self.consumer_redelivered)
        while not stopping.is_set():
            now = set(names())
            for gone in shown - now:
                for g in gauges:
                    with contextlib.suppress(KeyError):
                        g.remove(self.service, stream, gone)
            shown = now
            for name in now:
                try:
                    info = await js().consumer_info(stream, name)
                except Exception:  # not created yet, or NATS is down: try again next time
                    continue
                self.consumer_pending.labels(self.service, stream, name).set(info.num_pending or 0)
                self.consumer_ack_pending.labels(self.service, stream, name).set(info.num_ack_pending or 0)
                self.consumer_redelivered.labels(self.service, stream, name).set(info.num_redelivered or 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)

    def serve(self, host: str, port: int) -> int:
        """Start the ``/metrics`` HTTP endpoint in a thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(server.server_port)
        return self.port


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            return value
    return uuid.uuid4().hex


def _code_name(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> str:
    code = context.code()
    if code is None:
        return default.name
    if isinstance(code, grpc.StatusCode):
        return code.name
    # grpc.aio reports the code as the integer of the wire status.
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return str(code)


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Times every RPC per method and status code, counts errors, sets the request id for logs."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # method -> (the handler, it wrapped): a service's handler is the same object on every
        # call, so it is wrapped once, not per call (one entry per method, whatever comes)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        # labelled children looked up once (labels() validates and hashes its arguments per call)
        self._in_flight = metrics.rpc_in_flight.labels(metrics.service)
        self._latency: dict[tuple[str, str], Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = rewrap(handler, lambda behavior: self._wrap(method, behavior))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    @contextlib.contextmanager
    def _call(self, method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
        """Everything around one call: request id for the logs, in-flight gauge, latency and
        status-code accounting, and a log line for an unexpected exception."""
        m = self.metrics
        token = logs.request_id.set(_request_id(context))
        self._in_flight.inc()
        started, default = time.perf_counter(), grpc.StatusCode.OK
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except Exception:
            default = grpc.StatusCode.UNKNOWN
            if context.code() is None:  # a handler that set a status already said what went wrong
                log.exception("unhandled error in %s", method)
            raise
        except BaseException:  # cancelled by the client or by shutdown
            default = grpc.StatusCode.CANCELLED
            raise
        finally:
            code = _code_name(context, default)
            latency = self._latency.get((method, code))
            if latency is None:
                latency = self._latency[method, code] = m.rpc_latency.labels(m.service, method, code)
            latency.observe(time.perf_counter() - started)
            self._in_flight.dec()
            if code != "OK":
                m.rpc_errors.labels(m.service, method, code).inc()
            with contextlib.suppress(ValueError):  # a stream may end in another context
                logs.request_id.reset(token)

    def _wrap(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def stream_wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with self._call(method, context):
                    async for item in behavior(request, context):
                        yield item

            return stream_wrapper

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._call(method, context):
                result = behavior(request, context)
                return (await result) if inspect.isawaitable(result) else result

        return wrapper
