"""Shortest-job-first admission by predicted output length (the µServe-style baseline).

The queued request with the smallest predicted output (ties: oldest first) is
admitted whenever some worker has room for it; when it does not fit anywhere the
round stops (the loop shared with FIFO, fifo.py), so a large head is not overtaken
forever by ever-smaller requests in the same round -- but newer shorter requests
still overtake it across rounds (SJF's known starvation of long jobs, which is what
it is compared for).
"""
from __future__ import annotations

import heapq

from .fifo import OrderedAdmission
from .predictor import OutputPredictor, QuantileOutputPredictor
from .types import Clock, PendingRequest


class SjfPolicy(OrderedAdmission):
    name = "sjf"

    def __init__(self, clock: Clock, predictor: OutputPredictor | None = None):
        self._clock = clock
        self.predictor = predictor or QuantileOutputPredictor()
        self._heap: list[tuple[int, float, int, PendingRequest]] = []
        self._live: dict[str, PendingRequest] = {}
        self._seq = 0

    def enqueue(self, req: PendingRequest) -> None:
        if req.predicted_output is None:
            req.predicted_output = self.predictor.predict(req)
        self._seq += 1
        heapq.heappush(self._heap, (req.predicted_output, req.arrival, self._seq, req))
        self._live[req.request_id] = req

    def requeue(self, req: PendingRequest) -> None:
        self.cancel(req.request_id)
        self.enqueue(req)

    def cancel(self, request_id: str) -> bool:
        return self._live.pop(request_id, None) is not None  # heap entry skipped lazily

    def queued(self) -> int:
        return len(self._live)

    def _head(self) -> PendingRequest | None:
        while self._heap and self._live.get(self._heap[0][3].request_id) is not self._heap[0][3]:
            heapq.heappop(self._heap)
        return self._heap[0][3] if self._heap else None

    def _pop_head(self) -> None:
        _, _, _, req = heapq.heappop(self._heap)
        del self._live[req.request_id]

    def _in_order(self, limit: int) -> list[PendingRequest]:
        return [e[3] for e in heapq.nsmallest(limit, self._heap)
                if self._live.get(e[3].request_id) is e[3]]

    def on_finish(self, req: PendingRequest, output_tokens: int) -> None:
        self.predictor.observe(req, output_tokens)

    def metrics(self) -> dict[str, float]:
        return dict(self.predictor.accuracy())
