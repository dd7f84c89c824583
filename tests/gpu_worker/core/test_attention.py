"""Batched paged attention against the per-sequence reference loop, on random shapes."""
from __future__ import annotations

import random

import pytest
import torch

from gpu_worker.core.attention import AttentionMeta, paged_attention, paged_attention_reference
from gpu_worker.core.kv_cache import PagedKVCache
from chameleon_common.model_config import LlamaConfig


def _cfg(heads: int, kv_heads: int, head_dim: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=32, hidden_size=heads * head_dim, intermediate_size=8,
                       num_layers=2, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (6, 1)])   # MHA, GQA, MQA
@pytest.mark.parametrize("seed", range(4))
def test_batched_matches_reference_with_prefill_and_decode_in_one_step(heads, kv_heads, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    block, hd, num_pages = rng.choice([1, 4, 16]), 8, 400
    kv = PagedKVCache(_cfg(heads, kv_heads, hd), num_pages, block)
    kv.pages.normal_()
    free = list(range(num_pages))
    rng.shuffle(free)                              # pages scattered over the pool
    qlens, clens, tables = [], [], []
    for _ in range(rng.randint(1, 7)):
        q = 1 if rng.random() < 0.5 else rng.randint(2, 20)       # decode or prefill chunk
        L = q + rng.choice([0, rng.randint(1, 30)])               # fresh prompt or cached prefix
        n = -(-L // block)
        tables.append([free.pop() for _ in range(n + rng.randint(0, 2))])  # spare pages too
        qlens.append(q)
        clens.append(L)
    q = torch.randn(sum(qlens), heads, hd)
    meta = AttentionMeta.build(qlens, clens, tables, block, heads // kv_heads, torch.device("cpu"))
    for layer in range(2):
        got = paged_attention(q, kv, layer, meta)
        want = paged_attention_reference(q, kv, layer, qlens, clens, tables)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_only_decodes_and_only_prefills():
    kv = PagedKVCache(_cfg(4, 2, 8), 64, 4)
    kv.pages.normal_()
    for qlens, clens in (([1, 1, 1], [5, 9, 1]), ([3, 6], [3, 10])):
        tables = [list(range(i * 8, i * 8 + 8)) for i in range(len(qlens))]
        q = torch.randn(sum(qlens), 4, 8)
        meta = AttentionMeta.build(qlens, clens, tables, 4, 2, torch.device("cpu"))
        assert (meta.decode is None) == (max(qlens) > 1)
        torch.testing.assert_close(paged_attention(q, kv, 0, meta),
                                   paged_attention_reference(q, kv, 0, qlens, clens, tables))
