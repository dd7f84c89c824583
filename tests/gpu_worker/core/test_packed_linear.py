"""MKL pre-packed weights: the plain product to fp32 rounding, packed only once a batch size
is steady, and the model's decode logits (and greedy tokens) unchanged by packing."""
from __future__ import annotations

import pytest
import torch

from gpu_worker.core.kv_cache import PagedKVCache
from gpu_worker.core.model import ForwardBatch, LlamaModel
from gpu_worker.core.packed_linear import PackedWeights, available

pytestmark = pytest.mark.skipif(not available(torch.device("cpu")),
                                reason="torch has no MKL packed GEMM here")


@pytest.mark.parametrize("rows", [1, 3, 16, 33])
@pytest.mark.parametrize("shape", [(40, 24), (960, 576), (72, 1536)])
def test_packed_product_matches_the_plain_one(rows, shape):
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(*shape, generator=gen)
    pw = PackedWeights({"w": w}, steady_steps=1, min_gap_steps=0)
    pw.observe(rows)
    assert pw.rows == rows
    for n in (rows, rows + 1):   # the packed size, and another one (the fallback)
        x = torch.randn(n, shape[1], generator=gen)
        # fp32 rounding of a K-term sum of O(1) products: far below 1e-3
        torch.testing.assert_close(pw.linear(x, "w"), x @ w.t(), rtol=1e-5, atol=1e-3)


def test_packs_only_a_steady_batch_size_and_keeps_one_set():
    pw = PackedWeights({"w": torch.randn(8, 4)}, steady_steps=3, min_gap_steps=0)
    for rows in (5, 5, 7, 5, 5):      # never 3 in a row
        pw.observe(rows)
    assert pw.rows is None and pw.packs == 0
    pw.observe(5)
    assert pw.rows == 5 and pw.packs == 1
    for _ in range(5):                # already packed for 5: nothing more
        pw.observe(5)
    assert pw.packs == 1
    for _ in range(3):
        pw.observe(2)
    assert pw.rows == 2 and pw.packs == 2 and len(pw._packed) == 1


def test_model_logits_are_the_same_with_and_without_packing(tiny_assets):
    plain = LlamaModel.load(tiny_assets["model"], pack_weights=False)
    packed = LlamaModel.load(tiny_assets["model"], pack_weights=True)
    assert plain.packed is None and packed.packed is not None
    cfg, block, n_seqs = plain.config, 4, 3
    caches = [PagedKVCache(cfg, 64, block) for _ in range(2)]
    tables = [list(range(i * 8, i * 8 + 8)) for i in range(n_seqs)]
    gen = torch.Generator().manual_seed(0)
    for step in range(8):             # decode steps of a steady batch: packing starts at step 4
        ids = torch.randint(0, cfg.vocab_size, (n_seqs,), generator=gen)
        pos = torch.full((n_seqs,), step)
        batch = ForwardBatch(ids, pos, [1] * n_seqs, [step + 1] * n_seqs, tables,
                             torch.tensor([t[step // block] * block + step % block for t in tables]))
        a, b = plain.forward(batch, caches[0]), packed.forward(batch, caches[1])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert packed.packed.rows == n_seqs and packed.packed.packs == 1


def test_a_churning_batch_size_repacks_at_most_once_per_gap():
    pw = PackedWeights({"w": torch.randn(8, 4)}, steady_steps=2, min_gap_steps=10)
    sizes = [r for r in (3, 5) for _ in range(2)] * 10    # each size holds 2 steps, 40 steps
    for rows in sizes:
        pw.observe(rows)
    # the first pack at step 2, then one at most every 10 passes: 4 in 40, not 20
    assert pw.packs == 4
