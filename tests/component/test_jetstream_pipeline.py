"""The pipelined JetStream publisher (feed.adapters.jetstream.Pipeline) on a real nats-server:
each message of a batch gets its own answer, the way ``JetStreamContext.publish`` would give it,
and what was stored is stored once and in the order sent."""

from __future__ import annotations

import nats
import nats.errors
import nats.js.errors
from nats.js.api import StorageType, StreamConfig

from feed.adapters.jetstream import Pipeline
from tests.conftest import Server


async def test_each_message_of_a_batch_gets_its_own_answer(nats_server: Server) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="PIPE", subjects=["pipe.>"], storage=StorageType.MEMORY, max_msg_size=1000))
    silent = await nc.subscribe("quiet.x")  # interest but never an answer: its ack does not come
    try:
        pipeline = Pipeline(nc, timeout=0.5)
        sent = await pipeline.send(
            [
                ("pipe.a", b"first", {"Nats-Msg-Id": "m1"}),
                ("nostream.b", b"no stream takes it", {"Nats-Msg-Id": "m2"}),
                ("pipe.a", b"first again", {"Nats-Msg-Id": "m1"}),  # a duplicate: stored once
                ("pipe.c", b"x" * 2000, {"Nats-Msg-Id": "m3"}),  # over the stream's max_msg_size
                ("pipe.d", b"y" * (nc.max_payload + 1), {"Nats-Msg-Id": "m4"}),  # over the server's
                ("quiet.x", b"nobody acks", {}),
                ("pipe.e", b"last", {"Nats-Msg-Id": "m5"}),
            ]
        )
        assert sent.error(0) is None
        assert isinstance(sent.error(1), nats.js.errors.NoStreamResponseError)
        assert sent.error(2) is None and sent.duplicates == 1
        assert isinstance(sent.error(3), nats.js.errors.BadRequestError)
        assert isinstance(sent.error(4), nats.errors.MaxPayloadError)
        assert isinstance(sent.error(5), nats.errors.TimeoutError)
        assert sent.error(6) is None
        assert sent.remaining == 1  # the one whose ack never came
        assert "no JetStream stream answered" in sent.describe()

        info = await js.stream_info("PIPE")
        assert info.state.messages == 2 and sent.last_seq == info.state.last_seq
        first, last = await js.get_msg("PIPE", 1), await js.get_msg("PIPE", 2)
        assert (first.data, last.data) == (b"first", b"last")

        # a second batch on the same pipeline: counted apart from the first
        again = await pipeline.send([("pipe.f", b"f", {"Nats-Msg-Id": "m6"})])
        assert again.error(0) is None and again.duplicates == 0 and again.remaining == 0
        assert again.last_seq == 3
    finally:
        await silent.unsubscribe()
        await js.delete_stream("PIPE")
        await nc.close()
