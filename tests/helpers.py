"""Test helpers: the project's own process runner and health call (mesh.process)."""

from mesh.process import Process as Proc
from mesh.process import health, service_spec, wait_for

__all__ = ["Proc", "health", "service_spec", "wait_for"]
