"""Stopping background tasks without swallowing the caller's own cancellation.

``task.cancel(); with suppress(CancelledError): await task`` has a trap: if the *caller* is
cancelled while it waits (a stop step bounded by ``asyncio.wait_for``), the suppress swallows that
cancellation too, and the step runs on unbounded, e.g. through a lease hand-over to a NATS server
that is already gone. :func:`cancel_and_wait` waits with ``asyncio.wait``, which never raises the
task's outcome, so a cancellation arriving meanwhile reaches the caller.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` (``None`` ones are skipped) and wait until each has finished, however it
    ends; its exception, if any, is marked retrieved (whoever ran the task logs its own failures)."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    if live:
        await asyncio.wait(live)
    for t in live:
        if not t.cancelled():
            t.exception()
