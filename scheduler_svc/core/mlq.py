"""One worker's Chameleon queues: bookkeeping, quota charges and the squash check.

A `WorkerQueues` holds the requests the dispatcher placed on one worker, split into
K queues by WRS (boundaries from kmeans.py), each with a token quota (quota.py), and
the requests it admitted there, each holding its charge against its queue's quota
until it ends. Batch formation (Algorithm 1 and bypass) is in batch.py.

Bypass and squash. A queue head that fits its quota but not the worker's memory (KV
tokens, or pool bytes for its adapter after evicting every idle adapter) becomes the
worker's *blocker*. Until it is admitted, every admission on this worker must be
predicted to finish before the blocker's memory frees up (batch.py); such admissions
are its *bypassers*. If the blocker's memory appears while bypassers still run -- the
blocker would fit were some of them gone -- the youngest bypassers that make room are
squashed (`squash_check`): released here and handed back to the service for a re-run.

Queues are deques in arrival order; a cancelled request is only dropped from `live`
and its deque slot is skipped when it reaches the front (lazy deletion), so no
operation scans a whole queue.
"""
from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from typing import Callable

from .types import PendingRequest, WorkerView


class Entry:
    """A queued request with what the policy computed for it."""
    __slots__ = ("req", "wrs", "cost", "adapter_tokens", "seq")

    def __init__(self, req: PendingRequest, wrs: float, seq: int):
        self.req, self.wrs, self.seq = req, wrs, seq
        self.cost = self.adapter_tokens = 0  # set by the worker the request is queued on


def insert_sorted(dq: deque[Entry], e: Entry) -> None:
    """Insert by (arrival, seq); O(1) for the usual newest-arrival case."""
    key = (e.req.arrival, e.seq)
    if not dq or (dq[-1].req.arrival, dq[-1].seq) <= key:
        dq.append(e)
        return
    i = 0
    while (dq[i].req.arrival, dq[i].seq) <= key:
        i += 1
    dq.insert(i, e)


class RunningEntry:
    __slots__ = ("entry", "queue", "charge", "admitted_at", "expected_end", "bypassed")

    def __init__(self, entry: Entry, queue: int, charge: int, admitted_at: float,
                 expected_end: float, bypassed: str | None):
        self.entry, self.queue, self.charge, self.admitted_at = entry, queue, charge, admitted_at
        self.expected_end = expected_end
        self.bypassed = bypassed  # request id of the blocker it went ahead of, if any


