"""The FEED stream in NATS JetStream: configuration and the publisher.

Stream ``FEED``: events are published on ``feed.<provider>.<match>`` (``feed.<provider>`` for
provider-wide events such as alive or provider down). The stream's **subject transform** stores a
match's events as ``feed.<provider>.<partition>.<match>``, where ``partition`` is NATS's
deterministic ``partition(PARTITIONS)`` hash of the match token (FNV-1a, see
:func:`partition_of`), so pricing engine replicas can each consume a share of the matches
(:func:`partition_subjects`); provider-wide events are not transformed and reach every share.
File storage, one replica locally (three in
a cluster), a **duplicate window of 10 minutes** (any retry or replay of the same message within it
is stored once: every publish carries ``Nats-Msg-Id`` = the event id), messages kept 7 days.

A publish is acknowledged to the provider only after JetStream acknowledged every event of the
batch; if NATS is down or does not answer in time the call fails UNAVAILABLE and nothing is
acknowledged (a retry is safe: the events that did get stored are recognised as duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from livebet.feed.v1 import event_pb2
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
    StreamInfo,
    SubjectTransform,
)
from nats.js.kv import KeyValue

from mesh import tracing
from mesh.settings import jetstream_replicas

log = logging.getLogger("feed.jetstream")

STREAM = "FEED"
SUBJECT_ROOT = "feed"
DUPLICATE_WINDOW_S = 600.0
MAX_AGE_S = 7 * 24 * 3600.0
GAP_HEADER = "Livebet-Gap"
# How many shares the matches are hashed into (fixed for the life of the stream: changing it moves
# matches between shares, so a change needs the engines stopped and the stream re-created).
PARTITIONS = 16
YIELD_EVERY = 100  # replayed events between two turns of the event loop
_UNSAFE = re.compile(r"[.\s*>]")


class PublishUnavailable(RuntimeError):
    """JetStream could not acknowledge the batch; nothing of it is acknowledged to the caller."""


def token(text: str) -> str:
    """A subject token from an id: dots, spaces and wildcards become underscores."""
    return _UNSAFE.sub("_", text) or "_"


def subject_for(provider: str, match_id: str, root: str = SUBJECT_ROOT) -> str:
    """The subject an event is published on (before the stream's partition transform)."""
    return f"{root}.{token(provider)}.{token(match_id)}" if match_id else f"{root}.{token(provider)}"


def partition_of(match_id: str, partitions: int = PARTITIONS) -> int:
    """The share a match belongs to: NATS's ``{{partition(n,k)}}`` (32-bit FNV-1a of the subject
    token, modulo ``n``), computed here so a service can route by match without asking NATS."""
    h = 0x811C9DC5
    for byte in token(match_id).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


def partition_subjects(k: int, root: str = SUBJECT_ROOT) -> list[str]:
    """What the consumer of share ``k`` filters on: its matches' events and every provider-wide event."""
    return [f"{root}.*.{k}.*", f"{root}.*"]


def stream_config(name: str = STREAM, replicas: int | None = None) -> StreamConfig:
    root = SUBJECT_ROOT if name == STREAM else name.lower()
    replicas = replicas or jetstream_replicas()
    return StreamConfig(
        name=name,
        subjects=[f"{root}.>"],
        subject_transform=SubjectTransform(
            src=f"{root}.*.*", dest=f"{root}.{{{{wildcard(1)}}}}.{{{{partition({PARTITIONS},2)}}}}.{{{{wildcard(2)}}}}"
        ),
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


async def key_value(js: JetStreamContext, bucket: str, ttl: float | None = None, history: int = 1) -> KeyValue:
    """The key-value bucket ``bucket``, created (file storage, the deployment's replicas) when it
    does not exist yet; ``ttl``: how long an entry lives (None: for ever)."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket, history=history, ttl=ttl, storage=StorageType.FILE, replicas=jetstream_replicas()
            )
        )


@dataclass(frozen=True)
class PublishResult:
    accepted: int
    duplicates: int
    last_stream_sequence: int


@dataclass
class Sent:
    """What JetStream answered for a batch of messages (see :class:`Pipeline`)."""

    remaining: int
    done: asyncio.Future[None]
    acked: bytearray  # per message: 1 once its ack (or refusal) arrived
    duplicates: int = 0
    last_seq: int = 0
    #: message index -> why it was not stored: the ack's error JSON, b"" for "no responders" (no
    #: stream takes the subject), or the exception the client raised sending it
    errors: dict[int, bytes | Exception] | None = None

    def error(self, i: int) -> Exception | None:
        """Message ``i``'s failure as the exception ``JetStreamContext.publish`` would raise for it
        (``nats.errors.TimeoutError`` when its ack never came), or None when it was stored."""
        why = self.errors.get(i) if self.errors else None
        if why is None:
            return None if self.acked[i] else nats.errors.TimeoutError()
        if isinstance(why, Exception):
            return why
        if not why:
            return nats.js.errors.NoStreamResponseError()
        try:
            nats.js.errors.APIError.from_error(json.loads(why)["error"])  # raises the code's class
        except nats.js.errors.APIError as err:
            return err
        except (ValueError, KeyError, TypeError):
            pass
        return nats.js.errors.APIError(description=why.decode(errors="replace")[:200])

    def describe(self) -> str:
        """The first failure, for a log line or an error message ("" when there is none)."""
        if not self.errors:
            return ""
        why = self.errors[min(self.errors)]
        if isinstance(why, Exception):
            return repr(why)
        return why.decode(errors="replace")[:200] if why else "no JetStream stream answered for the subject"


class Pipeline:
    """Sends messages to JetStream back to back and awaits their acknowledgements together.

    Every message of a batch goes out with a reply subject ``<inbox>.<batch>.<index>``; one
    subscription on the inbox counts the acknowledgements (an ack is small JSON:
    ``{"stream":"FEED","seq":12,"duplicate":true}`` or an ``error``), and the batch completes when
    all have arrived. No future, timer or JSON parse per message, as ``JetStreamContext.publish``
    has (a request each): the feed's hot path and the bet outbox's relay. Messages sent on one
    connection are stored in the order sent."""

    _SEQ = re.compile(rb'"seq"\s*:\s*(\d+)')
    _DUPLICATE = re.compile(rb'"duplicate"\s*:\s*true')
    #: refused by the client before anything was sent, for this message alone
    _ONE_MESSAGE = (nats.errors.MaxPayloadError, nats.errors.BadSubjectError)

    def __init__(self, nc: NatsClient, timeout: float = 5.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._inbox = ""
        self._batches: dict[str, Sent] = {}
        self._counter = 0

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        await self.nc.subscribe(self._inbox + ".>", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        batch_id, _, index = msg.subject[len(self._inbox) + 1 :].partition(".")
        batch = self._batches.get(batch_id)
        if batch is None or not index.isdigit():  # a late ack of a batch that timed out
            return
        i = int(index)
        if i >= len(batch.acked) or batch.acked[i]:
            return
        batch.acked[i] = 1
        data = msg.data
        if not data or b'"error"' in data:  # no data: a "no responders" status
            if batch.errors is None:
                batch.errors = {}
            batch.errors[i] = bytes(data)
        elif self._DUPLICATE.search(data):
            batch.duplicates += 1
        m = self._SEQ.search(data)
        if m:
            batch.last_seq = max(batch.last_seq, int(m.group(1)))
        batch.remaining -= 1
        if batch.remaining == 0 and not batch.done.done():
            batch.done.set_result(None)

    async def send(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> Sent:
        """Send ``(subject, payload, headers)`` messages and wait for their acks, at most
        ``timeout`` seconds; a message whose ack did not come is reported by :meth:`Sent.error`.
        Raises what the connection raises (NATS is down) when nothing could be sent."""
        if not self._inbox:
            await self.start()
        self._counter += 1
        batch_id = str(self._counter)
        batch = Sent(len(messages), asyncio.get_running_loop().create_future(), bytearray(len(messages)))
        if not messages:
            return batch
        self._batches[batch_id] = batch
        prefix = f"{self._inbox}.{batch_id}."
        try:
            for i, (subject, payload, headers) in enumerate(messages):
                try:
                    await self.nc.publish(subject, payload, reply=prefix + str(i), headers=headers)
                except self._ONE_MESSAGE as err:
                    if batch.errors is None:
                        batch.errors = {}
                    batch.errors[i] = err
                    batch.acked[i] = 1
                    batch.remaining -= 1
            if batch.remaining:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(batch.done), self.timeout)
        finally:
            self._batches.pop(batch_id, None)
        return batch


class JetStreamPublisher:
    """Publishes normalised events with ``Nats-Msg-Id`` and waits for every acknowledgement
    (pipelined, see :class:`Pipeline`); any event not stored fails the whole batch."""

    def __init__(self, nc: NatsClient, timeout: float = 5.0, stream: str = STREAM) -> None:
        self.nc = nc
        self.stream = stream
        self.subject_root = SUBJECT_ROOT if stream == STREAM else stream.lower()
        self.pipeline = Pipeline(nc, timeout)

    def _subject(self, e: event_pb2.FeedEvent) -> str:
        return subject_for(e.provider, e.match_id, self.subject_root)

    async def start(self) -> None:
        await self.pipeline.start()

    async def publish(self, events: list[tuple[event_pb2.FeedEvent, int]]) -> PublishResult:
        """Publish ``(event, gap)`` pairs; returns once JetStream stored (or deduplicated) them all."""
        if not events:
            return PublishResult(0, 0, 0)
        if not self.nc.is_connected:
            raise PublishUnavailable("NATS is not connected")
        messages = []
        for e, gap in events:
            headers = tracing.inject({"Nats-Msg-Id": e.event_id})
            if gap:
                headers[GAP_HEADER] = str(gap)
            messages.append((self._subject(e), e.SerializeToString(), headers))
        try:
            sent = await self.pipeline.send(messages)
        except nats.errors.Error as exc:
            raise PublishUnavailable(f"JetStream did not acknowledge the batch: {exc.__class__.__name__}") from exc
        if sent.errors:
            raise PublishUnavailable(f"JetStream refused part of the batch: {sent.describe()}")
        if sent.remaining:
            raise PublishUnavailable(
                f"JetStream did not acknowledge the batch: TimeoutError ({sent.remaining} of {len(events)} unanswered)"
            )
        return PublishResult(len(events) - sent.duplicates, sent.duplicates, sent.last_seq)


def decode(data: bytes, seq: int) -> event_pb2.FeedEvent | None:
    """A FEED message as a FeedEvent, or None (logged) for bytes that are not one: the feed service
    writes only FeedEvents, but a reader must not stop at a message it cannot parse (it would stop
    there again after every restart)."""
    try:
        return event_pb2.FeedEvent.FromString(data)
    except DecodeError as err:
        log.error("FEED message is not a FeedEvent; skipped", extra={"stream_seq": seq, "error": str(err)})
        return None


async def replay(
    js: JetStreamContext,
    upto: int,
    handle: Callable[[event_pb2.FeedEvent], object],
    subjects: list[str] | None = None,
    timeout: float = 300.0,
    after: int = 0,
) -> int:
    """Hand every FEED event after stream sequence ``after`` and up to ``upto`` (inclusive) on
    ``subjects`` (default: all), in order, to ``handle``. An ephemeral consumer that acknowledges
    nothing and changes nothing. Returns how many were handled."""
    if upto <= after:
        return 0
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
        opt_start_seq=after + 1 if after else None,
        ack_policy=AckPolicy.NONE,
        filter_subjects=subjects or [f"{SUBJECT_ROOT}.>"],
        inactive_threshold=30.0,
        mem_storage=True,
    )
    info = await js.add_consumer(STREAM, config)
    sub = await js.pull_subscribe_bind(info.name, stream=STREAM)
    count, pending = 0, info.num_pending or 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while pending > 0:
            if loop.time() > deadline:
                raise TimeoutError(f"replay of {STREAM} did not reach sequence {upto} in {timeout} s")
            for msg in await sub.fetch(1000, timeout=5.0):
                meta = msg.metadata
                pending = meta.num_pending
                if meta.sequence.stream > upto:
                    return count
                e = decode(msg.data, meta.sequence.stream)
                if e is None:
                    continue
                handle(e)
                count += 1
                if count % YIELD_EVERY == 0:
                    # a long replay must not hold the event loop for a whole fetch: the engine's
                    # lease renewals (every 0.75 s, leases live 2.5 s) and health run meanwhile
                    await asyncio.sleep(0)
                if meta.sequence.stream == upto:
                    return count
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(STREAM, info.name)
    return count
