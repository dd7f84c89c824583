"""A torch-free stand-in for the unified pool: same pages, same layouts, modelled copies.

Used by the discrete-event simulator (`sim/`) and by the `--sim-profile` worker,
which run the real `WorkerMemory`, `AdapterCache`, `PagePool` and batch planner
without a model. Page ids and adapter layouts are computed exactly as for the
real pool (geometry.py, layout.py), so a rank-r adapter takes the same pages as
it would on the device; only the bytes are not moved. An install is ready when
its modelled host-to-device copy has finished on the injected clock.

Typical use (the simulator drives the clock)::

    cfg = LLAMA_7B
    link = SharedLink(clock, copy_s=lambda nbytes: nbytes / 25e9)
    pool = SimPool.for_model(cfg, num_pages=4000, block_size=16, link=link)
    memory = WorkerMemory(pool, CacheConfig("chameleon"), clock)
    adapter = SimAdapter.for_model("a1", rank=16, cfg=cfg)     # q/k/v/o, fp16
    ... memory.staged(adapter) ...  # the copy lands at link.free_at; memory.poll() then
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

from chameleon_common.model_config import ATTENTION_MODULES, LlamaConfig
from .geometry import page_bytes_for, row_geometry
from .layout import AdapterLayout, AdapterShape, PageGeometry, layout_adapter

# LLaMA-7B (Touvron et al. 2023, Table 2: dim 4096, 32 heads, 32 layers; FFN 11008; 32k vocab)
LLAMA_7B = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                       num_heads=32, num_kv_heads=32, head_dim=128, max_position_embeddings=2048,
                       bos_token_id=1, eos_token_ids=[2])


@dataclass(frozen=True)
class SimAdapter:
    """An adapter described, not loaded: what `WorkerMemory` needs to place it (storage.py's
    `StagedWeights`). `nbytes` is what crosses the host-to-device link."""

    adapter_id: str
    rank: int
    nbytes: int
    shape: AdapterShape
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.adapter_id:
            raise ValueError("adapter_id must not be empty")
        if self.rank <= 0 or self.nbytes < 0:
            raise ValueError(f"rank must be positive and nbytes >= 0: {self.rank}, {self.nbytes}")

    @classmethod
    def for_model(cls, adapter_id: str, rank: int, cfg: LlamaConfig,
                  modules: Iterable[str] = ATTENTION_MODULES, element_bytes: int = 2,
                  digest: str = "") -> SimAdapter:
        """A rank-`rank` adapter on `modules` of every layer of `cfg` (default q/k/v/o, the
        paper's and S-LoRA's adapters), weights of `element_bytes` bytes (2: fp16/bf16)."""
        dims = cfg.module_shapes()
        unknown = [m for m in modules if m not in dims]
        if unknown:
            raise ValueError(f"unknown modules {unknown}; choose from {sorted(dims)}")
        shape = AdapterShape.uniform(cfg.num_layers, rank, {m: dims[m] for m in modules})
        return cls(adapter_id, rank, shape.weight_elements() * element_bytes, shape,
                   digest or f"sim:{adapter_id}:r{rank}")


class SharedLink:
    """One host-to-device link: copies run one after another in the order they were started,
    each taking `copy_s(nbytes)` seconds of the injected clock."""

    def __init__(self, clock: Callable[[], float], copy_s: Callable[[int], float]):
        self.clock = clock
        self.copy_s = copy_s
        self.free_at = -math.inf   # when the copy started last finishes

    def schedule(self, nbytes: int) -> float:
        """Queue a copy of `nbytes`; returns the time it finishes."""
        seconds = self.copy_s(nbytes)
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"copy time must be finite and >= 0, got {seconds}")
        self.free_at = max(self.clock(), self.free_at) + seconds
        return self.free_at


class SimInstall:
    """An adapter placed in pages; ready once the clock reaches `ready_at`."""

    def __init__(self, adapter_id: str, clock: Callable[[], float], ready_at: float):
        self.adapter_id = adapter_id
        self.ready_at = ready_at
        self._clock = clock

    def is_ready(self) -> bool:
        return self._clock() >= self.ready_at


class SimPool:
    """storage.py's `PoolStorage` without memory behind it. `link` is anything with
    `schedule(nbytes) -> finish time` and a `clock` (a `SharedLink`, or the simulator's own)."""

    def __init__(self, num_pages: int, geometry: PageGeometry, link: SharedLink,
                 page_bytes: int = 0):
        if num_pages <= 0:
            raise ValueError(f"num_pages must be positive, got {num_pages}")
        self.num_pages = num_pages
        self.geometry = geometry
        self.link = link
        self.page_bytes = page_bytes
        self._layouts: dict[AdapterShape, AdapterLayout] = {}
        self.installs: list[SimInstall] = []   # in flight, oldest first (see next_ready_at)

    @classmethod
    def for_model(cls, cfg: LlamaConfig, num_pages: int, block_size: int, link: SharedLink,
                  element_bytes: int = 2) -> SimPool:
        """Pages of `block_size` tokens of `cfg`'s KV, as the real pool would have them."""
        return cls(num_pages, row_geometry(cfg, block_size), link,
                   page_bytes_for(cfg, block_size, element_bytes))

    def layout(self, adapter) -> AdapterLayout:
        shape = adapter.shape
        if shape not in self._layouts:  # same shape, same layout: computed once
            self._layouts[shape] = layout_adapter(self.geometry, shape)
        return self._layouts[shape]

    def install(self, adapter, layout: AdapterLayout, page_ids: list[int]) -> SimInstall:
        if len(page_ids) != layout.num_pages:
            raise ValueError(f"layout needs {layout.num_pages} pages, got {len(page_ids)}")
        inst = SimInstall(adapter.adapter_id, self.link.clock, self.link.schedule(adapter.nbytes))
        self.installs = [i for i in self.installs if not i.is_ready()] + [inst]
        return inst

    def next_ready_at(self) -> float | None:
        """When the next copy still in flight lands (None: none is); a simulator's next event."""
        pending = [i.ready_at for i in self.installs if not i.is_ready()]
        return min(pending) if pending else None
