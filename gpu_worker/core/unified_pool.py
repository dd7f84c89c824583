"""The torch side of the unified memory pool.

One tensor [num_layers, num_pages, page_elems] backs both the paged KV cache
(each page = `block_size` tokens of K and V in every layer) and cached LoRA
adapters (each page = `rows_per_page` rows of `row_width` elements per layer,
see memory/layout.py). Which page belongs to whom is decided by the pure
Python cache manager; this module only moves bytes and gathers rows.

LoRA compute reads an adapter where it sits: `PooledLora` keeps, per (layer,
module), the (page, slot) of every row of A and of B^T, and `PooledLoraBatch`
gathers those rows for the step's matmuls. Nothing is copied into a
per-adapter contiguous buffer that outlives the step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .memory.layout import (AdapterLayout, AdapterShape, LoraModuleShape, PageGeometry,
                            layout_adapter)
from .model_config import LlamaConfig


def row_geometry(cfg: LlamaConfig, block_size: int) -> PageGeometry:
    """Slots as wide as the longest LoRA row, as many as a KV page holds."""
    page_elems = 2 * block_size * cfg.num_kv_heads * cfg.head_dim
    longest = max(max(i, o) for i, o in cfg.module_shapes().values())
    rows = page_elems // longest
    if rows == 0:
        raise ValueError(f"a KV page of {block_size} tokens ({page_elems} elements per layer) cannot "
                         f"hold a LoRA row of {longest} elements: raise --block-size to at least "
                         f"{-(-longest // (2 * cfg.num_kv_heads * cfg.head_dim))}")
    return PageGeometry(rows_per_page=rows, row_width=page_elems // rows)


@dataclass
class StagedAdapter:
    """An adapter's weights in host memory, ready to be copied into pool pages."""
    adapter_id: str
    digest: str
    shape: AdapterShape
    # (layer, module) -> (A [r, in], B [out, r], scale)
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]]
    nbytes: int

    @property
    def rank(self) -> int:
        return max(m.rank for m in self.shape.modules)


def stage_adapter(adapter, cfg: LlamaConfig, digest: str = "") -> StagedAdapter:
    """Host-side staging of a parsed `LoraAdapter` (CPU tensors; pinned when CUDA runs)."""
    pin = torch.cuda.is_available()
    weights = {}
    for key, w in adapter.weights.items():
        a, b = w.a.contiguous(), w.b.contiguous()
        weights[key] = ((a.pin_memory(), b.pin_memory()) if pin else (a, b)) + (w.scale,)
    return StagedAdapter(adapter.adapter_id, digest, adapter_shape(cfg, weights), weights,
                         adapter.nbytes)


def adapter_shape(cfg: LlamaConfig, weights: dict[tuple[int, str], tuple]) -> AdapterShape:
    dims = cfg.module_shapes()
    by_module: dict[tuple[str, int], list[int]] = {}
    for (layer, module), (a, _b, _s) in weights.items():
        by_module.setdefault((module, int(a.shape[0])), []).append(layer)
    # one LoraModuleShape per (module, rank) group; rank_pattern can give a module several ranks
    modules = []
    for (module, rank), layers in sorted(by_module.items()):
        i, o = dims[module]
        modules.append(LoraModuleShape(module, rank, i, o, tuple(sorted(layers))))
    return AdapterShape(cfg.num_layers, tuple(modules))


@dataclass
class _Rows:
    pages: torch.Tensor   # [r] page id of each row
    slots: torch.Tensor   # [r] slot within the page
    width: int            # in_features (A) or out_features (B^T)


class PooledLora:
    """Row tables of one resident adapter: where each row of A and B^T lives in the pool."""

    def __init__(self, adapter_id: str, tables: dict[tuple[int, str], tuple[_Rows, _Rows, float]]):
        self.adapter_id = adapter_id
        self.tables = tables


