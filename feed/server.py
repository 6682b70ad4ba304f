"""The feed service process: ``python -m feed.server``.

Wiring: NATS (JetStream) dependency → FEED stream ensured → projection rebuilt from the stream →
FeedService over gRPC; a liveness loop declares silent producers down and stops betting on
silent matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from pathlib import Path

import orjson
from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2_grpc
from nats.aio.msg import Msg

from feed.adapters.jetstream import STREAM, JetStreamPublisher, PublishUnavailable, ensure_stream, replay
from feed.grpc_api import FeedApi, WatchSource
from feed.metrics import FeedMetrics
from feed.replay import FileRecorder
from feed.service import FeedCore, PublishResult
from feed.settings import FeedSettings
from mesh.deps import NatsDependency, Readiness
from mesh.service import ServiceApp, run

log = logging.getLogger("feed")
HEARD_SUBJECT = "livebet.feed.heard"  # core NATS, in no stream: what each feed replica heard (share_heard)
INSTANCE_HEADER = "Livebet-Feed-Instance"  # which feed process sent a heard message
SWEEP_SECONDS = 3600.0  # how often finished matches older than the stream's retention are dropped


class _LazyPublisher:
    """The JetStream publisher once NATS is connected (UNAVAILABLE until then)."""

    def __init__(self) -> None:
        self.inner: JetStreamPublisher | None = None

    async def publish(self, events: list[tuple[ev.FeedEvent, int]]) -> PublishResult:
        if self.inner is None:
            raise PublishUnavailable("NATS is not connected yet")
        return await self.inner.publish(events)


async def rebuild(core: FeedCore, nats: NatsDependency) -> int:
    """Replay the FEED stream into the projection, the ordering cursors and liveness."""
    info = await nats.js.stream_info(STREAM)
    return await replay(nats.js, info.state.last_seq, core.apply, timeout=120)


async def share_heard(core: FeedCore, nats: NatsDependency, instance: str, stopping: asyncio.Event) -> None:
    """Tell the other feed replicas, each second, which producers and matches this one heard
    from (core NATS, ``HEARD_SUBJECT``), and take in what they heard: liveness is judged on what
    every replica was sent, not one replica's share of it. One small message a second each."""

    async def on_heard(msg: Msg) -> None:
        if (msg.headers or {}).get(INSTANCE_HEADER) == instance:
            return
        try:
            core.merge_heard(orjson.loads(msg.data))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
            log.warning("a feed replica's heard message was not understood", extra={"error": str(err)})

    sub = await nats.nc.subscribe(HEARD_SUBJECT, cb=on_heard)
    try:
        while not stopping.is_set():
            await asyncio.sleep(1.0)
            heard = core.take_heard()
            if heard["providers"] or heard["matches"]:
                with contextlib.suppress(Exception):  # NATS down: the others judge on what they heard
                    await nats.nc.publish(HEARD_SUBJECT, orjson.dumps(heard), headers={INSTANCE_HEADER: instance})
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def build(app: ServiceApp) -> None:
    s = app.settings
    nats = app.add_dependency(NatsDependency(s.nats_url, s.instance, s.health_interval_seconds))
    ready = app.add_dependency(Readiness("feed-stream"))
    publisher = _LazyPublisher()
    feed_settings = FeedSettings.from_env()
    core = FeedCore(
        publisher,
        feed_settings.provider_silence_seconds,
        match_silence=feed_settings.match_silence_seconds,
        break_silence=feed_settings.break_silence_seconds,
    )
    feed_metrics = FeedMetrics(app.metrics.registry)
    core.observers.append(feed_metrics.observe)
    if feed_settings.record_path:
        recorder = FileRecorder(Path(feed_settings.record_path))
        core.recorder = recorder

        async def close_recording() -> None:
            recorder.close()

        app.on_stop(close_recording)
    api = FeedApi(core, app, WatchSource(nats))
    app.add_service("livebet.feed.v1.FeedService", api, feed_service_pb2_grpc.add_FeedServiceServicer_to_server)

    async def liveness_loop() -> None:
        swept = time.monotonic()
        while not app.stopping.is_set():
            await asyncio.sleep(1.0)
            with contextlib.suppress(PublishUnavailable):
                feed_metrics.published(await core.check_liveness())
            if time.monotonic() - swept >= SWEEP_SECONDS:
                swept = time.monotonic()
                if gone := core.forget_finished(time.time()):
                    log.info("finished matches forgotten", extra={"matches": gone, "kept": len(core.matches)})

    async def start() -> None:
        await nats.wait_ready()
        js = nats.nc.jetstream()
        await ensure_stream(js)
        replayed = await rebuild(core, nats)
        inner = JetStreamPublisher(nats.nc)
        await inner.start()
        publisher.inner = inner
        ready.set()
        log.info("feed ready", extra={"replayed_events": replayed, "matches": len(core.matches)})
        app.spawn(liveness_loop())
        app.spawn(share_heard(core, nats, uuid.uuid4().hex[:12], app.stopping))

    async def on_start() -> None:
        app.spawn(start())

    app.on_start(on_start)


if __name__ == "__main__":
    run("feed", build)
