"""The event loop livebet's processes run on: uvloop (libuv, in Cython) unless
``LIVEBET_EVENT_LOOP=asyncio`` asks for the standard library's.

grpc.aio drives any asyncio loop from its own poller thread, and psycopg, nats-py and the RESP
client (:mod:`mesh.resp`) use only the loop's public API, so the choice changes what each turn of
the loop costs and nothing else. Measured in the betting service, PlaceBet at full load: ~8 % less
CPU per bet, paired runs on one PostgreSQL (docs/mesh.md, "The event loop").

The benchmarks with a raw reference figure run that reference (an echo server, a raw PostgreSQL
client, a raw streaming server) and their load generators on the same loop as the services, so
that a ratio compares like with like.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
LOOPS = ("uvloop", "asyncio")


def chosen() -> str:
    """The loop ``LIVEBET_EVENT_LOOP`` names (default uvloop); anything else is an error."""
    name = os.environ.get("LIVEBET_EVENT_LOOP", "").strip().lower() or "uvloop"
    if name not in LOOPS:
        raise ValueError(f"LIVEBET_EVENT_LOOP={name!r}: expected one of {', '.join(LOOPS)}")
    return name


def factory() -> Callable[[], asyncio.AbstractEventLoop]:
    if chosen() == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    with asyncio.Runner(loop_factory=factory()) as runner:
        return runner.run(main)


def name_of(loop: asyncio.AbstractEventLoop) -> str:
    """What a running loop is, for the logs: ``uvloop`` or ``asyncio``."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
