"""The topology file: which services run, how many replicas, on which ports."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from mesh.infra import free_port

DEFAULT_PATH = Path(__file__).with_name("topology.toml")
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_INFRA = {"nats", "redis", "postgres"}


class TopologyError(ValueError):
    """The topology file is invalid; the message says where."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    grpc_services: tuple[str, ...]
    depends: tuple[str, ...]
    replicas: int
    grpc_ports: tuple[int, ...]
    metrics_ports: tuple[int, ...]
    #: one more slot than replicas: a rolling restart starts the new process here, then stops
    #: the old one, whose slot becomes the spare (Envoy lists every slot; health checks skip the
    #: empty one)
    spare_port: int = 0
    spare_metrics_port: int = 0

    @property
    def slots(self) -> tuple[tuple[int, int], ...]:
        """Every (gRPC port, metrics port) a replica of this service may use."""
        return (*zip(self.grpc_ports, self.metrics_ports, strict=True), (self.spare_port, self.spare_metrics_port))


@dataclass(frozen=True)
class ToolSpec:
    """A client process run beside the services (the match simulator): no gRPC server of its own;
    ``{<service>}`` in its arguments becomes that service's first address."""

    name: str
    module: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    host: str
    edge_port: int
    admin_port: int
    cors_origins: tuple[str, ...]
    nats_port: int
    nats_monitor_port: int
    redis_port: int
    postgres_port: int
    services: tuple[ServiceSpec, ...] = field(default_factory=tuple)
    tools: tuple[ToolSpec, ...] = field(default_factory=tuple)

    def service(self, name: str) -> ServiceSpec:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def resolve_ports(self) -> Topology:
        """A copy where every port 0 is replaced by a free port."""

        def p(port: int) -> int:
            return port or free_port(self.host)

        services = tuple(
            replace(
                s,
                grpc_ports=tuple(p(x) for x in s.grpc_ports),
                metrics_ports=tuple(p(x) for x in s.metrics_ports),
                spare_port=p(s.spare_port),
                spare_metrics_port=p(s.spare_metrics_port),
            )
            for s in self.services
        )
        return replace(
            self,
            edge_port=p(self.edge_port),
            admin_port=p(self.admin_port),
            nats_port=p(self.nats_port),
            nats_monitor_port=p(self.nats_monitor_port),
            redis_port=p(self.redis_port),
            postgres_port=p(self.postgres_port),
            services=services,
        )


def _port(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise TopologyError(f"{where} must be a port number 0-65535, got {value!r}")
    return value


def parse(text: str, source: str = "<topology>") -> Topology:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{source}: {exc}") from None
    edge, infra = doc.get("edge", {}), doc.get("infra", {})
    services = []
    for name, raw in doc.get("services", {}).items():
        where = f"{source}: services.{name}"
        if not _NAME.match(name):
            raise TopologyError(f"{where}: name must be lower-case letters, digits and '-'")
        replicas = raw.get("replicas", 1)
        if not isinstance(replicas, int) or not 1 <= replicas <= 32:
            raise TopologyError(f"{where}.replicas must be an integer 1-32, got {replicas!r}")
        depends = tuple(raw.get("depends", ()))
        unknown = set(depends) - _INFRA
        if unknown:
            raise TopologyError(f"{where}.depends: unknown {sorted(unknown)}; known: {sorted(_INFRA)}")
        if "module" not in raw:
            raise TopologyError(f"{where}.module is required")
        grpc_port = _port(raw.get("grpc_port", 0), f"{where}.grpc_port")
        metrics_port = _port(raw.get("metrics_port", 0), f"{where}.metrics_port")

        def ports(base: int) -> tuple[int, ...]:
            return tuple(base + i if base else 0 for i in range(replicas))  # noqa: B023

        services.append(
            ServiceSpec(
                name=name,
                module=str(raw["module"]),
                grpc_services=tuple(raw.get("grpc_services", ())),
                depends=depends,
                replicas=replicas,
                grpc_ports=ports(grpc_port),
                metrics_ports=ports(metrics_port),
                spare_port=grpc_port + replicas if grpc_port else 0,
                spare_metrics_port=metrics_port + replicas if metrics_port else 0,
            )
        )
    if not services:
        raise TopologyError(f"{source}: no [services.*] defined")
    tools = []
    for name, raw in doc.get("tools", {}).items():
        if not _NAME.match(name) or "module" not in raw:
            raise TopologyError(f"{source}: tools.{name} needs a lower-case name and a module")
        args = raw.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise TopologyError(f"{source}: tools.{name}.args must be a list of strings")
        tools.append(ToolSpec(name, str(raw["module"]), tuple(args)))
    return Topology(
        host=str(edge.get("host", "127.0.0.1")),
        edge_port=_port(edge.get("port", 8080), f"{source}: edge.port"),
        admin_port=_port(edge.get("admin_port", 9901), f"{source}: edge.admin_port"),
        cors_origins=tuple(edge.get("cors_origins", ("http://localhost", "http://127.0.0.1"))),
        nats_port=_port(infra.get("nats_port", 4222), f"{source}: infra.nats_port"),
        nats_monitor_port=_port(infra.get("nats_monitor_port", 8222), f"{source}: infra.nats_monitor_port"),
        redis_port=_port(infra.get("redis_port", 6379), f"{source}: infra.redis_port"),
        postgres_port=_port(infra.get("postgres_port", 5432), f"{source}: infra.postgres_port"),
        services=tuple(services),
        tools=tuple(tools),
    )


def load(path: Path = DEFAULT_PATH) -> Topology:
    return parse(path.read_text(), str(path))
