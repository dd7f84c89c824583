"""The worker's memory: KV pages and cached adapters in one unified pool.

Runs on the engine thread only (the cache manager is plain Python, not
thread-safe). Requests whose adapter is not resident are parked here until
its weights are installed; adapters that do not fit yet wait for pages
(running requests finishing free KV pages, idle adapters get evicted by the
cache policy). Every allocation goes through the cache manager, so KV never
fails while idle adapter pages could be evicted for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .memory.adapter_cache import AdapterCache, CacheStats
from .memory.layout import AdapterLayout
from .memory.page_pool import PagePool
from .memory.prefetch import ArrivalHistogramPrefetcher
from .memory.policy import CacheConfig
from .sequence import Sequence
from .unified_pool import PooledLora, StagedAdapter, UnifiedPool


class AdapterTooLargeError(ValueError):
    """An adapter needs more pages than the pool could ever give it."""


@dataclass
class _Pending:
    staged: StagedAdapter
    layout: AdapterLayout          # computed once when the weights arrive


@dataclass
class MemoryEvents:
    ready: list[Sequence] = field(default_factory=list)     # adapter resident: may run now
    need_fetch: list[str] = field(default_factory=list)     # adapters to fetch from the store


class WorkerMemory:
    def __init__(self, pool: UnifiedPool, cache_config: CacheConfig, clock: Callable[[], float],
                 copy_stream: "torch.cuda.Stream | None" = None,
                 prefetcher: ArrivalHistogramPrefetcher | None = None):
        self.pool = pool
        self.prefetcher = prefetcher
        self.pages = PagePool(pool.num_pages)
        self.cache = AdapterCache(self.pages, cache_config, clock)
        self.copy_stream = copy_stream
        self._resident: dict[str, PooledLora] = {}
        self._parked: dict[str, list[Sequence]] = {}      # adapter id -> requests waiting for it
        self._pending: dict[str, _Pending] = {}           # fetched, waiting for pages
        self._fetching: set[str] = set()
        # copies into pool pages still in flight (CUDA side stream): adapter id -> (tables, staged);
        # `staged` keeps the pinned host tensors alive until the copy has landed
        self._copying: dict[str, tuple[PooledLora, StagedAdapter]] = {}
        self._blocked: str | None = None                  # oldest parked adapter lacking room
        self._holders: dict[str, str] = {}                # request id -> adapter id it holds
        # Set by the engine. `kv_reserved(before)`: pages the requests the batch planner holds
        # (running, and ready ones admitted before `before`) may still allocate;
        # `kv_pages_for`: pages requests need for their whole
        # context. An adapter load must leave room for all of those plus one of its own
        # requests, or pinned adapters could leave ready requests with no KV pages (deadlock).
        self.kv_reserved: Callable[[int | None], int] = lambda before=None: 0
        self.kv_pages_for: Callable[[list[Sequence]], int] = lambda seqs: 0

    # -- KV pages (the batch planner's allocator) ---------------------------
    def allocate_kv(self, owner: str, n: int) -> list[int] | None:
        pages = self.cache.allocate_kv(owner, n)
        self._drop_evicted()
        return pages

    def free_kv(self, owner: str) -> int:
        return self.cache.free_kv(owner)

    def kv_available_pages(self) -> int:
        return self.cache.kv_available_pages()

    # -- adapters -------------------------------------------------------------
    def get(self, adapter_id: str) -> PooledLora | None:
        return self._resident.get(adapter_id)

    def admit(self, seq: Sequence) -> MemoryEvents:
        """A request arrived. Base-model requests are ready at once, hits once pinning their
        adapter leaves the KV room admitted requests need; misses start a fetch."""
        ev = MemoryEvents()
        aid = seq.adapter_id
        if aid is None:
            ev.ready.append(seq)
            return ev
        if self.prefetcher is not None:
            self.prefetcher.observe(aid)
        self.cache.lookup(aid)
        self._parked.setdefault(aid, []).append(seq)
        self._admit_in_order(ev)
        self._update_demand()
        return ev

    def staged(self, staged: StagedAdapter) -> MemoryEvents:
        """Weights for an adapter arrived from the store."""
        self._fetching.discard(staged.adapter_id)
        layout = self.pool.layout(staged)
        pages = layout.num_pages
        room = (self.cache.policy.slot_pages if self.cache.policy.slots is not None
                else self.pool.num_pages - self.cache.policy.reserved_pages)
        if pages > room:
            raise AdapterTooLargeError(
                f"adapter {staged.adapter_id!r} needs {pages} pages of the worker's memory pool, "
                f"which can give an adapter at most {room}: raise --pool-memory-bytes"
                + (" or --lru-max-rank" if self.cache.policy.slots is not None else ""))
        if staged.adapter_id not in self._parked:  # a speculative prefetch nobody waits for
            self._install_speculative(staged, layout)
            return MemoryEvents()
        self._pending[staged.adapter_id] = _Pending(staged, layout)
        return self.retry()

    def prefetch_candidates(self) -> list[str]:
        """Adapters the predictive prefetcher expects soon that are neither here nor coming;
        they are marked as being fetched (the caller fetches them and calls `staged`)."""
        if self.prefetcher is None:
            return []
        self._drop_evicted()
        busy = (set(self._resident) | set(self._pending) | self._fetching | set(self._parked)
                | set(self._copying))
        out = [a for a in self.prefetcher.predict(exclude=busy) if not self.cache.is_resident(a)]
        self._fetching.update(out)
        return out

    def _install_speculative(self, staged: StagedAdapter, layout: AdapterLayout) -> None:
        """Cache a prefetched adapter in free pages only, never evicting anything and leaving
        admitted requests their KV room; otherwise drop the guess."""
        aid = staged.adapter_id
        free_after = self.pages.num_free - layout.num_pages
        if self.cache.is_resident(aid) or free_after < self.kv_reserved():
            return
        pages = self.cache.reserve_for_load(aid, layout.num_pages, digest=staged.digest,
                                            nbytes=staged.nbytes, rank=staged.rank, may_evict=False)
        if pages is not None:
            self._start_copy(staged, layout, pages, MemoryEvents())  # nobody waits for it

    def held_back(self) -> tuple[int, int | None]:
        """(pages, order) for the oldest request waiting here for room: its adapter's pages
        (fetched but not installed, or cached but idle) plus its context. The batch planner
        keeps them from requests admitted after it (higher `order`), so later requests whose
        adapters are resident cannot starve it."""
        if self._blocked is None or self._blocked not in self._parked:
            return 0, None
        aid = self._blocked
        first = self._parked[aid][0]
        return self._adapter_cost(aid) + self.kv_pages_for([first]), first.order

    def fetch_failed(self, adapter_id: str) -> list[Sequence]:
        """The store could not deliver: these parked requests must fail."""
        self._fetching.discard(adapter_id)
        self._update_demand()
        return self._parked.pop(adapter_id, [])

    def retry(self) -> MemoryEvents:
        """Let waiting requests in where room allows (call after pages were freed)."""
        ev = MemoryEvents()
        self._admit_in_order(ev)
        for aid in [a for a in self._pending if a not in self._parked]:
            del self._pending[aid]             # nobody wants it any more
        self._update_demand()
        return ev

    def _admit_in_order(self, ev: MemoryEvents) -> None:
        """Pin adapters for waiting requests in arrival order. Once the oldest one cannot get
        room, younger ones take no more pages: they may join an adapter that is already held
        (that costs nothing) but neither pin an idle cached adapter nor install a new one.
        Their KV room is kept from them by the planner (`held_back`)."""
        self._blocked = None
        for aid in sorted(self._parked, key=lambda a: self._parked[a][0].order):
            if aid in self._copying:
                continue                       # pages taken; ready when the copy lands
            resident = aid in self._resident and self.cache.is_resident(aid)
            if not resident and aid not in self._pending:
                self._fetch_if_needed(aid, ev)  # (again, if evicted while its requests waited)
                continue
            cost = self._adapter_cost(aid)
            if self._blocked is not None and cost > 0:
                continue
            if not self._fits(aid, cost):
                self._blocked = self._blocked or aid
            elif resident:
                self._let_in(aid, ev)
            else:
                self._install(aid, ev)

    def _adapter_cost(self, aid: str) -> int:
        """Pages letting aid's requests in takes from KV: a pending adapter's pages, an idle
        cached adapter's pages (pinning takes them), nothing for one already held."""
        if aid in self._pending:
            return self._pending[aid].layout.num_pages
        e = self.cache.entry(aid)
        return 0 if e is None or e.holders else len(e.pages)

    def _fits(self, aid: str, extra_pages: int) -> bool:
        """Would `extra_pages` more adapter pages (plus one of aid's requests) leave the KV
        room every request admitted before it may still need?"""
        if self.cache.policy.slots is not None:
            return True  # lru adapters live in reserved slots, apart from KV
        first = self._parked[aid][0]
        room = self.cache.kv_available_pages() - extra_pages
        return room - self.kv_pages_for([first]) >= self.kv_reserved(first.order)

    def _install(self, aid: str, ev: MemoryEvents) -> None:
        staged, layout = self._pending[aid].staged, self._pending[aid].layout
        pages = self.cache.reserve_for_load(aid, layout.num_pages, digest=staged.digest,
                                            nbytes=staged.nbytes, rank=staged.rank)
        if pages is None:
            return
        self._drop_evicted()  # room may have come from evicting idle adapters
        del self._pending[aid]
        self._start_copy(staged, layout, pages, ev)

    def _start_copy(self, staged: StagedAdapter, layout: AdapterLayout, pages: list[int],
                    ev: MemoryEvents) -> None:
        pooled = self.pool.install(staged, layout, pages, self.copy_stream)
        self._copying[staged.adapter_id] = (pooled, staged)
        self._finish_copies(ev)

    def poll(self) -> MemoryEvents:
        """Adapters whose copy into the pool has landed become usable (call every step)."""
        ev = MemoryEvents()
        if self._copying:
            self._finish_copies(ev)
        return ev

    def copying(self) -> bool:
        return bool(self._copying)

    def _finish_copies(self, ev: MemoryEvents) -> None:
        for aid, (pooled, _staged) in list(self._copying.items()):
            if not pooled.is_ready():
                continue
            del self._copying[aid]
            self._resident[aid] = pooled
            self.cache.mark_loaded(aid)
            if aid in self._parked:
                self._let_in(aid, ev)

    def _let_in(self, aid: str, ev: MemoryEvents) -> None:
        """aid's waiting requests hold the (resident) adapter and may run."""
        for seq in self._parked.pop(aid):
            self._hold(seq)
            ev.ready.append(seq)

    def _fetch_if_needed(self, aid: str, ev: MemoryEvents) -> None:
        if aid not in self._fetching and aid not in self._pending and not self.cache.is_loading(aid):
            self._fetching.add(aid)
            ev.need_fetch.append(aid)

    def release(self, seq: Sequence) -> None:
        """A request finished or was cancelled."""
        aid = self._holders.pop(seq.request_id, None)
        if aid is not None:
            self.cache.release(aid, seq.request_id)
        elif seq.adapter_id in self._parked and seq in self._parked[seq.adapter_id]:
            self._parked[seq.adapter_id].remove(seq)
            if not self._parked[seq.adapter_id]:
                del self._parked[seq.adapter_id]
        self._update_demand()

    def parked(self) -> list[Sequence]:
        return [s for seqs in self._parked.values() for s in seqs]

    def stats(self) -> CacheStats:
        return self.cache.stats()

    def _hold(self, seq: Sequence) -> None:
        wait_s = self.cache.acquire(seq.adapter_id, seq.request_id, wanted_at=seq.arrival)
        seq.adapter_wait_s = wait_s
        self._holders[seq.request_id] = seq.adapter_id

    def _update_demand(self) -> None:
        self.cache.set_queued_demand(set(self._parked) | set(self._pending))
        self._drop_evicted()

    def _drop_evicted(self) -> None:
        # the cache manager may have evicted idle adapters to make room: forget their tables
        for aid in [a for a in self._resident if not self.cache.is_resident(a)]:
            del self._resident[aid]
