"""The adapter store's Prometheus metrics (served with --metrics-port): calls by method
and final status, adapter bytes streamed to workers, failed fetches by status."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class StoreMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("chameleon_store_requests", "Calls that ended, by method and gRPC status",
                             ["method", "status"], registry=self.registry)
        self.fetch_bytes = Counter("chameleon_store_fetch_bytes", "Adapter bytes streamed by "
                                   "FetchAdapter", registry=self.registry)
        self.fetch_errors = Counter("chameleon_store_fetch_errors", "FetchAdapter calls that failed, "
                                    "by gRPC status", ["status"], registry=self.registry)

    def ended(self, method: str, status: str) -> None:
        self.calls.labels(method, status).inc()
        if method == "FetchAdapter" and status != "OK":
            self.fetch_errors.labels(status).inc()
