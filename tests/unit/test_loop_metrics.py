"""The lock-free metrics of the per-message hot paths expose exactly what prometheus_client's
classic ones would for the same observations."""

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mesh.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram


def _exposition(registry: CollectorRegistry) -> list[str]:
    # prometheus_client's classic metrics add a *_created sample, which the loop ones leave out
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_loop_histogram_and_counter_expose_what_prometheus_client_does() -> None:
    classic, loop = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("x_seconds", "doc", buckets=LATENCY_BUCKETS, registry=classic)
    h2 = LoopHistogram("x_seconds", "doc", LATENCY_BUCKETS, loop)
    c1, c2 = Counter("y_total", "doc", registry=classic), LoopCounter("y_total", "doc", loop)
    rng = random.Random(7)
    # bucket bounds themselves (le is inclusive), just above them, beyond the last, and at random
    values = [*LATENCY_BUCKETS, *(b * 1.000001 for b in LATENCY_BUCKETS), 0.0, 60.0]
    values += [rng.expovariate(100) for _ in range(500)]
    for v in values:
        h1.observe(v)
        h2.observe(v)
        c1.inc()
        c2.inc()
    c1.inc(5)
    c2.inc(5)
    assert _exposition(loop) == _exposition(classic)
    assert f"y_total {len(values) + 5}.0" in _exposition(loop)
