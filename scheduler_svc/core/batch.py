"""Batch formation for one worker and one round: Algorithm 1 with bypass (paper §3).

  0. squash check (mlq.py): if a blocker's memory appeared while requests that went
     ahead of it still run, the youngest of them that make room are squashed and the
     round admits nothing else on this worker, so the memory goes to the blocker;
  1. the blocker of an earlier round (if still at its queue's head) is tried first, so
     steady small traffic cannot starve it;
  2. phase 1, queues from smallest to largest WRS: each admits FIFO while its head's
     charge fits the queue's remaining quota (a queue that holds nothing may always try
     its head). The unused quota of every queue left empty goes to a spare pool;
  3. phase 2: the spare pool is handed out again, smallest queue first, FIFO.
Nothing is ever preempted: an admitted request holds its charge until it ends.

A head that fits its quota but not the worker's memory becomes the blocker: younger
requests of its queue (up to `bypass_scan` behind it) that fit now may go first, and
from then on every admission this round -- from any queue -- must be predicted to end
(x `bypass_margin`) before the blocker's memory frees up (`WorkerQueues.free_time`).
A request that was already re-run once (squash or worker loss) never bypasses, so
nothing is squashed twice.

Cost per round: O(K + admitted + bypass_scan), plus O(R log R) for R running requests
when a head is memory-blocked -- independent of how many requests are queued.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from .mlq import Entry, Room, RunningEntry, WorkerQueues
from .types import WorkerView


@dataclass(frozen=True)
class RoundParams:
    bypass: bool = True
    bypass_scan: int = 8
    bypass_margin: float = 1.25
    max_wait_s: float | None = None     # bounded wait (aging); None: off
    # ... and never before service_aging x the head's own processing time at low load
    # (prompt x aging_prefill_s + predicted output x aging_decode_s)
    service_aging: float = 0.0
    aging_prefill_s: float = 0.0
    aging_decode_s: float = 0.0

    def __post_init__(self) -> None:
        if self.bypass_scan < 0 or self.bypass_margin < 1.0:
            raise ValueError(f"bypass_scan must be >= 0 and bypass_margin >= 1, got {self}")
        if self.max_wait_s is not None and not self.max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0 or None, got {self.max_wait_s}")


def form_batch(wq: WorkerQueues, view: WorkerView, now: float,
               params: RoundParams) -> tuple[list[Entry], list[RunningEntry]]:
    """Admissions for this worker, or the requests to squash (then nothing is admitted)."""
    room = Room(view)
    if params.bypass and wq.bypassers:
        squashed = wq.squash_check(room)
        if squashed:
            return [], squashed
    if room.slots <= 0:
        return [], []
    rnd = _Round(wq, room, now, params)
    rnd.run()
    return rnd.admitted, []


class _Round:
    def __init__(self, wq: WorkerQueues, room: Room, now: float, params: RoundParams):
        self.wq, self.room, self.now, self.params = wq, room, now, params
        self.remaining = [qt - h for qt, h in zip(wq.quotas, wq.held)]
        self.admitted: list[Entry] = []
        self.blocker: Entry | None = None
        self.t_free = math.inf

    def run(self) -> None:
        wq = self.wq
        prev = wq.live.get(wq.blocker_rid) if wq.blocker_rid else None
        wq.blocker_rid = None
        if prev is not None:
            q = wq.queue_of(prev.wrs)
            if wq.head(q) is prev and wq.fits_quota(prev, self.remaining[q], q):
                if self.room.fits(prev.req):
                    self.remaining[q] -= self._admit(prev, q)
                elif self.params.bypass:
                    self._block(prev)
        self._admit_aged()
        spare = 0
        for q in range(len(wq.queues)):  # phase 1
            self.remaining[q] -= self._drain(q, self.remaining[q])
            if wq.lengths[q] == 0:
                spare += max(0, self.remaining[q])
                self.remaining[q] = 0
        for q in range(len(wq.queues)):  # phase 2
            if spare <= 0 or self.room.slots <= 0:
                break
            if wq.lengths[q] == 0:
                continue
            own = max(0, self.remaining[q])
            used = self._drain(q, own, spare)
            spare -= max(0, used - own)
            self.remaining[q] = own - min(used, own)

    def _admit_aged(self) -> None:
        """Bounded wait: while some queue head has waited max_wait_s or more -- and at least
        service_aging x its own processing time at low load, so that a long request that came
        just before a burst of short ones does not take their place (the paper's head-of-line
        case) -- the oldest such head goes first, whatever its queue's quota; one that does
        not fit the memory becomes the blocker (others then pass it only by the bypass rule)."""
        p = self.params
        if p.max_wait_s is None:
            return
        wq = self.wq
        while self.room.slots > 0:
            aged = [(e.req.arrival, e.seq, q, e) for q in range(len(wq.queues))
                    if (e := wq.head(q)) is not None and self.now - e.req.arrival
                    >= max(p.max_wait_s, p.service_aging * self._alone_s(e))]
            if not aged:
                return
            arrival, _, q, e = min(aged, key=lambda h: (h[0], h[1]))
            if e is self.blocker:
                return
            if not self.room.fits(e.req):
                if self.params.bypass and self.blocker is None:
                    self._block(e)
                return
            if not self._may_go(e):
                return
            self.remaining[q] -= self._admit(e, q)

    def _alone_s(self, e: Entry) -> float:
        r, p = e.req, self.params
        return r.input_tokens * p.aging_prefill_s + (r.predicted_output or r.max_tokens) * p.aging_decode_s

    def _may_go(self, e: Entry) -> bool:
        """With a blocker waiting, only requests that end before its memory frees may start."""
        if self.blocker is None:
            return True
        expected = self.wq.expected_s(e.req) * self.params.bypass_margin
        return e.req.attempts == 0 and self.now + expected <= self.t_free

    def _block(self, e: Entry) -> None:
        self.blocker = e
        self.wq.blocker_rid = e.req.request_id
        self.t_free = self.wq.free_time(e.req, self.room, self.now)

    def _admit(self, e: Entry, q: int) -> int:
        bypassed = self.blocker.req.request_id if self.blocker is not None else None
        charge = self.wq.start(e, q, self.now, bypassed)
        self.room.take(e.req)
        self.admitted.append(e)
        return charge

    def _drain(self, q: int, own: int, spare: int = 0) -> int:
        """FIFO admissions from queue q within `own` quota plus `spare`; returns tokens used."""
        wq, used, budget = self.wq, 0, own + spare
        while self.room.slots > 0:
            e = wq.head(q)
            if e is None or not wq.fits_quota(e, budget - used, q):
                break
            if self.room.fits(e.req):
                if not self._may_go(e):
                    break
                used += self._admit(e, q)
                continue
            if self.params.bypass and (self.blocker is None or self.blocker is e):
                if self.blocker is None:
                    self._block(e)
                used += self._bypass_behind(q, budget - used)
            break
        return used

    def _bypass_behind(self, q: int, budget: int) -> int:
        """Younger requests of the blocker's queue that fit now and end before it could start."""
        wq, used, seen = self.wq, 0, 0
        for e in itertools.islice(wq.queues[q], 1, 1 + 4 * self.params.bypass_scan):
            if seen >= self.params.bypass_scan or self.room.slots <= 0:
                break
            if wq.live.get(e.req.request_id) is not e:
                continue
            seen += 1
            if wq.charge(e) <= budget - used and self.room.fits(e.req) and self._may_go(e):
                used += self._admit(e, q)
        return used
