"""What the worker's memory needs from the storage behind the page ids (no torch).

`WorkerMemory` decides which pages hold what; a `PoolStorage` moves the bytes.
Two implementations:

- `gpu_worker.core.unified_pool.UnifiedPool` (torch): the real pool tensor; its
  installs copy weights into pages (asynchronously on a CUDA side stream);
- `gpu_worker.core.memory.sim_pool.SimPool` (no torch): the simulator's and the
  `--sim-profile` worker's stand-in; an install is ready when the modelled
  host-to-device copy has finished on the injected clock.

An adapter handed to `install` is anything with the `StagedWeights` fields: the
torch side's `StagedAdapter` (real tensors) or `SimAdapter` (a description only).
"""
from __future__ import annotations

from typing import Protocol

from .layout import AdapterLayout, AdapterShape


class StagedWeights(Protocol):
    """An adapter in host memory, about to be copied into pool pages."""

    @property
    def adapter_id(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def nbytes(self) -> int: ...       # bytes that cross the host-to-device link
    @property
    def rank(self) -> int: ...         # the largest rank over its modules
    @property
    def shape(self) -> AdapterShape: ...


class InstalledAdapter(Protocol):
    """An adapter's place in the pool; usable once `is_ready()` (its copy has landed)."""

    @property
    def adapter_id(self) -> str: ...
    def is_ready(self) -> bool: ...


class PoolStorage(Protocol):
    @property
    def num_pages(self) -> int: ...

    def layout(self, adapter: StagedWeights) -> AdapterLayout:
        """Where the adapter's rows go inside the pages it gets (layout.py)."""
        ...

    def install(self, adapter: StagedWeights, layout: AdapterLayout,
                page_ids: list[int]) -> InstalledAdapter:
        """Start copying the adapter into `page_ids` (len == layout.num_pages)."""
        ...
