"""The scheduler's cache of adapter metadata (what the store's StatAdapter says).

Without it the store is a single point of failure: when it cannot be reached, a
stale entry may still be used, but only for an adapter some worker holds already
(that worker does not need the store to serve it) and no older than
`max_stale_s`; see `usable_while_store_down`. Entries are fresh for `ttl_s`, and
a fresh entry saves the round trip to the store. A name can be deleted or re-pushed
in the store's registry; the scheduler follows the store's WatchAdapters stream
(scheduler_svc/store_watch.py) and invalidates such names at once, and clears the
cache whenever that stream reconnects, so a positive TTL only bounds changes made
to the objects behind the store's back. The default TTL is 0 (every request asks
the store while it is up; the store answers from its own listing cache, within its
--stat-ttl-s, without an object-store round trip), and stale entries serve adapters
some worker holds while the store is away.

Invalidation: `invalidate(id)` drops an entry (the store said NOT_FOUND, a worker's
fetch failed with NOT_FOUND / DATA_LOSS / FAILED_PRECONDITION, or an operator pushed
a new version); `put` replaces it (a changed digest replaces the old record).
Pure: no grpc, injected clock.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from .types import Clock

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    value: T
    stored_at: float


class AdapterMetaCache(Generic[T]):
    def __init__(self, clock: Clock, ttl_s: float = 30.0, max_entries: int = 4096,
                 max_stale_s: float = 600.0):
        if ttl_s < 0 or max_stale_s < 0:
            raise ValueError(f"ttl_s and max_stale_s must be >= 0, got {ttl_s}, {max_stale_s}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.clock = clock
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()
        self.hits = self.misses = self.stale_served = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self._entries

    def fresh(self, adapter_id: str) -> T | None:
        """The entry if it is younger than the TTL, else None (the caller asks the store)."""
        e = self._entries.get(adapter_id)
        if e is None or self.clock() - e.stored_at >= self.ttl_s:
            self.misses += 1
            return None
        self._entries.move_to_end(adapter_id)
        self.hits += 1
        return e.value

    def stale(self, adapter_id: str) -> T | None:
        """The entry whatever its age (for when the store is down), else None."""
        e = self._entries.get(adapter_id)
        return None if e is None else e.value

    def usable_while_store_down(self, adapter_id: str, resident_anywhere: bool) -> T | None:
        """A stale entry may serve a request only when a worker already holds the adapter,
        and only up to `max_stale_s` after the store last vouched for it."""
        e = self._entries.get(adapter_id)
        if e is None or not resident_anywhere or self.clock() - e.stored_at > self.max_stale_s:
            return None
        self.stale_served += 1
        return e.value

    def put(self, adapter_id: str, value: T) -> None:
        self._entries[adapter_id] = _Entry(value, self.clock())
        self._entries.move_to_end(adapter_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, adapter_id: str) -> bool:
        return self._entries.pop(adapter_id, None) is not None

    def clear(self) -> None:
        self._entries.clear()

    def metrics(self) -> dict[str, float]:
        return {"adapter_meta_entries": float(len(self._entries)), "adapter_meta_hits": float(self.hits),
                "adapter_meta_misses": float(self.misses),
                "adapter_meta_stale_served": float(self.stale_served)}
