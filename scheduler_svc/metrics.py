"""The scheduler's Prometheus metrics (served with --metrics-port).

Events: requests by final gRPC status; TTFT and time-between-tokens histograms by
adapter rank class. State, read at scrape time from the policy and the request
book (the numbers GetStatus reports): queued and running requests, each admission
queue's length, quota and held tokens, the queue boundaries (WRS), the output
predictor's accuracy, and the policy's other counters.
"""
from __future__ import annotations

import collections
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from chameleon_common.metrics import LATENCY_BUCKETS, StateCollector, rank_class
from scheduler_svc.core.types import AdmissionPolicy

PREDICTOR_KEYS = {"predictor_samples": "samples", "predictor_bucket_accuracy": "bucket_accuracy",
                  "predictor_within_tolerance": "within_tolerance"}


class SchedulerMetrics:
    def __init__(self, policy: AdmissionPolicy, running=lambda: 0):
        self.policy = policy
        self._running = running
        self.registry = CollectorRegistry()
        self.requests = Counter("chameleon_scheduler_requests", "Requests that ended, by gRPC status",
                                ["status"], registry=self.registry)
        self.ttft = Histogram("chameleon_ttft_seconds", "Time to first token (scheduler arrival -> "
                              "first token sent)", ["rank_class"], buckets=LATENCY_BUCKETS,
                              registry=self.registry)
        self.tbt = Histogram("chameleon_tbt_seconds", "Time between tokens sent to the client",
                             ["rank_class"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.by_status: collections.Counter[str] = collections.Counter()
        self.registry.register(StateCollector(self._state))

    def ended(self, status: str) -> None:
        self.requests.labels(status).inc()
        self.by_status[status] += 1

    def latency(self, rank: int, ttft_ms: float, token_gaps_ms: Iterable[float]) -> None:
        rc = rank_class(rank)
        self.ttft.labels(rc).observe(ttft_ms / 1000.0)
        tbt = self.tbt.labels(rc)
        for g in token_gaps_ms:
            tbt.observe(g / 1000.0)

    def _state(self) -> Iterable[Metric]:
        p = self.policy
        g = GaugeMetricFamily("chameleon_scheduler_queued", "Requests queued in the scheduler",
                              labels=["policy"])
        g.add_metric([p.name], p.queued())
        yield g
        g = GaugeMetricFamily("chameleon_scheduler_running", "Requests admitted to a worker")
        g.add_metric([], self._running())
        yield g
        length = GaugeMetricFamily("chameleon_queue_length", "Requests waiting in each admission "
                                   "queue", labels=["queue"])
        quota = GaugeMetricFamily("chameleon_queue_quota_tokens", "Token quota of each admission "
                                  "queue", labels=["queue"])
        held = GaugeMetricFamily("chameleon_queue_held_tokens", "Quota held by each queue's running "
                                 "requests", labels=["queue"])
        bound = GaugeMetricFamily("chameleon_queue_boundary_wrs", "Upper WRS boundary of each "
                                  "queue but the last", labels=["queue"])
        for q in p.queue_status():
            lab = [str(q.index)]
            length.add_metric(lab, q.length)
            quota.add_metric(lab, q.quota_tokens)
            held.add_metric(lab, q.held_tokens)
            if q.upper_wrs is not None:
                bound.add_metric(lab, q.upper_wrs)
        yield from (length, quota, held, bound)
        m = p.metrics()
        pred = GaugeMetricFamily("chameleon_predictor", "Output-length predictor accuracy over its "
                                 "window (samples, bucket_accuracy, within_tolerance)", labels=["stat"])
        other = GaugeMetricFamily("chameleon_policy", "The admission policy's other figures",
                                  labels=["name"])
        for k, v in sorted(m.items()):
            if not isinstance(v, (int, float)):
                continue
            if k in PREDICTOR_KEYS:
                pred.add_metric([PREDICTOR_KEYS[k]], float(v))
            elif not k.startswith(("queue_len_", "quota_tokens_", "held_tokens_", "boundary_")):
                other.add_metric([k], float(v))
        yield pred
        yield other
