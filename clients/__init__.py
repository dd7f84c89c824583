"""Python client, the `chameleon` CLI, the load generator and benchmarks."""
from clients.client import ChameleonClient, ChameleonError, Chunk

__all__ = ["ChameleonClient", "ChameleonError", "Chunk"]
