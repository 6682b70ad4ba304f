"""OpenTelemetry traces across gRPC and NATS: off by default, switched on by configuration.

- ``LIVEBET_OTLP_ENDPOINT`` (e.g. ``http://127.0.0.1:4317``): spans go to an OTLP/gRPC collector
  (Jaeger speaks OTLP), batched.
- ``LIVEBET_TRACE_FILE``: spans are written as JSON lines to that file (one file per process;
  the tests use it to follow a trace across processes).
- ``LIVEBET_TRACE_SAMPLE``: the share of new traces kept (default 1.0); a trace started
  elsewhere keeps its parent's decision.

With neither set, the OpenTelemetry API stays a no-op: no provider, no span is recorded, and
:func:`inject` adds nothing to a message.

gRPC: every service gets the server interceptor (a span per RPC, continuing the caller's trace
from the ``traceparent`` header); the platform's own clients get the client interceptors. NATS:
:func:`inject` puts the current context in a message's headers (W3C ``traceparent``) and
:func:`extract` takes it out, so a feed event's trace continues in the engine that prices it and
in the stream process that sends the result: one trace, feed → pricing → stream.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Link, SpanKind

_configured = False
_tracer = trace.get_tracer("livebet")


def enabled() -> bool:
    return bool(os.environ.get("LIVEBET_OTLP_ENDPOINT") or os.environ.get("LIVEBET_TRACE_FILE"))


def setup(service: str, instance: str = "") -> bool:
    """Install the tracer provider this process's configuration asks for; False when tracing is
    off. Safe to call twice."""
    global _configured
    if _configured or not enabled():
        return _configured
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    ratio = float(os.environ.get("LIVEBET_TRACE_SAMPLE", "1.0"))
    resource = Resource.create({"service.name": service, "service.instance.id": instance or service})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(ratio)))
    endpoint = os.environ.get("LIVEBET_OTLP_ENDPOINT")
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    path = os.environ.get("LIVEBET_TRACE_FILE")
    if path:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
        exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    return True


def server_interceptors() -> list[Any]:
    """The gRPC aio server interceptor, when tracing is on."""
    if not _configured:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list[Any]:
    """The gRPC aio client interceptors, when tracing is on."""
    if not _configured:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def inject(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus the current trace context (nothing when no span is recording)."""
    if _configured:
        propagate.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> context.Context | None:
    """The trace context a message carries, or None."""
    if not _configured or not headers or "traceparent" not in headers:
        return None
    return propagate.extract(dict(headers))


@contextlib.contextmanager
def span(
    name: str,
    parent: context.Context | None = None,
    links: list[context.Context] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    **attributes: Any,
) -> Iterator[trace.Span]:
    """A span, child of ``parent`` (or of the current span), linked to the other ``links``."""
    link_list = []
    for c in links or ():
        sc = trace.get_current_span(c).get_span_context()
        if sc.is_valid:
            link_list.append(Link(sc))
    with _tracer.start_as_current_span(name, context=parent, kind=kind, links=link_list) as s:
        for k, v in attributes.items():
            s.set_attribute(k, v)
        yield s


def current_ids() -> tuple[str, str]:
    """(trace id, span id) of the current span as hex, or ("", "")."""
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return "", ""
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x")
