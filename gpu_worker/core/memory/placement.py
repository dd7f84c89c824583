"""Where cached adapters may live, as small policy classes (no torch).

Ordering (eviction.py: which idle adapter goes next) is separate from placement
(this module: how much room an adapter or a KV allocation has, and what must go
to make it). The adapter cache calls its placement for every allocation.

- `SharedPages`: the idle-memory policies (`slora` and the `chameleon*` family).
  Adapters and KV take pages from one free list; an idle adapter's pages count
  as available to KV and are evicted on demand.
- `FixedSlots`: vLLM-style `lru`. `slots` slots of `slot_pages` pages each are
  set aside out of the pool whether used or not; KV can never use them and a
  new adapter needs a free slot (or evicts one idle adapter for it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Collection, Protocol

if TYPE_CHECKING:
    from .adapter_cache import AdapterCache


class Placement(Protocol):
    name: str
    reserved_pages: int       # set aside for adapters, never available to KV
    pins_take_kv_room: bool   # does holding an adapter take pages KV could use?

    def max_adapter_pages(self, pool_pages: int) -> int:
        """The most pages one adapter can ever get."""
        ...

    def kv_available(self, cache: AdapterCache, keep: Collection[str]) -> int:
        """Pages a KV allocation could get now (evicting idle adapters not in `keep`)."""
        ...

    def room_for_adapter(self, cache: AdapterCache, n_pages: int, keep: Collection[str],
                         may_evict: bool) -> bool:
        """Make room for an adapter of n_pages (evicting if allowed); False, evicting
        nothing, when that is impossible."""
        ...

    def room_for_kv(self, cache: AdapterCache, n_pages: int, keep: Collection[str]) -> bool:
        ...

    def check(self, cache: AdapterCache) -> None:
        """Raise ValueError if the cache breaks this placement's invariants."""
        ...


class SharedPages:
    name = "shared"
    reserved_pages = 0
    pins_take_kv_room = True

    def max_adapter_pages(self, pool_pages: int) -> int:
        return pool_pages

    def kv_available(self, cache: AdapterCache, keep: Collection[str]) -> int:
        return cache.pool.num_free + cache.idle_adapter_pages(keep)

    def room_for_adapter(self, cache: AdapterCache, n_pages: int, keep: Collection[str],
                         may_evict: bool) -> bool:
        return cache.ensure_free(n_pages, keep) if may_evict else cache.pool.num_free >= n_pages

    def room_for_kv(self, cache: AdapterCache, n_pages: int, keep: Collection[str]) -> bool:
        return cache.ensure_free(n_pages, keep)

    def check(self, cache: AdapterCache) -> None:
        pass


class FixedSlots:
    name = "slots"
    pins_take_kv_room = False

    def __init__(self, slots: int, slot_pages: int):
        if slots <= 0 or slot_pages <= 0:
            raise ValueError(f"slots and slot_pages must be positive, got {slots}, {slot_pages}")
        self.slots = slots
        self.slot_pages = slot_pages
        self.reserved_pages = slots * slot_pages

    def max_adapter_pages(self, pool_pages: int) -> int:
        return self.slot_pages

    def kv_available(self, cache: AdapterCache, keep: Collection[str]) -> int:
        return cache.pool.num_pages - self.reserved_pages - cache.kv_pages

    def room_for_adapter(self, cache: AdapterCache, n_pages: int, keep: Collection[str],
                         may_evict: bool) -> bool:
        if n_pages > self.slot_pages:
            raise ValueError(f"an adapter of {n_pages} pages does not fit a slot of "
                             f"{self.slot_pages}")
        if cache.num_adapters < self.slots:
            return True
        return may_evict and cache.evict_next(keep)

    def room_for_kv(self, cache: AdapterCache, n_pages: int, keep: Collection[str]) -> bool:
        return n_pages <= self.kv_available(cache, keep)

    def check(self, cache: AdapterCache) -> None:
        if cache.num_adapters > self.slots:
            raise ValueError("more adapters than lru slots")
        if cache.kv_pages > cache.pool.num_pages - self.reserved_pages:
            raise ValueError("KV pages spill into the lru slots")
