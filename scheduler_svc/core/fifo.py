"""FIFO admission (the S-LoRA baseline) and the admission loop it shares with SJF.

Strict arrival order: the head request waits until some worker has room for its
whole KV reservation; nothing behind it may overtake (that is exactly the head-of-line
blocking the Chameleon policy removes). `OrderedAdmission` is the loop: subclasses say
which request is the head; the round admits heads while one fits and stops at the
first that does not.
"""
from __future__ import annotations

from collections import OrderedDict

from .types import Admission, AdmissionPolicy, Clock, PendingRequest, WorkerView


def pick_worker(req: PendingRequest, workers: list[WorkerView]) -> WorkerView | None:
    """Prefer a worker that has the adapter cached or loading, then the least loaded."""
    fits = [w for w in workers if w.connected and w.free_tokens >= req.reserved_tokens
            and w.running < w.max_running and (w.max_waiting <= 0 or w.waiting < w.max_waiting)]
    if not fits:
        return None

    def key(w: WorkerView) -> tuple[int, float]:
        warm = req.adapter_id is not None and (
            req.adapter_id in w.cached_adapters or req.adapter_id in w.loading_adapters)
        return (0 if warm else 1, -w.free_tokens / max(w.total_tokens, 1))

    return min(fits, key=key)


class OrderedAdmission(AdmissionPolicy):
    """Admit `_head()` while some worker has room for it; stop at the first that does not."""

    def _head(self) -> PendingRequest | None:
        raise NotImplementedError

    def _pop_head(self) -> None:
        raise NotImplementedError

    def _in_order(self, limit: int) -> list[PendingRequest]:
        """The first `limit` queued requests in admission order."""
        raise NotImplementedError

    def schedule(self, workers: list[WorkerView]) -> list[Admission]:
        out: list[Admission] = []
        while (head := self._head()) is not None:
            w = pick_worker(head, workers)
            if w is None:
                break
            self._pop_head()
            w.free_tokens -= head.reserved_tokens
            w.running += 1
            w.waiting += 1
            out.append(Admission(head, w.worker_id))
        return out

    def prefetch_hints(self, worker_id: str, limit: int = 8) -> list[str]:
        """The adapters of the next requests in line (one queue serves every worker)."""
        out: list[str] = []
        for r in self._in_order(4 * limit):
            if r.adapter_id is not None and r.adapter_id not in out:
                out.append(r.adapter_id)
                if len(out) >= limit:
                    break
        return out


class FifoPolicy(OrderedAdmission):
    name = "fifo"

    def __init__(self, clock: Clock):
        self._clock = clock
        self._queue: OrderedDict[str, PendingRequest] = OrderedDict()

    def enqueue(self, req: PendingRequest) -> None:
        self._queue[req.request_id] = req

    def requeue(self, req: PendingRequest) -> None:
        """Put back a request whose worker was lost, ahead of every younger request
        (O(queued); only on worker loss or a squash)."""
        self._queue.pop(req.request_id, None)
        self._queue[req.request_id] = req
        for rid in [rid for rid, q in self._queue.items() if q.arrival > req.arrival]:
            self._queue.move_to_end(rid)

    def cancel(self, request_id: str) -> bool:
        return self._queue.pop(request_id, None) is not None

    def queued(self) -> int:
        return len(self._queue)

    def _head(self) -> PendingRequest | None:
        return next(iter(self._queue.values()), None)

    def _pop_head(self) -> None:
        self._queue.popitem(last=False)

    def _in_order(self, limit: int) -> list[PendingRequest]:
        out = []
        for r in self._queue.values():
            if len(out) >= limit:
                break
            out.append(r)
        return out
