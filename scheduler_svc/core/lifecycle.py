"""Every request's life in the scheduler, shared by the gRPC service and the simulator.

`RequestBook` owns what the scheduler knows about each live request beyond the
admission policy's queues: which worker runs it, what that worker reserved for it,
how many tokens the client already has (so a re-run's replayed prefix is skipped),
and whether it is done. It speaks only in plain ids; the caller moves the messages:

    book.add(pending)                      -> queued in the policy
    book.schedule(views)                   -> Round(admit=[Admission], cancel=[(rid, wid)])
                                              (squashed requests are already re-queued;
                                              cancel them on their old worker)
    book.tokens(rid, wid, n)               -> how many of n new tokens the client lacks
    book.completed(rid, wid)               -> True when that worker's completion counts
    book.release(rid, cancel)              -> worker to send a cancel to, or None
    book.requeue(rid)                      -> worker to send a cancel to, or None
    book.worker_down(wid)                  -> request ids re-queued

`views_for` fills each WorkerView's reservations from the book, so free_tokens is
always capacity minus what this scheduler admitted there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .types import Admission, AdmissionPolicy, Clock, PendingRequest, WorkerView


@dataclass(eq=False)
class Lifecycle:
    pending: PendingRequest
    worker: str | None = None
    admitted_at: float | None = None   # first admission (queueing time ends here)
    sent_tokens: int = 0               # tokens already streamed to the client
    seen_tokens: int = 0               # tokens seen from the current attempt (re-runs replay a prefix)
    done: bool = False


@dataclass
class Round:
    admit: list[Admission] = field(default_factory=list)
    cancel: list[tuple[str, str]] = field(default_factory=list)   # (request id, worker id)


class RequestBook:
    def __init__(self, policy: AdmissionPolicy, clock: Clock):
        self.policy = policy
        self.clock = clock
        self.live: dict[str, Lifecycle] = {}
        self._reserved: dict[str, dict[str, int]] = {}   # worker id -> request id -> KV tokens
        self.completed_count = 0

    def __contains__(self, rid: str) -> bool:
        return rid in self.live

    def __len__(self) -> int:
        return len(self.live)

    def get(self, rid: str) -> Lifecycle | None:
        return self.live.get(rid)

    def reserved(self, worker_id: str) -> dict[str, int]:
        return self._reserved.setdefault(worker_id, {})

    def running(self) -> int:
        return sum(len(r) for r in self._reserved.values())

    def views_for(self, views: list[WorkerView]) -> list[WorkerView]:
        """Set each view's free tokens and running count from this book's reservations."""
        for v in views:
            r = self.reserved(v.worker_id)
            v.free_tokens = v.total_tokens - sum(r.values())
            v.running = len(r)
        return views

    def window_for(self, views: list[WorkerView], max_waiting: int) -> list[WorkerView]:
        """Set each view's admission window: requests dispatched to it that have shown no token
        yet (parked for an adapter, waiting for room, or in prefill), out of `max_waiting`
        (0: no window). The simulator counts the worker's own waiting list instead."""
        if max_waiting > 0:
            counts: dict[str, int] = {}
            for lc in self.live.values():
                if lc.worker is not None and not lc.done and lc.seen_tokens == 0:
                    counts[lc.worker] = counts.get(lc.worker, 0) + 1
            for v in views:
                v.waiting, v.max_waiting = counts.get(v.worker_id, 0), max_waiting
        return views

    # -- lifecycle ------------------------------------------------------------
    def add(self, pending: PendingRequest) -> Lifecycle:
        if pending.request_id in self.live:
            raise ValueError(f"request id {pending.request_id!r} is already live")
        lc = self.live[pending.request_id] = Lifecycle(pending)
        self.policy.enqueue(pending)
        return lc

    def schedule(self, views: list[WorkerView]) -> Round:
        out = Round()
        if not self.policy.queued():
            return out
        now = self.clock()
        for adm in self.policy.schedule(views):
            lc = self.live.get(adm.request.request_id)
            if lc is None or lc.done:
                continue
            lc.worker = adm.worker_id
            lc.admitted_at = lc.admitted_at if lc.admitted_at is not None else now
            lc.seen_tokens = 0
            self.reserved(adm.worker_id)[adm.request.request_id] = adm.request.reserved_tokens
            out.admit.append(adm)
        for rid in self.policy.squashes():
            wid = self.requeue(rid)
            if wid is not None:
                out.cancel.append((rid, wid))
        return out

    def requeue(self, rid: str) -> str | None:
        """Run a request again (its worker was lost, it was squashed, or its admission could
        not be sent); returns the worker it leaves, which should be told to cancel it."""
        lc = self.live.get(rid)
        if lc is None or lc.done:
            return None
        wid = lc.worker
        if wid is not None:
            self.reserved(wid).pop(rid, None)
            lc.worker = None
        lc.pending.attempts += 1
        self.policy.requeue(lc.pending)
        return wid

    def tokens(self, rid: str, worker_id: str, n: int) -> int:
        """n tokens arrived from `worker_id`; returns how many are new to the client (a re-run
        replays the prefix the client already has). 0 for a stale worker or unknown id."""
        lc = self.live.get(rid)
        if lc is None or lc.worker != worker_id or lc.done:
            return 0
        skip = max(0, min(n, lc.sent_tokens - lc.seen_tokens))
        lc.seen_tokens += n
        lc.sent_tokens += n - skip
        return n - skip

    def current(self, rid: str, worker_id: str) -> Lifecycle | None:
        """The request, if `worker_id` is the one running it now."""
        lc = self.live.get(rid)
        return lc if lc is not None and lc.worker == worker_id and not lc.done else None

    def completed(self, rid: str, worker_id: str) -> bool:
        lc = self.current(rid, worker_id)
        if lc is None:
            return False
        lc.done = True
        return True

    def release(self, rid: str, cancel: bool) -> str | None:
        """The request ended for the client (finished, failed or cancelled): forget it.
        Returns the worker to send a cancel to when `cancel` and it was running."""
        lc = self.live.pop(rid, None)
        if lc is None:
            return None
        lc.done = True
        if lc.worker is None:
            self.policy.cancel(rid)
            self.completed_count += 0 if cancel else 1
            return None
        self.reserved(lc.worker).pop(rid, None)
        self.policy.on_finish(lc.pending, lc.sent_tokens)
        self.completed_count += 0 if cancel else 1
        return lc.worker if cancel else None

    def worker_down(self, worker_id: str) -> list[str]:
        rids = list(self.reserved(worker_id))
        for rid in rids:
            self.requeue(rid)
        self._reserved[worker_id] = {}
        return rids
