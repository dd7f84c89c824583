"""The LoRA backend of one engine step, and the `--lora-backend` choice.

`auto` is triton on CUDA and torch elsewhere; `triton` on the CPU needs TRITON_INTERPRET=1
(the interpreter, for tests: about a thousand times slower than the torch path).
"""
from __future__ import annotations

from typing import Sequence

import torch

from chameleon_common.model_config import LlamaConfig

from ._triton import interpreting
from .metadata import LoraKernelMeta
from .rows import MODULE_INDEX, PooledLora
from .torch_batched import DenseCache, TorchLora

BACKENDS = ("auto", "torch", "triton")


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The backend `name` means on `device`; ValueError when it cannot run there."""
    if name not in BACKENDS:
        raise ValueError(f"unknown --lora-backend {name!r}; choose from {', '.join(BACKENDS)}")
    dev = torch.device(device)
    if name == "auto":
        return "triton" if dev.type == "cuda" else "torch"
    if name == "triton" and dev.type != "cuda" and not interpreting():
        raise ValueError("--lora-backend triton needs a CUDA device, or TRITON_INTERPRET=1 set "
                         "before start-up to run the kernels in Triton's CPU interpreter")
    return name


class LoraStep:
    """The LoRA of one forward pass: the model calls `add` once per fused module group."""

    def __init__(self, backend: str, pool: torch.Tensor, slot_width: int, cfg: LlamaConfig,
                 meta: LoraKernelMeta, dense: DenseCache | None = None):
        self.backend, self.pool, self.slot_width, self.meta = backend, pool, slot_width, meta
        self.out_dims = {m: o for m, (_i, o) in cfg.module_shapes().items()}
        self._torch = TorchLora(meta, dense) if backend == "torch" else None

    def add(self, layer: int, modules: Sequence[str], x: torch.Tensor, y: torch.Tensor) -> None:
        """y [T, sum of the modules' outputs] += each token's adapter's LoRA of x [T, in]."""
        idx = tuple(MODULE_INDEX[m] for m in modules)
        widths = tuple(self.out_dims[m] for m in modules)
        if self._torch is not None:
            self._torch.add(x, y, self.pool, layer, idx, widths, self.slot_width)
            return
        from .lora_expand import lora_expand
        from .lora_shrink import lora_shrink
        x = x.contiguous()
        z = lora_shrink(x, self.pool, self.meta, layer, idx, self.slot_width)
        lora_expand(z, y, self.pool, self.meta, layer, idx, widths, self.slot_width)


# the torch path's cache of gathered adapter rows on the CPU (torch_batched.DenseCache)
CPU_DENSE_CACHE_BYTES = 256 << 20


class LoraRunner:
    """Owns the step metadata (preallocated at the engine's limits) and builds each step's LoRA.
    On the CPU the torch path also keeps up to `dense_cache_bytes` of gathered rows (None:
    CPU_DENSE_CACHE_BYTES on the CPU, 0 elsewhere)."""

    def __init__(self, backend: str, pool_storage: torch.Tensor, slot_width: int, cfg: LlamaConfig,
                 max_running: int, max_step_tokens: int, dense_cache_bytes: int | None = None):
        self.backend = resolve_backend(backend, pool_storage.device)
        self.pool, self.slot_width, self.cfg = pool_storage, slot_width, cfg
        self.meta = LoraKernelMeta(cfg.num_layers, max_running, max_step_tokens, pool_storage.device)
        if dense_cache_bytes is None:
            dense_cache_bytes = CPU_DENSE_CACHE_BYTES if pool_storage.device.type == "cpu" else 0
        self.dense = (DenseCache(dense_cache_bytes)
                      if self.backend == "torch" and dense_cache_bytes > 0 else None)

    def step(self, adapters: list[PooledLora | None], query_lens: list[int]) -> LoraStep | None:
        if not self.meta.refresh(adapters, query_lens):
            return None
        return LoraStep(self.backend, self.pool, self.slot_width, self.cfg, self.meta, self.dense)
