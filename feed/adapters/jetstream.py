"""The FEED stream in NATS JetStream: configuration and the publisher.

Stream ``FEED``: subjects ``feed.<provider>.<match>`` (``feed.<provider>._provider`` for
provider-wide events such as alive or provider down), file storage, one replica locally (three in
a cluster), a **duplicate window of 10 minutes** (any retry or replay of the same message within it
is stored once: every publish carries ``Nats-Msg-Id`` = the event id), messages kept 7 days.

A publish is acknowledged to the provider only after JetStream acknowledged every event of the
batch; if NATS is down or does not answer in time the call fails UNAVAILABLE and nothing is
acknowledged (a retry is safe: the events that did get stored are recognised as duplicates).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from livebet.feed.v1 import event_pb2
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig, StreamInfo

STREAM = "FEED"
SUBJECT_ROOT = "feed"
DUPLICATE_WINDOW_S = 600.0
MAX_AGE_S = 7 * 24 * 3600.0
GAP_HEADER = "Livebet-Gap"
_UNSAFE = re.compile(r"[.\s*>]")


class PublishUnavailable(RuntimeError):
    """JetStream could not acknowledge the batch; nothing of it is acknowledged to the caller."""


def token(text: str) -> str:
    """A subject token from an id: dots, spaces and wildcards become underscores."""
    return _UNSAFE.sub("_", text) or "_"


def subject_for(provider: str, match_id: str) -> str:
    return f"{SUBJECT_ROOT}.{token(provider)}.{token(match_id) if match_id else '_provider'}"


def stream_config(name: str = STREAM, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=[f"{SUBJECT_ROOT}.>"] if name == STREAM else [f"{name.lower()}.>"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=MAX_AGE_S,
        discard=DiscardPolicy.OLD,
        allow_direct=True,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig | None = None) -> StreamInfo:
    """Create the stream, or bring an existing one to this configuration."""
    cfg = config or stream_config()
    try:
        return await js.add_stream(cfg)
    except nats.js.errors.BadRequestError:
        return await js.update_stream(cfg)


@dataclass(frozen=True)
class PublishResult:
    accepted: int
    duplicates: int
    last_stream_sequence: int


@dataclass
class _Batch:
    remaining: int
    done: asyncio.Future[None]
    duplicates: int = 0
    last_seq: int = 0
    error: str = ""


class JetStreamPublisher:
    """Publishes normalised events with ``Nats-Msg-Id`` and waits for every acknowledgement.

    Pipelined: every message of a batch is sent at once with a reply subject
    ``<inbox>.<batch>.<index>``; one subscription on the inbox counts the acknowledgements (an ack
    is small JSON: ``{"stream":"FEED","seq":12,"duplicate":true}`` or an ``error``), and the batch
    completes when all have arrived. No future or JSON parse per message: this is the feed's hot
    path.
    """

    _SEQ = re.compile(rb'"seq"\s*:\s*(\d+)')
    _DUPLICATE = re.compile(rb'"duplicate"\s*:\s*true')

    def __init__(self, nc: NatsClient, timeout: float = 5.0, stream: str = STREAM) -> None:
        self.nc = nc
        self.timeout = timeout
        self.stream = stream
        self.subject_root = SUBJECT_ROOT if stream == STREAM else stream.lower()
        self._inbox = ""
        self._batches: dict[str, _Batch] = {}
        self._counter = 0

    def _subject(self, e: event_pb2.FeedEvent) -> str:
        return f"{self.subject_root}.{token(e.provider)}.{token(e.match_id) if e.match_id else '_provider'}"

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        await self.nc.subscribe(self._inbox + ".>", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        batch_id = msg.subject[len(self._inbox) + 1 :].partition(".")[0]
        batch = self._batches.get(batch_id)
        if batch is None:  # a late ack of a batch that timed out
            return
        data = msg.data
        if not data:  # a "no responders" status: no stream takes this subject
            batch.error = "no JetStream stream answered for the subject"
        elif b'"error"' in data:
            batch.error = data.decode(errors="replace")[:200]
        elif self._DUPLICATE.search(data):
            batch.duplicates += 1
        m = self._SEQ.search(data)
        if m:
            batch.last_seq = max(batch.last_seq, int(m.group(1)))
        batch.remaining -= 1
        if batch.remaining == 0 and not batch.done.done():
            batch.done.set_result(None)

    async def publish(self, events: list[tuple[event_pb2.FeedEvent, int]]) -> PublishResult:
        """Publish ``(event, gap)`` pairs; returns once JetStream stored (or deduplicated) them all."""
        if not events:
            return PublishResult(0, 0, 0)
        if not self._inbox:
            await self.start()
        if not self.nc.is_connected:
            raise PublishUnavailable("NATS is not connected")
        self._counter += 1
        batch_id = str(self._counter)
        batch = _Batch(len(events), asyncio.get_running_loop().create_future())
        self._batches[batch_id] = batch
        prefix = f"{self._inbox}.{batch_id}."
        try:
            for i, (e, gap) in enumerate(events):
                headers = {"Nats-Msg-Id": e.event_id}
                if gap:
                    headers[GAP_HEADER] = str(gap)
                await self.nc.publish(self._subject(e), e.SerializeToString(), reply=prefix + str(i), headers=headers)
            await asyncio.wait_for(asyncio.shield(batch.done), self.timeout)
        except (TimeoutError, nats.errors.Error) as exc:
            raise PublishUnavailable(f"JetStream did not acknowledge the batch: {exc.__class__.__name__}") from exc
        finally:
            self._batches.pop(batch_id, None)
        if batch.error:
            raise PublishUnavailable(f"JetStream refused part of the batch: {batch.error}")
        return PublishResult(len(events) - batch.duplicates, batch.duplicates, batch.last_seq)


async def replay(
    js: JetStreamContext, upto: int, handle: Callable[[event_pb2.FeedEvent], object], timeout: float = 300.0
) -> int:
    """Hand every FEED event up to stream sequence ``upto`` (inclusive), in order, to ``handle``
    (an ordered consumer: nothing is acknowledged or changed). Returns how many were handled."""
    if upto <= 0:
        return 0
    done = asyncio.Event()
    count = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal count
        seq = msg.metadata.sequence.stream
        if seq <= upto:
            handle(event_pb2.FeedEvent.FromString(msg.data))
            count += 1
        if seq >= upto:
            done.set()

    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    sub = await js.subscribe(f"{SUBJECT_ROOT}.>", stream=STREAM, ordered_consumer=True, cb=on_msg, config=config)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await sub.unsubscribe()
    return count
