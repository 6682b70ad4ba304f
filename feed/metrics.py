"""The feed service's own Prometheus metrics: what arrives, and how late."""

from __future__ import annotations

from livebet.feed.v1 import event_pb2 as ev
from prometheus_client import CollectorRegistry, Counter, Histogram

from feed.service import IngestResult
from mesh.metrics import LATENCY_BUCKETS

#: a provider's clock may be seconds behind; its lag needs coarser buckets than ours
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class FeedMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "livebet_feed_events_total",
            "Feed events by provider and fate: stored, duplicate, stale (older than what was stored), skipped.",
            ["provider", "outcome"],
            registry=registry,
        )
        self.provider_lag = Histogram(
            "livebet_feed_provider_lag_seconds",
            "From the provider producing an event to the feed receiving it (the provider's clock).",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.store_lag = Histogram(
            "livebet_feed_store_lag_seconds",
            "From the feed receiving an event to JetStream having stored it (published for consumers).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

        self.liveness = Counter(
            "livebet_feed_liveness_events_total",
            "Events the feed itself published: provider_down for a silent producer, bet_stop for a "
            "silent match (or one not started past its kick-off), by provider.",
            ["provider", "kind"],
            registry=registry,
        )

    def published(self, events: list[ev.FeedEvent]) -> None:
        """What :meth:`feed.service.FeedCore.check_liveness` published."""
        for e in events:
            self.liveness.labels(e.provider, e.WhichOneof("payload") or "").inc()

    def observe(self, provider: str, result: IngestResult, events: list[ev.FeedEvent], now: float) -> None:
        for outcome, n in (
            ("stored", result.accepted),
            ("duplicate", result.duplicates),
            ("stale", result.stale),
            ("skipped", result.skipped),
        ):
            if n:
                self.events.labels(provider, outcome).inc(n)
        for e in events:
            if not e.HasField("received_at"):
                continue
            received = e.received_at.ToMilliseconds() / 1000
            self.store_lag.observe(max(0.0, now - received))
            if e.HasField("produced_at"):
                self.provider_lag.observe(max(0.0, received - e.produced_at.ToMilliseconds() / 1000))
