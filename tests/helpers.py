"""Test helpers: the project's own process runner and health call (mesh.process)."""

import asyncio
import inspect
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
from livebet.feed.v1 import event_pb2 as ev

from feed.domain.simulator import simulate
from feed.simulator import Normaliser, schedule
from mesh.process import Process as Proc
from mesh.process import health, service_spec, wait_for

__all__ = ["Proc", "health", "metric", "service_spec", "simulated_events", "wait_for"]


def simulated_events(matches: int, seed: int, fixtures_only: bool = False) -> list[ev.FeedEvent]:
    """Every normalised feed event of ``matches`` simulated matches: their fixtures, then their
    incidents and states in the order they happen (the simulator's own schedule)."""
    played = simulate(matches, seed)
    norm = Normaliser()
    events = [norm.fixture(m, 0) for m in played]
    if not fixtures_only:
        events += [e for _, m, i in schedule(played) for e in norm.events(m, i, 1000)]
    return events


def feed_channel(target: str) -> grpc.Channel:
    """A channel to a service as a feed provider (the role FeedService.Ingest/PublishBatch need)."""
    from mesh import access

    return access.channel(target, "svc:tests", [access.FEED])


def admin_channel(target: str) -> grpc.Channel:
    """A channel to a service as a trader/admin (trader, manual settlement and report APIs)."""
    from mesh import access

    return access.channel(target, "trader:tests", [access.ADMIN])


def metric(port: str, name: str) -> float:
    """A metric of a process (``port``: its /metrics), summed over its label sets."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith((name + " ", name + "{")))


async def until(predicate: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    """Wait, on the running loop, until ``predicate()`` (a value or an awaitable) is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = predicate()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)
