"""Owner-tracking page allocator for the unified pool (no torch).

Every page is either free or owned by exactly one owner, a string such as
"kv:<request>" or "adapter:<id>". Allocation is all-or-nothing, so a failed
request never leaves a half-allocated owner behind. The torch side keeps one
tensor per layer indexed by these page ids; this class only decides ids.
"""
from __future__ import annotations


class PagePool:
    def __init__(self, num_pages: int):
        if num_pages <= 0:
            raise ValueError(f"num_pages must be positive, got {num_pages}")
        self.num_pages = num_pages
        self._owner: list[str | None] = [None] * num_pages
        # a stack popped from the end: low page ids are handed out first
        self._free: list[int] = list(range(num_pages - 1, -1, -1))
        self._by_owner: dict[str, list[int]] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self._free)

    def allocate(self, owner: str, n: int) -> list[int] | None:
        """Give `owner` n more pages, or None (and nothing) when fewer than n are free."""
        if not owner:
            raise ValueError("owner must not be empty")
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > len(self._free):
            return None
        pages = [self._free.pop() for _ in range(n)]
        for p in pages:
            self._owner[p] = owner
        self._by_owner.setdefault(owner, []).extend(pages)
        return pages

    def free_owner(self, owner: str) -> list[int]:
        """Return all of `owner`'s pages to the free list; [] if it owns none."""
        pages = self._by_owner.pop(owner, [])
        for p in pages:
            self._owner[p] = None
        # pushed in reverse so the owner's first page is reused first
        self._free.extend(reversed(pages))
        return pages

    def pages_of(self, owner: str) -> list[int]:
        return list(self._by_owner.get(owner, ()))

    def count_of(self, owner: str) -> int:
        return len(self._by_owner.get(owner, ()))

    def owner_of(self, page: int) -> str | None:
        return self._owner[page]

    def owners(self) -> list[str]:
        return list(self._by_owner)

    def check(self) -> None:
        """Raise ValueError if the bookkeeping is inconsistent (for tests and debugging)."""
        seen: dict[int, str] = {}
        for owner, pages in self._by_owner.items():
            for p in pages:
                if p in seen:
                    raise ValueError(f"page {p} owned by {seen[p]!r} and {owner!r}")
                if self._owner[p] != owner:
                    raise ValueError(f"page {p} listed for {owner!r} but marked {self._owner[p]!r}")
                seen[p] = owner
        free = set(self._free)
        if len(free) != len(self._free):
            raise ValueError("a page is on the free list twice")
        if free & seen.keys():
            raise ValueError(f"pages both free and owned: {sorted(free & seen.keys())}")
        if len(free) + len(seen) != self.num_pages:
            raise ValueError("some pages are neither free nor owned")