class UnifiedPool:
    def __init__(self, cfg: LlamaConfig, num_pages: int, block_size: int, device: torch.device,
                 dtype: torch.dtype):
        if num_pages <= 0:
            raise ValueError("num_pages must be positive")
        self.cfg, self.num_pages, self.block_size = cfg, num_pages, block_size
        self.device, self.dtype = torch.device(device), dtype
        self.page_elems = 2 * block_size * cfg.num_kv_heads * cfg.head_dim
        self.storage = torch.zeros(cfg.num_layers, num_pages, self.page_elems, device=device, dtype=dtype)
        self.geometry = row_geometry(cfg, block_size)
        g = self.geometry
        E = self.page_elems
        # [layer, page, slot, element]: a strided view, so writes land in the shared storage
        self.rows = self.storage.as_strided((cfg.num_layers, num_pages, g.rows_per_page, g.row_width),
                                            (num_pages * E, E, g.row_width, 1))

    @property
    def page_bytes(self) -> int:
        return self.cfg.num_layers * self.page_elems * self.storage.element_size()

    def layout(self, staged: StagedAdapter) -> AdapterLayout:
        return layout_adapter(self.geometry, staged.shape)

    def install(self, staged: StagedAdapter, layout: AdapterLayout, page_ids: list[int],
                stream: "torch.cuda.Stream | None" = None) -> PooledLora:
        """Copy the staged weights into their pages; returns the adapter's row tables."""
        tables = {}
        ctx = torch.cuda.stream(stream) if stream is not None else _nullctx()
        with ctx:
            for (layer, module), (a, b, scale) in staged.weights.items():
                rows = {}
                for matrix, w in (("A", a), ("B", b.t())):
                    slots = layout.slots(layer, module, matrix) if (layer, module, matrix) in layout.runs \
                        else None
                    if slots is None:
                        raise ValueError(f"layout lacks {module} {matrix} in layer {layer}")
                    pages = torch.tensor([page_ids[p] for p, _ in slots], device=self.device)
                    offs = torch.tensor([o for _, o in slots], device=self.device)
                    width = w.shape[1]
                    self.rows[layer, pages, offs, :width] = w.to(device=self.device, dtype=self.dtype,
                                                                  non_blocking=True)
                    rows[matrix] = _Rows(pages, offs, width)
                tables[(layer, module)] = (rows["A"], rows["B"], scale)
        if stream is not None:
            stream.synchronize()
        return PooledLora(staged.adapter_id, tables)

    def gather(self, layer: int, rows: _Rows) -> torch.Tensor:
        """The rows of one matrix, [r, width], read from the pool pages."""
        return self.rows[layer, rows.pages, rows.slots, :rows.width]


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class PooledLoraBatch:
    """LoRA for one engine step, reading each adapter's rows from the pool.

    Tokens are grouped by adapter; each group gathers its A and B^T rows and
    runs two matmuls at its own rank (ranks mix without padding).
    """

    def __init__(self, pool: UnifiedPool, adapters: list[PooledLora | None], query_lens: list[int]):
        self.pool = pool
        groups: dict[int, tuple[PooledLora, list[int]]] = {}
        pos = 0
        for ad, q in zip(adapters, query_lens):
            if ad is not None:
                groups.setdefault(id(ad), (ad, []))[1].extend(range(pos, pos + q))
            pos += q
        self.groups = [(ad, torch.tensor(idx, dtype=torch.long, device=pool.device))
                       for ad, idx in groups.values()]

    def apply(self, layer: int, module: str, x: torch.Tensor) -> torch.Tensor | None:
        out = None
        for ad, idx in self.groups:
            t = ad.tables.get((layer, module))
            if t is None:
                continue
            a_rows, b_rows, scale = t
            a = self.pool.gather(layer, a_rows)      # [r, in]
            bt = self.pool.gather(layer, b_rows)     # [r, out]
            delta = (x.index_select(0, idx) @ a.t()) @ bt
            if out is None:
                out = x.new_zeros(x.shape[0], bt.shape[1])
            out.index_add_(0, idx, delta * scale)
        return out
