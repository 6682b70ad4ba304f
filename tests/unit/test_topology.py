import pytest

from mesh import topology
from mesh.topology import TopologyError


def test_default_topology_names_every_service_with_its_grpc_services() -> None:
    t = topology.load()
    names = {s.name for s in t.services}
    assert names == {"feed", "pricing", "odds", "betting", "settlement"}
    assert t.service("betting").grpc_services == (
        "livebet.betting.v1.BettingService",
        "livebet.betting.v1.WalletService",
        "livebet.betting.v1.PlayerAdminService",
    )
    assert t.edge_port == 8080


def test_replicas_get_consecutive_ports() -> None:
    odds = topology.load().service("odds")
    assert odds.replicas == 2
    assert odds.grpc_ports == (18300, 18301)
    assert odds.metrics_ports == (19300, 19301)


def test_zero_ports_are_resolved_to_distinct_free_ports() -> None:
    text = """
[edge]
port = 0
admin_port = 0
[infra]
nats_port = 0
nats_monitor_port = 0
redis_port = 0
postgres_port = 0
[services.a]
module = "feed.server"
replicas = 3
"""
    t = topology.parse(text).resolve_ports()
    ports = [t.edge_port, t.admin_port, t.nats_port, t.redis_port, t.postgres_port, *t.service("a").grpc_ports]
    assert 0 not in ports
    assert len(set(ports)) == len(ports)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[services.a]\nmodule="x"\nreplicas=0', "replicas must be an integer 1-32"),
        ('[services.a]\nmodule="x"\ndepends=["kafka"]', "unknown \\['kafka'\\]"),
        ("[services.a]\nreplicas=1", "module is required"),
        ('[services.A]\nmodule="x"', "name must be lower-case"),
        ('[edge]\nport=99999\n[services.a]\nmodule="x"', "edge.port must be a port number"),
        ("[edge]\nport=1", "no \\[services"),
        ("not toml [", "topology"),
    ],
)
def test_invalid_topology_is_refused_with_the_reason(body: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        topology.parse(body)
