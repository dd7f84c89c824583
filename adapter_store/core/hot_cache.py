"""A bounded (bytes) host-memory cache of hot adapter files, least recently used out.

Keyed by (adapter digest, file name): a digest names content, so an entry can
never be stale; a new version or an edited plain adapter has another digest.
A file larger than the whole budget is never cached.
"""
from __future__ import annotations

from collections import OrderedDict


class HotCache:
    def __init__(self, capacity_bytes: int):
        if capacity_bytes < 0:
            raise ValueError("the hot cache capacity must be >= 0")
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.hits = self.misses = self.evictions = 0
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def get(self, digest: str, name: str) -> bytes | None:
        data = self._entries.get((digest, name))
        if data is None:
            self.misses += 1
            return None
        self._entries.move_to_end((digest, name))
        self.hits += 1
        return data

    def put(self, digest: str, name: str, data: bytes) -> bool:
        key = (digest, name)
        if len(data) > self.capacity_bytes:
            return False
        if key in self._entries:
            self._entries.move_to_end(key)
            return True
        while self.used_bytes + len(data) > self.capacity_bytes:
            _, old = self._entries.popitem(last=False)
            self.used_bytes -= len(old)
            self.evictions += 1
        self._entries[key] = data
        self.used_bytes += len(data)
        return True

    def drop(self, digest: str) -> None:
        for key in [k for k in self._entries if k[0] == digest]:
            self.used_bytes -= len(self._entries.pop(key))

    def __len__(self) -> int:
        return len(self._entries)
