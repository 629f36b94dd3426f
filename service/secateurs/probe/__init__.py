"""`secateurs probe`: a light gRPC service measuring latency on the device itself (no torch)."""
