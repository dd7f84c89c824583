"""The adapter cache manager over the unified page pool (no torch).

KV blocks and adapter weights take pages from one PagePool (activations are
ordinary torch tensors outside it). With the idle-memory policies nothing is
reserved for adapters: a cached adapter nobody is running ("idle") keeps its
pages until a KV allocation or a missing adapter needs them, and is then evicted
in the policy's order. Rules every policy keeps:

- an adapter held by a running request (refcount > 0) or still loading is
  never evicted;
- an idle adapter wanted by queued requests is evicted only when evicting
  every other idle adapter would not free enough; one the scheduler hinted
  it will need soon (`set_queued_demand(..., hinted=...)`) goes before those
  but after adapters nobody wants;
- an allocation evicts nothing when it cannot succeed anyway, and never fails
  while free pages plus evictable pages suffice.

The engine drives it (through WorkerMemory): `lookup` once per arriving request
(hit/miss), `set_queued_demand` whenever the set of waiting requests or hints
changes (an admission, a load landing or failing, a hint, a release),
`reserve_for_load` -> copy weights -> `mark_loaded` (or `cancel_load`),
`acquire`/`release` around a request's run, `allocate_kv`/`free_kv` for KV blocks. Times come from the
injected clock. How much room adapters and KV have is the policy's placement
(placement.py); which idle adapter goes first is its order (eviction.py).
Every removal of an adapter (eviction, flush, failed load, replaced digest)
goes through one place and calls `on_evict(adapter_id)`, so the owner of the
adapter's device-side tables drops them there and nowhere else.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable

from .eviction import Candidate
from .page_pool import PagePool
from .policy import CacheConfig, build_policy


@dataclass
class AdapterEntry:
    adapter_id: str
    digest: str
    rank: int
    pages: list[int]
    nbytes: int
    loaded: bool = False
    holders: set[str] = field(default_factory=set)
    last_use: float = 0.0
    ready_at: float | None = None

    @property
    def refcount(self) -> int:
        return len(self.holders)


@dataclass(frozen=True)
class CacheStats:
    total_pages: int
    free_pages: int
    kv_pages: int
    adapter_pages: int
    idle_adapter_pages: int  # pages of cached adapters no running request holds
    kv_available_pages: int  # what a KV allocation could get right now (after evictions)
    reserved_pages: int  # lru slots; 0 for the idle-memory policies
    cached_adapters: tuple[str, ...]
    loading_adapters: tuple[str, ...]
    hits: int
    misses: int
    evictions: int
    loads: int
    bytes_loaded: int
    critical_load_s_total: float
    critical_load_count: int

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


def _adapter_owner(adapter_id: str) -> str:
    return f"adapter:{adapter_id}"


def _kv_owner(owner: str) -> str:
    return f"kv:{owner}"


class AdapterCache:
    def __init__(self, pool: PagePool, config: CacheConfig, clock: Callable[[], float],
                 on_evict: Callable[[str], None] | None = None):
        self.pool = pool
        self.config = config
        self.policy = build_policy(config)
        self.placement = self.policy.placement
        self.clock = clock
        self.on_evict = on_evict
        if self.policy.reserved_pages > pool.num_pages:
            raise ValueError(f"lru slots need {self.policy.reserved_pages} pages; the pool has "
                             f"{pool.num_pages}")
        self._entries: dict[str, AdapterEntry] = {}
        self._uses: dict[str, deque[float]] = {}
        self._queued: frozenset[str] = frozenset()
        self._hinted: frozenset[str] = frozenset()
        self._kv_owners: dict[str, int] = {}
        self._kv_pages = 0
        self.hits = self.misses = self.evictions = self.loads = self.bytes_loaded = 0
        self.critical_load_s_total = 0.0
        self.critical_load_count = 0

    # -- queries ----------------------------------------------------------
    def is_resident(self, adapter_id: str) -> bool:
        e = self._entries.get(adapter_id)
        return e is not None and e.loaded

    def is_loading(self, adapter_id: str) -> bool:
        e = self._entries.get(adapter_id)
        return e is not None and not e.loaded

    def entry(self, adapter_id: str) -> AdapterEntry | None:
        return self._entries.get(adapter_id)

    def adapter_ids(self) -> list[str]:
        """Adapters cached or loading."""
        return list(self._entries)

    @property
    def num_adapters(self) -> int:
        """Adapters cached or loading."""
        return len(self._entries)

    def pages_of(self, adapter_id: str) -> list[int]:
        return list(self._entries[adapter_id].pages)

    @property
    def kv_pages(self) -> int:
        """Pages held by KV owners (running requests) right now."""
        return self._kv_pages

    def kv_pages_of(self, owner: str) -> list[int]:
        return self.pool.pages_of(_kv_owner(owner))

    def uses_in_window(self, adapter_id: str) -> int:
        uses = self._uses.get(adapter_id)
        if not uses:
            return 0
        horizon = self.clock() - self.config.frequency_window_s
        while uses and uses[0] < horizon:
            uses.popleft()
        return len(uses)

    def idle_adapter_pages(self, keep: Collection[str] = ()) -> int:
        return sum(len(e.pages) for e in self._idle(keep))

    def kv_available_pages(self, keep: Collection[str] = ()) -> int:
        return self.placement.kv_available(self, keep)

    def lookup(self, adapter_id: str) -> bool:
        """Count one arriving request's hit (loaded now) or miss."""
        hit = self.is_resident(adapter_id)
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        return hit

    # -- adapters ---------------------------------------------------------
    def set_queued_demand(self, adapter_ids: Iterable[str], hinted: Iterable[str] = ()) -> None:
        """The adapters queued (not yet running) requests want, and those the scheduler hinted
        its queues will want soon; replaces the previous sets."""
        self._queued = frozenset(adapter_ids)
        self._hinted = frozenset(hinted) - self._queued
        if not self.policy.keep_idle:
            for e in list(self._entries.values()):
                self._drop_if_unwanted(e)

    def reserve_for_load(self, adapter_id: str, n_pages: int, *, digest: str, nbytes: int,
                         rank: int = 0, keep: Collection[str] = (),
                         may_evict: bool = True) -> list[int] | None:
        """Pages for a missing adapter (it becomes 'loading'), evicting idle adapters as needed.

        None, with nothing evicted, when it cannot fit (everything else is held,
        loading or in `keep`). `may_evict=False` uses free pages only (speculative
        prefetch). A cached copy with another digest is replaced if idle.
        """
        if n_pages <= 0 or nbytes < 0:
            raise ValueError("n_pages must be positive and nbytes >= 0")
        old = self._entries.get(adapter_id)
        if old is not None:
            if old.digest == digest:
                raise ValueError(f"adapter {adapter_id!r} is already {'loaded' if old.loaded else 'loading'}")
            if old.holders or not old.loaded:
                raise ValueError(f"adapter {adapter_id!r} changed digest while in use")
            self._remove(old, count_eviction=True)
        keep = set(keep) | {adapter_id}
        try:
            if not self.placement.room_for_adapter(self, n_pages, keep, may_evict):
                return None
        except ValueError as e:
            raise ValueError(f"adapter {adapter_id!r}: {e}") from None
        pages = self.pool.allocate(_adapter_owner(adapter_id), n_pages)
        if pages is None:  # cannot happen: room was made above
            raise RuntimeError("page pool refused pages the cache had made room for")
        self._entries[adapter_id] = AdapterEntry(adapter_id, digest, rank, pages, nbytes,
                                                 last_use=self.clock())
        return list(pages)

    def mark_loaded(self, adapter_id: str) -> None:
        e = self._entries.get(adapter_id)
        if e is None or e.loaded:
            raise ValueError(f"adapter {adapter_id!r} is not loading")
        e.loaded = True
        e.ready_at = self.clock()
        self.loads += 1
        self.bytes_loaded += e.nbytes

    def cancel_load(self, adapter_id: str) -> None:
        """A load failed: give its pages back."""
        e = self._entries.get(adapter_id)
        if e is None or e.loaded:
            raise ValueError(f"adapter {adapter_id!r} is not loading")
        self._remove(e, count_eviction=False)

    def acquire(self, adapter_id: str, request_id: str, wanted_at: float | None = None) -> float:
        """A request starts running on a loaded adapter; returns its adapter wait in seconds.

        The wait on the request's critical path is how long after `wanted_at` (the
        moment the request could have started but for its adapter) the adapter
        finished loading; 0 if it was already loaded or `wanted_at` is None.
        """
        e = self._entries.get(adapter_id)
        if e is None or not e.loaded:
            raise ValueError(f"adapter {adapter_id!r} is not loaded")
        if request_id in e.holders:
            raise ValueError(f"request {request_id!r} already holds adapter {adapter_id!r}")
        now = self.clock()
        e.holders.add(request_id)
        e.last_use = now
        self._uses.setdefault(adapter_id, deque()).append(now)
        wait = 0.0
        if wanted_at is not None and e.ready_at is not None:
            wait = max(0.0, e.ready_at - wanted_at)
        self.critical_load_s_total += wait
        self.critical_load_count += 1
        return wait

    def release(self, adapter_id: str, request_id: str) -> None:
        e = self._entries.get(adapter_id)
        if e is None or request_id not in e.holders:
            raise KeyError(f"request {request_id!r} holds no reference to adapter {adapter_id!r}")
        e.holders.remove(request_id)
        e.last_use = self.clock()
        if not self.policy.keep_idle:
            self._drop_if_unwanted(e)

    def flush(self) -> list[str]:
        """Drop every idle cached adapter (not counted as evictions); returns their ids."""
        idle = self._idle(())
        for e in idle:
            self._remove(e, count_eviction=False)
        return [e.adapter_id for e in idle]

    # -- KV blocks ------------------------------------------------------------
    def allocate_kv(self, owner: str, n_pages: int, keep: Collection[str] = ()) -> list[int] | None:
        """n more pages for `owner` (a request's KV blocks).

        Evicts idle adapters (not those in `keep`) when free pages are short; None,
        with nothing evicted, only when free plus evictable pages do not suffice.
        """
        if n_pages < 0:
            raise ValueError(f"cannot allocate {n_pages} pages")
        if not self.placement.room_for_kv(self, n_pages, keep):
            return None
        pages = self.pool.allocate(_kv_owner(owner), n_pages)
        if pages is None:
            raise RuntimeError("page pool refused pages the cache had made room for")
        self._kv_owners[owner] = self._kv_owners.get(owner, 0) + n_pages
        self._kv_pages += n_pages
        return pages

    def free_kv(self, owner: str) -> int:
        n = len(self.pool.free_owner(_kv_owner(owner)))
        self._kv_pages -= n
        self._kv_owners.pop(owner, None)
        return n

    def ensure_free(self, n_pages: int, keep: Collection[str] = ()) -> bool:
        """Evict idle adapters until n_pages are free; False, evicting nothing, if that is
        impossible. Victims go by tier (nobody wants it, hinted, wanted by queued requests),
        within a tier in the policy's order."""
        if self.pool.num_free >= n_pages:
            return True
        idle = self._idle(keep)
        if self.pool.num_free + sum(len(e.pages) for e in idle) < n_pages:
            return False
        for tier in self._tiers(idle):
            for victim in self._victims(tier):
                if self.pool.num_free >= n_pages:
                    return True
                self._remove(victim, count_eviction=True)
        return self.pool.num_free >= n_pages

    # -- stats and checks ------------------------------------------------
    def stats(self) -> CacheStats:
        loaded = tuple(sorted(a for a, e in self._entries.items() if e.loaded))
        loading = tuple(sorted(a for a, e in self._entries.items() if not e.loaded))
        return CacheStats(
            total_pages=self.pool.num_pages, free_pages=self.pool.num_free, kv_pages=self._kv_pages,
            adapter_pages=sum(len(e.pages) for e in self._entries.values()),
            idle_adapter_pages=self.idle_adapter_pages(), kv_available_pages=self.kv_available_pages(),
            reserved_pages=self.policy.reserved_pages, cached_adapters=loaded, loading_adapters=loading,
            hits=self.hits, misses=self.misses, evictions=self.evictions, loads=self.loads,
            bytes_loaded=self.bytes_loaded, critical_load_s_total=self.critical_load_s_total,
            critical_load_count=self.critical_load_count)

    def check(self) -> None:
        """Raise ValueError if pool and cache bookkeeping disagree (tests, debugging)."""
        self.pool.check()
        for a, e in self._entries.items():
            if sorted(self.pool.pages_of(_adapter_owner(a))) != sorted(e.pages):
                raise ValueError(f"adapter {a!r} pages disagree with the pool")
            if e.holders and not e.loaded:
                raise ValueError(f"adapter {a!r} is held while still loading")
        kv = sum(self.pool.count_of(_kv_owner(o)) for o in self._kv_owners)
        if kv != self._kv_pages or kv != sum(self._kv_owners.values()):
            raise ValueError("KV page count disagrees with the pool")
        self.placement.check(self)

    # -- internals --------------------------------------------------------
    def _idle(self, keep: Collection[str]) -> list[AdapterEntry]:
        return [e for e in self._entries.values()
                if e.loaded and not e.holders and e.adapter_id not in keep]

    def _victims(self, entries: list[AdapterEntry]) -> list[AdapterEntry]:
        now = self.clock()
        cands = [Candidate(e.adapter_id, len(e.pages), e.last_use, self.uses_in_window(e.adapter_id))
                 for e in entries]
        return [self._entries[c.adapter_id] for c in self.policy.order.order(cands, now)]

    def _tiers(self, idle: list[AdapterEntry]) -> tuple[list[AdapterEntry], ...]:
        """Idle adapters by how much they are wanted: nobody, a scheduler hint, a queued request."""
        return ([e for e in idle if e.adapter_id not in self._queued | self._hinted],
                [e for e in idle if e.adapter_id in self._hinted],
                [e for e in idle if e.adapter_id in self._queued])

    def evict_next(self, keep: Collection[str] = ()) -> bool:
        """Evict the one idle adapter (not in `keep`) that goes first; False if there is none."""
        for tier in self._tiers(self._idle(keep)):
            if tier:
                self._remove(self._victims(tier)[0], count_eviction=True)
                return True
        return False

    def _drop_if_unwanted(self, e: AdapterEntry) -> None:
        if (e.loaded and not e.holders and e.adapter_id not in self._queued
                and e.adapter_id not in self._hinted):
            self._remove(e, count_eviction=True)

    def _remove(self, e: AdapterEntry, *, count_eviction: bool) -> None:
        """The one place an adapter leaves the cache."""
        self.pool.free_owner(_adapter_owner(e.adapter_id))
        del self._entries[e.adapter_id]
        if count_eviction:
            self.evictions += 1
        if self.on_evict is not None:
            self.on_evict(e.adapter_id)
