"""Pure adapter-catalog logic (no grpc, no torch)."""
