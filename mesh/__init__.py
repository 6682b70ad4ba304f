"""mesh: what every livebet service shares (settings, server bootstrap, health, metrics, logs,
connections, migrations) and how the services run together (topology, supervisor, Envoy config)."""

import os as _os

# The supervisor (and the test suite) fork child processes while gRPC calls are in flight. gRPC's
# fork handlers then run in the child between fork and exec and crash it at random (measured here:
# 47 of 300 spawns died). No livebet process uses gRPC across a fork, so fork support is switched
# off; this package is imported before grpc everywhere it matters.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
