"""Pure-Python and torch domain logic of the GPU worker (no gRPC)."""
