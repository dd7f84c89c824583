"""Pure scheduling logic: no grpc, no torch, no environment reads; time comes from an injected clock."""
