"""The torch side of the unified memory pool.

One tensor [num_layers, num_pages, page_elems] backs both the paged KV cache
(each page = `block_size` tokens of K and V in every layer) and cached LoRA
adapters (each page = `rows_per_page` slots of `row_width` elements per layer;
a LoRA row takes as many consecutive slots as it needs, see memory/layout.py). Which page belongs to whom is decided by the pure
Python cache manager; this module only moves bytes and gathers rows.

Installing an adapter returns its row table (gpu_worker.lora.rows.PooledLora): the slot
of every row of A and of B^T. LoRA compute (gpu_worker.lora) reads the rows where they
sit through that table; nothing is copied into a per-adapter contiguous buffer.
"""
from __future__ import annotations

from dataclasses import dataclass

import contextlib

import torch

from gpu_worker.lora.rows import PooledLora

from .memory.geometry import page_bytes_for, page_elements, row_geometry
from .memory.layout import AdapterLayout, AdapterShape, LoraModuleShape, layout_adapter
from chameleon_common.model_config import LlamaConfig


def page_bytes(cfg: LlamaConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one page over all layers."""
    return page_bytes_for(cfg, block_size, torch.empty((), dtype=dtype).element_size())


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


class UnifiedPool:
    def __init__(self, cfg: LlamaConfig, num_pages: int, block_size: int, device: torch.device,
                 dtype: torch.dtype):
        if num_pages <= 0:
            raise ValueError("num_pages must be positive")
        self.cfg, self.num_pages, self.block_size = cfg, num_pages, block_size
        self.device, self.dtype = torch.device(device), dtype
        self.page_elems = page_elements(cfg, block_size)
        self.storage = torch.zeros(cfg.num_layers, num_pages, self.page_elems, device=device, dtype=dtype)
        self.geometry = row_geometry(cfg, block_size)
        # [layer, page * page_elems]: one flat run of elements per layer
        self._flat = self.storage.view(cfg.num_layers, num_pages * self.page_elems)
        # CUDA: a side stream that installs copy on, so compute goes on meanwhile (engine sets it)
        self.copy_stream: "torch.cuda.Stream | None" = None

    @property
    def page_bytes(self) -> int:
        return page_bytes(self.cfg, self.block_size, self.dtype)

    def layout(self, staged: StagedAdapter) -> AdapterLayout:
        return layout_adapter(self.geometry, staged.shape)

    def install(self, staged: StagedAdapter, layout: AdapterLayout, page_ids: list[int],
                stream: "torch.cuda.Stream | None" = None) -> PooledLora:
        """Copy the staged weights into their pages; returns the adapter's row tables.

        With a CUDA `stream` (default: `copy_stream`) the copies are queued on it and this
        returns at once: the result's `ready` event completes when they have landed, while
        compute goes on."""
        stream = stream if stream is not None else self.copy_stream
        g, E = self.geometry, self.page_elems
        starts: dict[tuple[int, str], tuple[list[int], list[int], float]] = {}
        if stream is not None:  # the pages may just have been freed by work on the compute stream
            stream.wait_stream(torch.cuda.current_stream(self.device))
        ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with ctx:
            for (layer, module), (a, b, scale) in staged.weights.items():
                rows: dict[str, list[int]] = {}
                for matrix, w in (("A", a), ("B", b.t())):
                    runs = layout.runs.get((layer, module, matrix))
                    if runs is None:
                        raise ValueError(f"layout lacks {module} {matrix} in layer {layer}")
                    w = w.to(device=self.device, dtype=self.dtype, non_blocking=True)
                    width, slots = w.shape[1], []
                    for run in runs:  # `count` rows back to back, each `slots_per_row` slots long
                        step = run.slots_per_row * g.row_width
                        begin = page_ids[run.page_index] * E + run.offset * g.row_width
                        block = self._flat[layer, begin:begin + run.count * step].view(run.count, step)
                        block[:, :width] = w[run.first_row:run.first_row + run.count]
                        first = page_ids[run.page_index] * g.rows_per_page + run.offset
                        slots += range(first, first + run.count * run.slots_per_row, run.slots_per_row)
                    rows[matrix] = slots
                starts[(layer, module)] = (rows["A"], rows["B"], scale)
        ready = None
        if stream is not None:
            ready = torch.cuda.Event()
            ready.record(stream)
        return PooledLora.from_starts(staged.adapter_id, self.cfg.num_layers, starts, self.device,
                                      ready)
