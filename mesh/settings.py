"""Typed settings, read once from the environment at start-up.

Every variable is prefixed ``LIVEBET_``; the supervisor sets them for the processes it starts.
Nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int = 65535) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration setting: ``default`` when unset, else a positive number of seconds
    (:class:`SettingsError` saying what is wrong otherwise)."""
    value = _float(env, name, default)
    if not value > 0:
        raise SettingsError(f"{name} must be positive, got {value}")
    return value


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_HOST = "127.0.0.1"
_NATS = "nats://127.0.0.1:4222"
_REDIS = "redis://127.0.0.1:6379/0"
_POSTGRES = "postgresql://livebet@127.0.0.1:5432/livebet"


@dataclass(frozen=True)
class Settings:
    """Configuration of one service process."""

    service: str
    replica: int = 0
    grpc_host: str = _HOST
    grpc_port: int = 0
    metrics_host: str = _HOST
    metrics_port: int = 0
    nats_url: str = _NATS
    redis_url: str = _REDIS
    postgres_dsn: str = _POSTGRES
    log_level: str = "INFO"
    grace_seconds: float = 5.0
    health_interval_seconds: float = 0.5
    #: after going NOT_SERVING on stop, keep serving this long so that the load balancer (Envoy's
    #: health checks, Kubernetes' endpoints) stops sending new calls before the server refuses them
    drain_seconds: float = 0.0
    #: the process's name in logs, metrics and leases (``LIVEBET_INSTANCE``, e.g. the pod's name);
    #: ``<service>-<replica>`` when unset
    instance_name: str = ""

    @property
    def instance(self) -> str:
        """Name of this process, e.g. ``odds-1``."""
        return self.instance_name or f"{self.service}-{self.replica}"

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        level = e.get("LIVEBET_LOG_LEVEL", "INFO").upper()
        if level not in _LEVELS:
            raise SettingsError(f"LIVEBET_LOG_LEVEL must be one of {', '.join(_LEVELS)}, got {level!r}")
        return cls(
            service=service,
            replica=_int(e, "LIVEBET_REPLICA", 0, 0, 1000),
            grpc_host=e.get("LIVEBET_GRPC_HOST", _HOST),
            grpc_port=_int(e, "LIVEBET_GRPC_PORT", 0),
            metrics_host=e.get("LIVEBET_METRICS_HOST", _HOST),
            metrics_port=_int(e, "LIVEBET_METRICS_PORT", 0),
            nats_url=e.get("LIVEBET_NATS_URL", _NATS),
            redis_url=e.get("LIVEBET_REDIS_URL", _REDIS),
            postgres_dsn=e.get("LIVEBET_POSTGRES_DSN", _POSTGRES),
            log_level=level,
            grace_seconds=_float(e, "LIVEBET_GRACE_SECONDS", 5.0),
            health_interval_seconds=_float(e, "LIVEBET_HEALTH_INTERVAL_SECONDS", 0.5, 0.05),
            drain_seconds=_float(e, "LIVEBET_DRAIN_SECONDS", 0.0),
            instance_name=e.get("LIVEBET_INSTANCE", ""),
        )

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings in a child process."""
        return {
            "LIVEBET_REPLICA": str(self.replica),
            "LIVEBET_GRPC_HOST": self.grpc_host,
            "LIVEBET_GRPC_PORT": str(self.grpc_port),
            "LIVEBET_METRICS_HOST": self.metrics_host,
            "LIVEBET_METRICS_PORT": str(self.metrics_port),
            "LIVEBET_NATS_URL": self.nats_url,
            "LIVEBET_REDIS_URL": self.redis_url,
            "LIVEBET_POSTGRES_DSN": self.postgres_dsn,
            "LIVEBET_LOG_LEVEL": self.log_level,
            "LIVEBET_GRACE_SECONDS": str(self.grace_seconds),
            "LIVEBET_HEALTH_INTERVAL_SECONDS": str(self.health_interval_seconds),
            "LIVEBET_DRAIN_SECONDS": str(self.drain_seconds),
        }


def jetstream_replicas(env: Mapping[str, str] | None = None) -> int:
    """How many copies JetStream keeps of livebet's streams and key-value buckets:
    ``LIVEBET_JETSTREAM_REPLICAS`` (1 for one NATS server; 3 on a 3-node cluster)."""
    return _int(os.environ if env is None else env, "LIVEBET_JETSTREAM_REPLICAS", 1, 1, 5)
