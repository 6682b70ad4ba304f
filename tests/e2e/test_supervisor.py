"""The supervisor restarts what dies; Envoy sends traffic to it again once it is SERVING."""

import os
import signal
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import Mesh
from tests.helpers import health, wait_for


def _through_envoy(mesh: Mesh, service: str) -> str:
    try:
        with grpc.insecure_channel(mesh.edge) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), metadata=(("x-livebet-service", service),), timeout=1
            )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
    except grpc.RpcError:
        return "UNREACHABLE"


def test_a_killed_service_is_restarted_and_serving_again(mesh: Mesh) -> None:
    before = mesh.process("betting-0")
    killed_at = time.monotonic()
    os.kill(before["pid"], signal.SIGKILL)

    def back() -> bool:
        p = mesh.process("betting-0")
        return p["restarts"] == before["restarts"] + 1 and p["status"] == "serving"

    wait_for(back, 30, what="betting-0 restarted")
    after = mesh.process("betting-0")
    assert after["pid"] != before["pid"]
    assert health(after["health_target"]) == "SERVING"
    wait_for(lambda: _through_envoy(mesh, "betting") == "SERVING", 15, what="Envoy routes to the new process")
    print(f"\nbetting-0 SERVING again {time.monotonic() - killed_at:.2f}s after SIGKILL")


def test_a_killed_nats_is_restarted_and_services_recover(mesh: Mesh) -> None:
    before = mesh.process("nats")
    os.kill(before["pid"], signal.SIGKILL)
    wait_for(lambda: mesh.process("nats")["restarts"] == before["restarts"] + 1, 30, what="nats restarted")
    wait_for(lambda: _through_envoy(mesh, "feed") == "SERVING", 30, what="feed SERVING after NATS restart")
    code, status = mesh.status()
    assert code == 0, status
