"""mesh.deps.NatsDependency against a real nats-server that stops answering for a while (SIGSTOP)
and comes back: the dependency goes down, comes up again, and its connection still reads.

The health probe once used nats-py's ``flush(timeout)``: a PONG that came after the timeout
stopped nats-py's read loop (``InvalidStateError`` on the cancelled future), and the connection
then read nothing (no reply, no JetStream ack) until nats-py's stale-connection check reconnected
it 10-15 s later. The feed's first batch after such a stall failed "10 of 10 unanswered"."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from nats.aio.msg import Msg

from mesh.deps import NatsDependency
from tests.conftest import start_nats


async def _until(check: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_nats_server_that_hung_is_read_from_again_as_soon_as_it_answers(tmp_path: Path) -> None:
    server = start_nats(tmp_path, "nats-stalled")
    dep = NatsDependency(server.url, "stall-test", interval=0.2)
    try:
        await dep.start()
        await dep.wait_ready(10)
        nc = dep.nc

        async def echo(msg: Msg) -> None:
            await msg.respond(b"echo:" + msg.data)

        await nc.subscribe("stall.echo", cb=echo)
        assert (await nc.request("stall.echo", b"before", timeout=2)).data == b"echo:before"

        server.proc.signal(signal.SIGSTOP)
        try:
            # the probe waits 1 s for its round trip: down after about 1.2 s
            assert await _until(lambda: not dep.up, 10), "the dependency stayed up while NATS did not answer"
        finally:
            server.proc.signal(signal.SIGCONT)

        # The late answers to the probes made while it hung arrive now. Well within nats-py's
        # stale-connection reconnect (10-15 s): the same connection must read them and go on.
        assert await _until(lambda: dep.up, 5), "the dependency did not come back up once NATS answered"
        assert nc is dep.nc and nc.is_connected
        assert (await nc.request("stall.echo", b"after", timeout=2)).data == b"echo:after"
    finally:
        await dep.close()
        server.proc.stop()
