"""FIFO admission: the S-LoRA baseline.

Strict arrival order: the head request waits until some worker has room for
its whole KV reservation; nothing behind it may overtake (that is exactly the
head-of-line blocking the Chameleon policy removes).
"""
from __future__ import annotations

from collections import OrderedDict

from .types import Admission, Clock, PendingRequest, WorkerView


def pick_worker(req: PendingRequest, workers: list[WorkerView]) -> WorkerView | None:
    """Prefer a worker that has the adapter cached or loading, then the least loaded."""
    fits = [w for w in workers if w.connected and w.free_tokens >= req.reserved_tokens
            and w.running < w.max_running]
    if not fits:
        return None

    def key(w: WorkerView) -> tuple[int, float]:
        warm = req.adapter_id is not None and (
            req.adapter_id in w.cached_adapters or req.adapter_id in w.loading_adapters)
        return (0 if warm else 1, -w.free_tokens / max(w.total_tokens, 1))

    return min(fits, key=key)


class FifoPolicy:
    name = "fifo"

    def __init__(self, clock: Clock):
        self._clock = clock
        self._queue: OrderedDict[str, PendingRequest] = OrderedDict()

    def enqueue(self, req: PendingRequest) -> None:
        self._queue[req.request_id] = req

    def requeue(self, req: PendingRequest) -> None:
        """Put back a request whose worker was lost, ahead of every younger request
        (O(queued); only on worker loss)."""
        self._queue.pop(req.request_id, None)
        self._queue[req.request_id] = req
        for rid in [rid for rid, q in self._queue.items() if q.arrival > req.arrival]:
            self._queue.move_to_end(rid)

    def cancel(self, request_id: str) -> bool:
        return self._queue.pop(request_id, None) is not None

    def queued(self) -> int:
        return len(self._queue)

    def schedule(self, workers: list[WorkerView]) -> list[Admission]:
        out: list[Admission] = []
        while self._queue:
            head = next(iter(self._queue.values()))
            w = pick_worker(head, workers)
            if w is None:
                break
            del self._queue[head.request_id]
            w.free_tokens -= head.reserved_tokens
            w.running += 1
            out.append(Admission(head, w.worker_id))
        return out

    def on_finish(self, req: PendingRequest, output_tokens: int) -> None:
        pass
