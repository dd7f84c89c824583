"""Paged KV cache storage. Which page belongs to whom is decided by memory/page_pool.py.

One page holds `block_size` tokens of K and V in every layer. The storage is one
tensor [num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim] (K at
index 0, V at 1), so that the unified memory pool can hand in its own storage and
see the same pages as rows of adapter weights. `k` and `v` are views of it shaped
[num_layers, num_blocks, block_size, num_kv_heads, head_dim].
"""
from __future__ import annotations

import torch

from chameleon_common.model_config import LlamaConfig


class PagedKVCache:
    def __init__(self, config: LlamaConfig, num_blocks: int, block_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 storage: torch.Tensor | None = None):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks}, "
                             f"{block_size}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_kv_heads, self.head_dim = config.num_kv_heads, config.head_dim
        shape = (config.num_layers, num_blocks, 2, block_size, config.num_kv_heads, config.head_dim)
        if storage is None:
            storage = torch.zeros(shape, device=device, dtype=dtype)
        elif storage.numel() != torch.Size(shape).numel():
            raise ValueError(f"storage has {storage.numel()} elements; the cache needs {shape}")
        self.pages = storage.view(shape)
        self.k = self.pages[:, :, 0]
        self.v = self.pages[:, :, 1]

    @property
    def device(self) -> torch.device:
        return self.pages.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pages.dtype

    def slots(self, slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(page, offset) of flat slots [T] (slot = page * block_size + offset): computed once
        per step, since every layer writes the same slots."""
        return slot_mapping // self.block_size, slot_mapping % self.block_size

    def write_at(self, layer: int, where: tuple[torch.Tensor, torch.Tensor], k: torch.Tensor,
                 v: torch.Tensor) -> None:
        """Store k, v [T, num_kv_heads, head_dim] at `where` = slots(slot_mapping)."""
        page, offset = where
        self.k[layer, page, offset] = k.to(self.dtype)
        self.v[layer, page, offset] = v.to(self.dtype)

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [T, num_kv_heads, head_dim] at flat slots slot_mapping [T]."""
        self.write_at(layer, self.slots(slot_mapping), k, v)

    def gather(self, layer: int, block_table: list[int] | torch.Tensor, length: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V of a sequence's first `length` tokens, each [length, num_kv_heads, head_dim]."""
        n_pages = -(-length // self.block_size)
        if n_pages > len(block_table):
            raise ValueError(f"{length} tokens need {n_pages} pages, the block table has "
                             f"{len(block_table)}")
        if not torch.is_tensor(block_table):
            block_table = torch.tensor(block_table[:n_pages], dtype=torch.long, device=self.device)
        pages = block_table[:n_pages]
        k = self.k[layer, pages].reshape(-1, self.num_kv_heads, self.head_dim)[:length]
        v = self.v[layer, pages].reshape(-1, self.num_kv_heads, self.head_dim)[:length]
        return k, v
