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
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from livebet.feed.v1 import event_pb2
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, StreamInfo

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


class JetStreamPublisher:
    """Publishes normalised events with ``Nats-Msg-Id`` and waits for every acknowledgement."""

    def __init__(self, js: JetStreamContext, timeout: float = 5.0, stream: str = STREAM) -> None:
        self.js = js
        self.timeout = timeout
        self.stream = stream
        self.subject_root = SUBJECT_ROOT if stream == STREAM else stream.lower()

    def _subject(self, e: event_pb2.FeedEvent) -> str:
        return f"{self.subject_root}.{token(e.provider)}.{token(e.match_id) if e.match_id else '_provider'}"

    async def publish(self, events: list[tuple[event_pb2.FeedEvent, int]]) -> PublishResult:
        """Publish ``(event, gap)`` pairs; returns once JetStream stored (or deduplicated) them all."""
        if not events:
            return PublishResult(0, 0, 0)
        try:
            futures = []
            for e, gap in events:
                headers = {"Nats-Msg-Id": e.event_id}
                if gap:
                    headers[GAP_HEADER] = str(gap)
                futures.append(
                    await self.js.publish_async(
                        self._subject(e), e.SerializeToString(), headers=headers, wait_stall=self.timeout
                    )
                )
            acks = await asyncio.wait_for(asyncio.gather(*futures), self.timeout)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            for f in locals().get("futures", []):
                f.cancel()
            raise PublishUnavailable(f"JetStream did not acknowledge the batch: {exc.__class__.__name__}") from exc
        duplicates = sum(1 for a in acks if a.duplicate)
        return PublishResult(len(acks) - duplicates, duplicates, max(a.seq for a in acks))
