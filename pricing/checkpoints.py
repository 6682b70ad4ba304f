"""Where the engine's checkpoints live: the JetStream object store ``pricing-checkpoints``, one
object per share (``share-<k>``), replaced by each new checkpoint (see
:mod:`pricing.live.checkpoint` for what is in one).

An object store rather than a key-value bucket: a share of a busy day's matches is megabytes of
JSON before compression, over NATS's default 1 MB message limit; the object store cuts it into
chunks and checks its digest when it is read back. Stored on file with the stream's replicas, like
the FEED stream it shortens the replay of.
"""

from __future__ import annotations

import asyncio
import logging
import os

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.object_store import ObjectStore

from mesh.settings import jetstream_replicas
from pricing.live import checkpoint
from pricing.live.engine import Engine

log = logging.getLogger("pricing.checkpoints")
BUCKET = "pricing-checkpoints"
EVERY_SECONDS = 60.0


def every_setting() -> float:
    """``LIVEBET_PRICING_CHECKPOINT_SECONDS``: how often each share's engine is checkpointed
    (60 by default; 0 turns checkpoints off: every rebuild replays the whole stream)."""
    return float(os.environ.get("LIVEBET_PRICING_CHECKPOINT_SECONDS", EVERY_SECONDS))


def name(k: int) -> str:
    return f"share-{k}"


async def store(js: JetStreamContext) -> ObjectStore:
    try:
        return await js.object_store(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        config = ObjectStoreConfig(
            description="the pricing engine's checkpoints, one per share",
            storage=StorageType.FILE,
            replicas=jetstream_replicas(),
        )
        return await js.create_object_store(BUCKET, config)


async def save(obs: ObjectStore, k: int, state: bytes) -> int:
    """Store a share's checkpoint (``checkpoint.state``, compressed here in a thread); its size."""
    data = await asyncio.to_thread(checkpoint.compress, state)
    await obs.put(name(k), data)
    return len(data)


async def load(obs: ObjectStore, k: int, provider_mode: frozenset[str], stream: str) -> tuple[Engine | None, int]:
    """A share's last checkpoint: (engine, stream sequence), or (None, 0) when there is none or it
    cannot be used (then the engine is rebuilt from the whole stream, as without checkpoints): one
    of other code, or of another life of the stream (``stream``: its creation time; the FEED
    stream deleted and created again numbers its messages from 1 again)."""
    try:
        result = await obs.get(name(k))
    except nats.js.errors.ObjectNotFoundError:
        return None, 0
    except (nats.js.errors.Error, nats.errors.Error, OSError) as err:
        log.warning("checkpoint unreadable; replaying the whole stream", extra={"partition": k, "error": repr(err)})
        return None, 0
    try:
        engine, sequence, taken_of = await asyncio.to_thread(checkpoint.decode, result.data or b"", provider_mode)
    except checkpoint.CheckpointError as err:
        log.warning("checkpoint not usable; replaying the whole stream", extra={"partition": k, "error": str(err)})
        return None, 0
    if taken_of != stream:
        log.warning(
            "checkpoint of an earlier FEED stream; replaying the whole stream",
            extra={"partition": k, "checkpoint_stream": taken_of, "stream": stream},
        )
        return None, 0
    return engine, sequence
