"""The worker's memory: KV pages and cached adapters in one unified pool (no torch).

Runs on the engine thread only (the cache manager is plain Python, not
thread-safe). Requests whose adapter is not resident are parked here until
its weights are staged; adapters that do not fit yet wait for pages (running
requests finishing free KV pages, idle adapters get evicted by the cache
policy). Every allocation goes through the cache manager, so KV never fails
while idle adapter pages could be evicted for it, and every admission question
goes to the reservation ledger (memory/admission.py), which the batch planner
shares.

Usable without an engine or a model: give it any `PoolStorage`
(memory/storage.py) — the torch `UnifiedPool`, or the simulator's `SimPool`.
The API the engine and the simulator use:

- `admit(seq)` a request arrived -> `MemoryEvents` (ready requests, adapters to fetch);
- `staged(adapter)` its weights arrived (host memory) -> events; raises
  `AdapterTooLargeError` when it can never fit (then `fetch_failed`);
- `poll()` every step: installs whose copy has landed -> events;
- `release(seq)` a request finished or was cancelled; then `retry()`;
- `hint(adapter_ids)` the scheduler's queues want these next -> adapters to fetch;
- `allocate_kv` / `free_kv` / `kv_available_pages` for the batch planner;
- `get(adapter_id)` the installed adapter (the storage's handle) of a resident adapter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .memory.adapter_cache import AdapterCache, CacheStats
from .memory.admission import AdmissionPolicy, ReservationLedger
from .memory.layout import AdapterLayout
from .memory.page_pool import PagePool
from .memory.policy import CacheConfig
from .memory.prefetch import ArrivalHistogramPrefetcher
from .memory.storage import InstalledAdapter, PoolStorage, StagedWeights
from .sequence import Sequence


class AdapterTooLargeError(ValueError):
    """An adapter needs more pages than the pool could ever give it."""


@dataclass
class _Pending:
    staged: StagedWeights
    layout: AdapterLayout          # computed once when the weights arrive


@dataclass
class MemoryEvents:
    ready: list[Sequence] = field(default_factory=list)     # adapter resident: may run now
    need_fetch: list[str] = field(default_factory=list)     # adapters to fetch from the store


class WorkerMemory:
    def __init__(self, storage: PoolStorage, cache_config: CacheConfig, clock: Callable[[], float],
                 *, admission: AdmissionPolicy,
                 prefetcher: ArrivalHistogramPrefetcher | None = None,
                 hint_fetch_limit: int = 8):
        if hint_fetch_limit < 0:
            raise ValueError(f"hint_fetch_limit must be >= 0, got {hint_fetch_limit}")
        self.storage = storage
        self.prefetcher = prefetcher
        self.pages = PagePool(storage.num_pages)
        self.cache = AdapterCache(self.pages, cache_config, clock, on_evict=self._forget)
        self.ledger = ReservationLedger(self.cache, admission)
        self.hint_fetch_limit = hint_fetch_limit
        self._resident: dict[str, InstalledAdapter] = {}   # mirrors the cache's loaded adapters
        self._parked: dict[str, list[Sequence]] = {}      # adapter id -> requests waiting for it
        self._pending: dict[str, _Pending] = {}           # fetched, waiting for pages
        self._fetching: set[str] = set()
        # copies into pool pages still in flight: adapter id -> (handle, staged); `staged`
        # keeps the host copy (pinned tensors on CUDA) alive until the copy has landed
        self._copying: dict[str, tuple[InstalledAdapter, StagedWeights]] = {}
        self._blocked: str | None = None                  # oldest parked adapter lacking room
        self._holders: dict[str, str] = {}                # request id -> adapter id it holds
        self._hints: list[str] = []                       # the scheduler's, most urgent first
        self._hinted_fetches: set[str] = set()            # fetches started for a hint
        self._prefetched: dict[str, _Pending] = {}        # hinted, staged, not yet in the pool

    # -- KV pages (the batch planner's allocator) ---------------------------
    def allocate_kv(self, owner: str, n: int) -> list[int] | None:
        return self.cache.allocate_kv(owner, n)

    def free_kv(self, owner: str) -> int:
        return self.cache.free_kv(owner)

    def kv_available_pages(self) -> int:
        return self.cache.kv_available_pages()

    # -- adapters -------------------------------------------------------------
    def get(self, adapter_id: str) -> InstalledAdapter | None:
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

    def staged(self, staged: StagedWeights) -> MemoryEvents:
        """Weights for an adapter arrived from the store."""
        aid = staged.adapter_id
        self._fetching.discard(aid)
        self._hinted_fetches.discard(aid)
        layout = self.storage.layout(staged)
        room = self.cache.placement.max_adapter_pages(self.storage.num_pages
                                                      - self.cache.policy.reserved_pages)
        if layout.num_pages > room:
            raise AdapterTooLargeError(
                f"adapter {aid!r} needs {layout.num_pages} pages of the worker's memory pool, "
                f"which can give an adapter at most {room}: raise --pool-memory-bytes"
                + (" or --lru-max-rank" if not self.cache.placement.pins_take_kv_room else ""))
        if aid not in self._parked:  # a prefetch nobody waits for yet
            if aid in self._hints:
                self._prefetched[aid] = _Pending(staged, layout)
                self._install_hinted()
            else:
                self._install_speculative(staged, layout)
            return MemoryEvents()
        self._pending[aid] = _Pending(staged, layout)
        return self.retry()

    def fetch_failed(self, adapter_id: str) -> list[Sequence]:
        """The store could not deliver: these parked requests must fail."""
        self._fetching.discard(adapter_id)
        self._hinted_fetches.discard(adapter_id)
        seqs = self._parked.pop(adapter_id, [])
        if self._blocked == adapter_id:
            self._blocked = None
            self.ledger.unblock()
        self._update_demand()
        return seqs

    def retry(self) -> MemoryEvents:
        """Let waiting requests in where room allows (call after pages were freed)."""
        ev = MemoryEvents()
        self._admit_in_order(ev)
        for aid in [a for a in self._pending if a not in self._parked]:
            del self._pending[aid]             # nobody wants it any more
        self._update_demand()
        if self._prefetched:
            self._install_hinted()
        return ev

    def _admit_in_order(self, ev: MemoryEvents) -> None:
        """Pin adapters for waiting requests in arrival order. Once the oldest one cannot get
        room, younger ones take no more pages: they may join an adapter that is already held
        (that costs nothing) but neither pin an idle cached adapter nor install a new one.
        The ledger keeps their KV room from them too (`ReservationLedger.block`)."""
        self._blocked = None
        self.ledger.unblock()
        for aid in sorted(self._parked, key=lambda a: self._parked[a][0].order):
            if aid in self._copying:
                continue                       # pages taken; ready when the copy lands
            if aid in self._prefetched:        # a hint staged it already: no fetch needed
                self._pending[aid] = self._prefetched.pop(aid)
            resident = aid in self._resident
            if not resident and aid not in self._pending:
                self._fetch_if_needed(aid, ev)  # (again, if evicted while its requests waited)
                continue
            cost = self._adapter_cost(aid)
            if self._blocked is not None and cost > 0:
                continue
            if not self._fits(aid, cost):
                if self._blocked is None:
                    self._blocked = aid
                    self.ledger.block(self._parked[aid][0], cost)
            elif resident:
                self._let_in(aid, ev)
            else:
                self._install(aid, ev)

    def _adapter_cost(self, aid: str) -> int:
        """Pages letting aid's requests in takes from KV: a pending adapter's pages, an idle
        cached adapter's pages (pinning takes them), nothing for one already held."""
        if not self.cache.placement.pins_take_kv_room:
            return 0                           # lru: adapters live in reserved slots
        if aid in self._pending:
            return self._pending[aid].layout.num_pages
        e = self.cache.entry(aid)
        return 0 if e is None or e.holders else len(e.pages)

    def _fits(self, aid: str, extra_pages: int) -> bool:
        """Would `extra_pages` more adapter pages (plus one of aid's requests) leave the KV
        room every request admitted before it may still need?"""
        if not self.cache.placement.pins_take_kv_room:
            return True  # lru adapters live in reserved slots, apart from KV
        return self.ledger.may_pin(self._parked[aid][0], extra_pages)

    def _install(self, aid: str, ev: MemoryEvents) -> None:
        staged, layout = self._pending[aid].staged, self._pending[aid].layout
        pages = self.cache.reserve_for_load(aid, layout.num_pages, digest=staged.digest,
                                            nbytes=staged.nbytes, rank=staged.rank)
        if pages is None:
            return
        del self._pending[aid]
        self._start_copy(staged, layout, pages, ev)

    def _start_copy(self, staged: StagedWeights, layout: AdapterLayout, pages: list[int],
                    ev: MemoryEvents) -> None:
        installed = self.storage.install(staged, layout, pages)
        self._copying[staged.adapter_id] = (installed, staged)
        # only this copy: another copy that landed meanwhile belongs to the next poll(), whose
        # events reach the planner (`ev` may be a prefetch's, which nobody reads)
        self._finish_copies(ev, only=staged.adapter_id)

    def poll(self) -> MemoryEvents:
        """Adapters whose copy into the pool has landed become usable (call every step)."""
        ev = MemoryEvents()
        if self._copying:
            self._finish_copies(ev)
        return ev

    def copying(self) -> bool:
        return bool(self._copying)

    def _finish_copies(self, ev: MemoryEvents, only: str | None = None) -> None:
        for aid, (installed, _staged) in list(self._copying.items()):
            if (only is not None and aid != only) or not installed.is_ready():
                continue
            del self._copying[aid]
            self._resident[aid] = installed
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

    def _forget(self, adapter_id: str) -> None:
        """The cache removed the adapter (its `on_evict` hook): its tables go with it."""
        self._resident.pop(adapter_id, None)

    # -- prefetch: the scheduler's hints and the predictive prefetcher ----------
    def hint(self, adapter_ids: list[str]) -> list[str]:
        """The scheduler's queues will want these adapters next, most urgent first (replaces
        the previous hint). Returns the ones to fetch now (at most `hint_fetch_limit` hinted
        adapters staged or on their way at once); they go into free or idle memory when they
        fit (`_install_hinted`)."""
        self._hints = list(dict.fromkeys(a for a in adapter_ids if a))
        wanted = set(self._hints)
        for aid in [a for a in self._prefetched if a not in wanted]:
            del self._prefetched[aid]          # no longer expected: free the host copy
        self._update_demand()
        out = []
        for aid in self._hints:
            if len(self._prefetched) + len(self._hinted_fetches) >= self.hint_fetch_limit:
                break
            if (aid in self._resident or aid in self._copying or aid in self._pending
                    or aid in self._prefetched or aid in self._fetching or aid in self._parked
                    or self.cache.is_loading(aid)):
                continue
            self._fetching.add(aid)
            self._hinted_fetches.add(aid)
            out.append(aid)
        if self._prefetched:
            self._install_hinted()
        return out

    def _install_hinted(self) -> None:
        """Copy staged hinted adapters into the pool, most urgent first, while they fit: taking
        free pages or idle adapters nobody nearer wants (no running request's, no parked
        request's, no earlier hint's), and never KV room the committed requests may need."""
        for k, aid in enumerate(self._hints):
            if aid not in self._prefetched:
                continue
            if aid in self._parked or aid in self._resident or aid in self._copying:
                continue                       # a request took it over / already here
            keep = set(self._parked) | set(self._pending) | set(self._hints[:k])
            p = self._prefetched[aid]
            if not self._prefetch_into(p.staged, p.layout, keep, may_evict=True):
                break                          # later hints are less urgent: stop at the first misfit
            del self._prefetched[aid]

    def _install_speculative(self, staged: StagedWeights, layout: AdapterLayout) -> None:
        """Cache a predictive-prefetcher guess in free pages only, never evicting anything
        and leaving the committed requests their KV room; otherwise drop the guess."""
        self._prefetch_into(staged, layout, keep=(), may_evict=False)

    def _prefetch_into(self, staged: StagedWeights, layout: AdapterLayout, keep: set[str],
                       may_evict: bool) -> bool:
        aid = staged.adapter_id
        if self.cache.is_resident(aid) or self.cache.is_loading(aid):
            return True
        n = layout.num_pages
        if self.cache.placement.pins_take_kv_room:
            # idle adapters the prefetch may not evict do not count as room
            protected = (self.cache.idle_adapter_pages() - self.cache.idle_adapter_pages(keep)
                         if may_evict else self.cache.idle_adapter_pages())
            if n > self.ledger.spare_pages() - protected:
                return False
        pages = self.cache.reserve_for_load(aid, n, digest=staged.digest, nbytes=staged.nbytes,
                                            rank=staged.rank, keep=keep, may_evict=may_evict)
        if pages is None:
            return False
        self._start_copy(staged, layout, pages, MemoryEvents())  # nobody waits for it yet
        return True

    def prefetch_candidates(self) -> list[str]:
        """Adapters the predictive prefetcher expects soon that are neither here nor coming;
        they are marked as being fetched (the caller fetches them and calls `staged`)."""
        if self.prefetcher is None:
            return []
        busy = (set(self._resident) | set(self._pending) | self._fetching | set(self._parked)
                | set(self._copying) | set(self._prefetched))
        out = [a for a in self.prefetcher.predict(exclude=busy) if not self.cache.is_resident(a)]
        self._fetching.update(out)
        return out

    # -- requests leaving ---------------------------------------------------------
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

    def hints(self) -> list[str]:
        return list(self._hints)

    def stats(self) -> CacheStats:
        return self.cache.stats()

    def _hold(self, seq: Sequence) -> None:
        wait_s = self.cache.acquire(seq.adapter_id, seq.request_id, wanted_at=seq.arrival)
        seq.adapter_wait_s = wait_s
        self._holders[seq.request_id] = seq.adapter_id

    def _update_demand(self) -> None:
        self.cache.set_queued_demand(set(self._parked) | set(self._pending), hinted=self._hints)
