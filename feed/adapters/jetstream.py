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
        return subject_for(e.provider, e.match_id, self.subject_root)

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
                headers = tracing.inject({"Nats-Msg-Id": e.event_id})
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
