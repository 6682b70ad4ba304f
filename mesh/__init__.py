"""mesh: what every livebet service shares (settings, server bootstrap, health, metrics, logs,
connections, migrations) and how the services run together (topology, supervisor, Envoy config)."""
