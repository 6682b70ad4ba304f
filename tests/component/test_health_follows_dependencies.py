"""Health is SERVING only while the dependencies are really connected, and comes back with them."""

import signal
import urllib.request
from pathlib import Path

from mesh import infra
from tests.conftest import Server, start_nats, start_postgres, start_valkey
from tests.helpers import Proc, health, service_spec, wait_for


def _metric(port: str, needle: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(needle):
                return line.rsplit(" ", 1)[1]
    return ""


def _restart(server: Server, spec: infra.ProcessSpec, root: Path, name: str) -> Server:
    proc = Proc(spec, root / f"{name}.log").start()
    return Server(proc, server.url, server.port, server.data_dir)


def test_health_goes_not_serving_when_nats_is_killed_and_serving_when_it_returns(servers_root: Path) -> None:
    nats = start_nats(servers_root, "nats-health")
    spec = service_spec("feed", "feed.server", {"LIVEBET_NATS_URL": nats.url})
    svc = Proc(spec, servers_root / "feed-health.log").start()
    target, metrics_port = spec.health_target, spec.env["LIVEBET_METRICS_PORT"]
    try:
        assert health(target) == "SERVING"
        assert health(target, "livebet.feed.v1.FeedService") == "SERVING"
        assert _metric(metrics_port, 'livebet_dependency_up{dependency="nats",service="feed"}') == "1.0"

        nats.proc.kill()
        wait_for(lambda: health(target) == "NOT_SERVING", 20, what="NOT_SERVING after NATS died")
        assert health(target, "livebet.feed.v1.FeedService") == "NOT_SERVING"
        assert _metric(metrics_port, 'livebet_dependency_up{dependency="nats",service="feed"}') == "0.0"

        nats = _restart(nats, infra.nats(nats.data_dir, nats.port, infra.free_port()), servers_root, "nats-health-2")
        wait_for(lambda: health(target) == "SERVING", 30, what="SERVING after NATS returned")
    finally:
        svc.stop()
        nats.proc.kill()


def test_health_follows_redis(servers_root: Path, nats_server: Server) -> None:
    redis = start_valkey(servers_root, "redis-health")
    spec = service_spec(
        "pricing", "pricing.server", {"LIVEBET_NATS_URL": nats_server.url, "LIVEBET_REDIS_URL": redis.url}
    )
    svc = Proc(spec, servers_root / "pricing-health.log").start()
    try:
        redis.proc.kill()
        wait_for(lambda: health(spec.health_target) == "NOT_SERVING", 20, what="NOT_SERVING after Redis died")
        redis = _restart(redis, infra.valkey(redis.data_dir, redis.port, persist=False), servers_root, "redis-health-2")
        wait_for(lambda: health(spec.health_target) == "SERVING", 30, what="SERVING after Redis returned")
    finally:
        svc.stop()
        redis.proc.kill()


def test_health_follows_postgres_and_migrations_ran(
    servers_root: Path, nats_server: Server, redis_server: Server
) -> None:
    pg = start_postgres(servers_root, "pg-health")
    env = {"LIVEBET_NATS_URL": nats_server.url, "LIVEBET_POSTGRES_DSN": pg.url, "LIVEBET_REDIS_URL": redis_server.url}
    spec = service_spec("betting", "betting.server", env)
    svc = Proc(spec, servers_root / "betting-health.log").start()
    try:
        import psycopg

        with psycopg.connect(pg.url) as conn:
            row = conn.execute("SELECT count(*) FROM public.livebet_migrations WHERE component = 'betting'").fetchone()
            assert row is not None and row[0] >= 1
            assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'betting'").fetchone() is not None
        # the service runs on the platform's event loop (mesh.eventloop)
        assert '"event_loop":"uvloop"' in (servers_root / "betting-health.log").read_text()

        pg.proc.signal(signal.SIGQUIT)  # immediate shutdown, like a crash: no checkpoint
        assert pg.proc.popen is not None
        pg.proc.popen.wait(15)
        wait_for(lambda: health(spec.health_target) == "NOT_SERVING", 20, what="NOT_SERVING after PostgreSQL died")
        pg = _restart(pg, infra.postgres(pg.data_dir, pg.port, durable=False), servers_root, "pg-health-2")
        wait_for(lambda: health(spec.health_target) == "SERVING", 30, what="SERVING after PostgreSQL returned")
    finally:
        svc.stop()
        pg.proc.stop()
