"""The worker's Prometheus metrics (served with --metrics-port).

State is read at scrape time from the engine thread's latest snapshot (the numbers
the WorkerState stream reports, so the scheduler's GetStatus shows the same):
pool pages by use (KV, adapters in use or loading, cached idle adapters, free:
they sum to the pool), the adapter cache's hits, misses, evictions and bytes
loaded, running and waiting requests, adapter fetches. Events: requests by how
they ended, adapter fetch time.
"""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from chameleon_common.metrics import LATENCY_BUCKETS, StateCollector


def page_uses(stats) -> dict[str, int]:
    """Pool pages by use; the values sum to stats.total_pages."""
    idle = stats.idle_adapter_pages
    return {"kv": stats.kv_pages, "adapter_active": stats.adapter_pages - idle,
            "adapter_idle": idle, "free": stats.free_pages}


class WorkerMetrics:
    def __init__(self, worker_id: str, snapshot: Callable[[], object],
                 fetches: Callable[[], int] = lambda: 0):
        self.worker_id = worker_id
        self._snapshot = snapshot
        self._fetches = fetches
        self.registry = CollectorRegistry()
        self.requests = Counter("chameleon_worker_requests", "Requests that ended on this worker, "
                                "by how (EOS, LENGTH, STOP_STRING, CANCELLED, or a gRPC status)",
                                ["worker", "status"], registry=self.registry)
        self.fetch_seconds = Histogram("chameleon_adapter_fetch_seconds", "Adapter fetches from the "
                                       "store (request -> last byte verified)", ["worker"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(StateCollector(self._state))

    def ended(self, status: str) -> None:
        self.requests.labels(self.worker_id, status).inc()

    def _state(self) -> Iterable[Metric]:
        snap = self._snapshot()
        st = snap.stats
        w = [self.worker_id]
        pages = GaugeMetricFamily("chameleon_pool_pages", "Unified pool pages by use",
                                  labels=["worker", "use"])
        for use, n in page_uses(st).items():
            pages.add_metric(w + [use], n)
        yield pages
        total = GaugeMetricFamily("chameleon_pool_pages_total", "Pages in the unified pool",
                                  labels=["worker"])
        total.add_metric(w, st.total_pages)
        yield total
        for name, doc, value in (
                ("chameleon_adapter_cache_hits", "Requests whose adapter was resident on arrival", st.hits),
                ("chameleon_adapter_cache_misses", "Requests whose adapter had to be loaded", st.misses),
                ("chameleon_adapter_cache_evictions", "Adapters evicted from the pool", st.evictions),
                ("chameleon_adapter_cache_loaded_bytes", "Adapter bytes loaded into the pool",
                 st.bytes_loaded),
                ("chameleon_adapter_fetches", "Adapters fetched from the store", self._fetches())):
            c = CounterMetricFamily(name, doc, labels=["worker"])
            c.add_metric(w, value)
            yield c
        for name, doc, value in (("chameleon_worker_running", "Requests in the running batch", snap.running),
                                 ("chameleon_worker_waiting", "Requests waiting for an adapter or room",
                                  snap.waiting),
                                 ("chameleon_adapters_cached", "Adapters resident in the pool",
                                  len(st.cached_adapters))):
            g = GaugeMetricFamily(name, doc, labels=["worker"])
            g.add_metric(w, value)
            yield g
