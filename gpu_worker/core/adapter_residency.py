"""Which adapters are resident on this worker (the pre-pool S-LoRA-style cache).

Tracks loading/ready state, a refcount of running requests and LRU order;
idle adapters beyond `capacity` are dropped least-recently-used first, and an
adapter with running requests is never dropped. The unified memory pool
(issue #3) replaces the fixed capacity with idle KV pages.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass
class ResidencyStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_loaded: int = 0


@dataclass
class _Entry(Generic[T]):
    value: T | None = None
    size_bytes: int = 0
    refs: int = 0
    last_use: float = 0.0


class AdapterResidency(Generic[T]):
    def __init__(self, capacity: int, clock: Callable[[], float]):
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self.clock = clock
        self._ready: OrderedDict[str, _Entry[T]] = OrderedDict()
        self.loading: set[str] = set()
        self.stats = ResidencyStats()

    def get(self, adapter_id: str) -> T | None:
        e = self._ready.get(adapter_id)
        return None if e is None else e.value

    def acquire(self, adapter_id: str) -> bool:
        """Take a reference for a request; False (a miss) when the adapter must be loaded."""
        e = self._ready.get(adapter_id)
        if e is None:
            self.stats.misses += 1
            return False
        self.stats.hits += 1
        e.refs += 1
        e.last_use = self.clock()
        self._ready.move_to_end(adapter_id)
        return True

    def insert(self, adapter_id: str, value: T, size_bytes: int, refs: int) -> None:
        """A load finished; `refs` requests were waiting for it."""
        self.loading.discard(adapter_id)
        self._ready[adapter_id] = _Entry(value, size_bytes, refs, self.clock())
        self.stats.bytes_loaded += size_bytes
        self._shrink()

    def release(self, adapter_id: str) -> None:
        e = self._ready.get(adapter_id)
        if e is None or e.refs <= 0:
            raise KeyError(f"release of adapter {adapter_id!r} that holds no reference")
        e.refs -= 1
        self._shrink()

    def _shrink(self) -> None:
        idle = [k for k, e in self._ready.items() if e.refs == 0]  # LRU first
        while len(self._ready) > self.capacity and idle:
            del self._ready[idle.pop(0)]
            self.stats.evictions += 1

    def resident(self) -> list[str]:
        return list(self._ready)

    def idle_bytes(self) -> int:
        return sum(e.size_bytes for e in self._ready.values() if e.refs == 0)