class Room:
    """What is left on the worker during one round.

    Tokens are KV reservations (prompt + max_tokens), as the service books them; bytes
    are the unified pool's free pages plus idle cached adapters (evictable), which must
    hold a request's KV pages and, when its adapter is neither cached nor loading, the
    adapter. With page_bytes = 0 (a worker that does not report its pool) only tokens count.
    """

    def __init__(self, view: WorkerView):
        self.tokens = view.free_tokens
        self.slots = view.max_running - view.running
        if view.max_waiting > 0:
            self.slots = min(self.slots, view.max_waiting - view.waiting)
        self.page_bytes, self.block = view.page_bytes, max(1, view.block_tokens)
        self.bytes = view.free_bytes + view.evictable_bytes if view.page_bytes > 0 else math.inf
        self.warm = set(view.cached_adapters) | set(view.loading_adapters)

    def kv_bytes(self, tokens: int) -> int:
        return -(-tokens // self.block) * self.page_bytes

    def need_bytes(self, req: PendingRequest) -> int:
        cold = req.adapter_id is not None and req.adapter_id not in self.warm
        return self.kv_bytes(req.reserved_tokens) + (req.adapter_bytes if cold else 0)

    def fits(self, req: PendingRequest) -> bool:
        return self.tokens >= req.reserved_tokens and self.bytes >= self.need_bytes(req)

    def take(self, req: PendingRequest) -> None:
        self.bytes -= self.need_bytes(req)
        self.tokens -= req.reserved_tokens
        self.slots -= 1
        if req.adapter_id is not None:
            self.warm.add(req.adapter_id)


class WorkerQueues:
    def __init__(self, worker_id: str, expected_s: Callable[[PendingRequest], float]):
        self.worker_id = worker_id
        self.connected = True
        self.expected_s = expected_s
        self.total_tokens = 0
        self.page_bytes = 0
        self.block_tokens = 16
        self.boundaries: tuple[float, ...] = ()
        self.quotas: list[int] = [0]
        self.queues: list[deque[Entry]] = [deque()]
        self.lengths = [0]
        self.held = [0]
        self.live: dict[str, Entry] = {}           # queued here, by request id
        self.running: dict[str, RunningEntry] = {}
        self.bypassers: dict[str, RunningEntry] = {}
        self.adapters: Counter[str] = Counter()     # queued + running per adapter (dispatch warmth)
        self.holding: Counter[str] = Counter()      # running per adapter
        self.queued_cost = 0
        self.blocker_rid: str | None = None
        self.bypasses = 0

    # -- costs ---------------------------------------------------------------
    def adapter_tokens(self, adapter_bytes: int) -> int:
        pages = -(-adapter_bytes // self.page_bytes) if self.page_bytes > 0 else 0
        return pages * self.block_tokens

    def token_cost(self, input_tokens: int, output_tokens: int, adapter_bytes: int) -> int:
        """Quota tokens: input + (predicted) output + the adapter's pages in tokens."""
        return input_tokens + output_tokens + self.adapter_tokens(adapter_bytes)

    def cost(self, req: PendingRequest) -> int:
        return self.token_cost(req.input_tokens, req.predicted_output or req.max_tokens,
                               req.adapter_bytes)

    def charge(self, e: Entry) -> int:
        """What admitting `e` holds against its queue's quota. An adapter already in use
        by a running request on this worker is in memory once, so it is charged once:
        to the request that brought it (when that one ends first, the adapter goes
        uncharged until the next request that has to bring it)."""
        shared = e.req.adapter_id is not None and self.holding[e.req.adapter_id] > 0
        return e.cost - (e.adapter_tokens if shared else 0)

    def fits_quota(self, e: Entry, remaining: int, q: int) -> bool:
        """Within the queue's remaining quota -- or the queue holds nothing, so that a
        request larger than its whole quota still runs (alone) instead of waiting forever."""
        return self.charge(e) <= remaining or self.held[q] == 0

    def queue_of(self, wrs: float) -> int:
        return bisect.bisect_left(self.boundaries, wrs)

    # -- queued requests -----------------------------------------------------
    def push(self, e: Entry) -> None:
        """Queue in arrival order: appended normally, inserted when re-queued or moved."""
        e.cost = self.cost(e.req)
        e.adapter_tokens = self.adapter_tokens(e.req.adapter_bytes)
        q = self.queue_of(e.wrs)
        insert_sorted(self.queues[q], e)
        self.live[e.req.request_id] = e
        self.lengths[q] += 1
        self.queued_cost += e.cost
        if e.req.adapter_id:
            self.adapters[e.req.adapter_id] += 1

    def unqueue(self, e: Entry) -> None:
        """Take `e` out of the queued books (admitted or removed); its slot is skipped later."""
        del self.live[e.req.request_id]
        self.lengths[self.queue_of(e.wrs)] -= 1
        self.queued_cost -= e.cost

    def remove(self, rid: str) -> Entry | None:
        """Cancel a queued request."""
        e = self.live.get(rid)
        if e is None:
            return None
        self.unqueue(e)
        self._forget_adapter(e.req)
        return e

    def _forget_adapter(self, req: PendingRequest) -> None:
        if req.adapter_id:
            self.adapters[req.adapter_id] -= 1
            if self.adapters[req.adapter_id] <= 0:
                del self.adapters[req.adapter_id]

    def head(self, q: int) -> Entry | None:
        dq = self.queues[q]
        while dq and self.live.get(dq[0].req.request_id) is not dq[0]:
            dq.popleft()
        return dq[0] if dq else None

    def upcoming_adapters(self, limit: int) -> list[str]:
        """Distinct adapters of queued requests in the order batch formation reaches them:
        depth 0 of every queue (smallest first), then depth 1, ...; skips cancelled slots."""
        out: list[str] = []
        iters = [iter(dq) for dq in self.queues]
        scanned = 0
        while iters and len(out) < limit and scanned < 8 * limit:
            for it in list(iters):
                e = next(it, None)
                while e is not None and self.live.get(e.req.request_id) is not e:
                    e = next(it, None)
                if e is None:
                    iters.remove(it)
                    continue
                scanned += 1
                aid = e.req.adapter_id
                if aid is not None and aid not in out:
                    out.append(aid)
                    if len(out) >= limit:
                        break
        return out

    def take_all_queued(self) -> list[Entry]:
        """Remove every queued request, oldest first (worker lost, or queues rebuilt)."""
        out = sorted(self.live.values(), key=lambda e: (e.req.arrival, e.seq))
        for e in out:
            self.unqueue(e)
            self._forget_adapter(e.req)
        for dq in self.queues:
            dq.clear()
        return out

    # -- running requests ----------------------------------------------------
    def start(self, e: Entry, q: int, now: float, bypassed: str | None) -> int:
        """Book an admission; returns the tokens it holds against queue q's quota."""
        self.unqueue(e)
        e.req.wrs, e.req.queue_index = e.wrs, q   # for the request's trace
        charge = self.charge(e)
        self.held[q] += charge
        if e.req.adapter_id:
            self.holding[e.req.adapter_id] += 1
        r = RunningEntry(e, q, charge, now, now + self.expected_s(e.req), bypassed)
        self.running[e.req.request_id] = r
        if bypassed is not None:
            self.bypassers[e.req.request_id] = r
            self.bypasses += 1
        return charge

    def release(self, rid: str) -> RunningEntry | None:
        """A running request ended (finished, squashed or re-queued): free its quota."""
        r = self.running.pop(rid, None)
        if r is None:
            return None
        self.bypassers.pop(rid, None)
        self.held[r.queue] -= r.charge
        self._forget_adapter(r.entry.req)
        if r.entry.req.adapter_id:
            self.holding[r.entry.req.adapter_id] -= 1
        return r

    # -- layout --------------------------------------------------------------
    def set_layout(self, boundaries: tuple[float, ...], quotas: list[int],
                   rewrs: Callable[[Entry], float] | None = None) -> None:
        """New boundaries/quotas; queued requests are re-bucketed (re-scored by `rewrs`)."""
        if len(quotas) != len(boundaries) + 1:
            raise ValueError(f"need one quota per queue: {len(boundaries) + 1}, got {len(quotas)}")
        entries = self.take_all_queued() if boundaries != self.boundaries or rewrs else []
        if boundaries != self.boundaries:
            self.queues = [deque() for _ in quotas]
            self.lengths = [0] * len(quotas)
        self.boundaries, self.quotas = boundaries, list(quotas)
        for e in entries:
            if rewrs is not None:
                e.wrs = rewrs(e)
            self.push(e)
        self.held = [0] * len(quotas)
        for r in self.running.values():
            r.queue = self.queue_of(r.entry.wrs)
            self.held[r.queue] += r.charge

    def update_view(self, view: WorkerView) -> bool:
        """Take the worker's geometry; True when its capacity changed (quotas are stale)."""
        changed = view.total_tokens != self.total_tokens
        self.total_tokens, self.block_tokens = view.total_tokens, max(1, view.block_tokens)
        self.page_bytes = view.page_bytes
        return changed

    # -- bypass and squash ---------------------------------------------------
    def squash_check(self, room: Room) -> list[RunningEntry]:
        """Bypassers to squash now that their blocker's memory appeared (released here)."""
        groups: dict[str, list[RunningEntry]] = {}
        for r in list(self.bypassers.values()):
            if r.bypassed in self.live:
                groups.setdefault(r.bypassed, []).append(r)
            else:  # the blocker is gone (admitted or cancelled): an ordinary request now
                r.bypassed = None
                del self.bypassers[r.entry.req.request_id]
        out: list[RunningEntry] = []
        for rid, group in groups.items():
            blocked = self.live[rid]
            q = self.queue_of(blocked.wrs)
            if room.fits(blocked.req) or not self.fits_quota(blocked, self.quotas[q] - self.held[q], q):
                continue
            tokens, free_bytes, chosen = room.tokens, room.bytes, []
            for r in sorted(group, key=lambda r: r.admitted_at, reverse=True):  # youngest first
                chosen.append(r)
                tokens += r.entry.req.reserved_tokens
                free_bytes += room.kv_bytes(r.entry.req.reserved_tokens)
                if tokens >= blocked.req.reserved_tokens and free_bytes >= room.need_bytes(blocked.req):
                    out.extend(chosen)
                    break
        for r in out:
            self.release(r.entry.req.request_id)
        return out

    def free_time(self, req: PendingRequest, room: Room, now: float) -> float:
        """When enough running requests will have ended (by their expected ends) for `req` to fit."""
        need_tokens = req.reserved_tokens - room.tokens
        need_bytes = room.need_bytes(req) - room.bytes
        if need_tokens <= 0 and need_bytes <= 0:
            return now
        refs = Counter(r.entry.req.adapter_id for r in self.running.values() if r.entry.req.adapter_id)
        for r in sorted(self.running.values(), key=lambda r: r.expected_end):
            rr = r.entry.req
            need_tokens -= rr.reserved_tokens
            need_bytes -= room.kv_bytes(rr.reserved_tokens)
            if rr.adapter_id:
                refs[rr.adapter_id] -= 1
                if refs[rr.adapter_id] == 0 and rr.adapter_id != req.adapter_id:
                    need_bytes -= rr.adapter_bytes  # its adapter becomes idle, i.e. evictable
            if need_tokens <= 0 and need_bytes <= 0:
                return max(now, r.expected_end)
        # Our accounting says it will not fit even on an idle worker. Trusting that would let
        # everyone bypass it forever, so assume it fits once everything running has ended.
        return max((r.expected_end for r in self.running.values()), default=math.inf)
