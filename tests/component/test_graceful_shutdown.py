"""SIGTERM: health goes NOT_SERVING, open streams end cleanly (status OK), in-flight calls finish;
a stop that hangs is cut off at the process's stop budget."""

import json
import signal
import time
from pathlib import Path

import grpc
import pytest
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


@pytest.mark.parametrize(("stuck", "stage"), [("hook", "stop hook swallows_cancellation"), ("thread", "exit")])
def test_a_stop_that_hangs_ends_at_the_stop_budget(servers_root: Path, stuck: str, stage: str) -> None:
    """A stop hook that swallows its cancellation (asyncio.wait_for then waits for it for ever), or a
    non-daemon thread stuck in a blocking call, would keep the process alive after SIGTERM; the
    watchdog ends it once the budget (grace 1 s + 1 s per stop step + a 5 s margin) is spent."""
    env = {"LIVEBET_GRACE_SECONDS": "1", "TEST_STUCK_STOP": stuck}
    spec = service_spec(f"stuck{stuck}", "tests.component.stream_app", env)
    log_path = servers_root / f"stuck-{stuck}.log"
    svc = Proc(spec, log_path).start()
    try:
        svc.signal(signal.SIGTERM)
        assert svc.stop(60) == 1
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        messages = [r["msg"] for r in lines]
        overran = [r for r in lines if r["msg"] == "shutdown overran its budget; exiting now"]
        assert len(overran) == 1, log_path.read_text()[-2000:]
        assert overran[0]["stage"] == stage
        assert overran[0]["budget_seconds"] == (7.0 if stuck == "hook" else 6.0)
        # the event loop's part ended only where nothing held it: the thread blocks after it
        assert ("stopped" in messages) == (stuck == "thread")
    finally:
        svc.kill()
