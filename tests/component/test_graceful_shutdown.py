"""SIGTERM: health goes NOT_SERVING, open streams end cleanly (status OK), in-flight calls finish."""

import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from livebet.feed.v1 import feed_service_pb2, feed_service_pb2_grpc

from tests.helpers import Proc, feed_channel, service_spec


def test_sigterm_drains_open_stream_and_in_flight_call(servers_root: Path) -> None:
    spec = service_spec("teststream", "tests.component.stream_app", {"LIVEBET_GRACE_SECONDS": "5"})
    svc = Proc(spec, servers_root / "teststream.log").start()
    try:
        with feed_channel(spec.health_target) as channel:
            feed = feed_service_pb2_grpc.FeedServiceStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

            stream = feed.WatchEvents(feed_service_pb2.WatchEventsRequest())
            seen = [next(stream).stream_sequence for _ in range(3)]
            assert seen == [1, 2, 3]
            slow = feed.GetMatchState.future(feed_service_pb2.GetMatchStateRequest(match_id="m1"))
            time.sleep(0.3)  # the slow call is now in flight

            svc.signal(signal.SIGTERM)

            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            rest = [r.stream_sequence for r in stream]  # ends without raising
            assert stream.code() == grpc.StatusCode.OK
            assert rest == list(range(4, 4 + len(rest)))  # no gap, nothing lost before the end
            assert slow.result(timeout=10).sequence == 7
        assert svc.popen is not None
        assert svc.popen.wait(15) == 0
    finally:
        svc.kill()
