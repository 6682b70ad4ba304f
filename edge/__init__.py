"""edge: the Envoy front door (gRPC and gRPC-web on one port) and, later, the browser app."""
