"""The batched torch path against the per-adapter reference loop, on random steps that mix
ranks 1-256, adapters targeting different modules, prefill chunks and decode tokens."""
from __future__ import annotations

import pytest
import torch

from gpu_worker.lora.reference import lora_expand_ref, lora_shrink_ref
from gpu_worker.lora.torch_batched import DenseCache, TorchLora

from .lora_cases import GROUPS, SLOT_WIDTH, dense_delta, make_case, module_ids, widths


@pytest.mark.parametrize("seed", range(6))
def test_batched_torch_path_matches_reference_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    n_adapters = int(torch.randint(1, 7, (1,), generator=gen))
    ranks = torch.randint(1, 257, (n_adapters,), generator=gen).tolist()
    popularity = ["distinct", "uniform", "zipf", "identical"][seed % 4]
    case = make_case(seed, ranks, n_seqs=int(torch.randint(2, 12, (1,), generator=gen)),
                     popularity=popularity, phase="decode" if seed == 5 else "prefill")
    batched = TorchLora(case.meta)
    for layer in range(case.pool.shape[0]):
        for group, mods in GROUPS.items():
            K = 56 if group == "down" else 40
            x = torch.randn(case.meta.num_tokens, K, generator=gen)
            y0 = torch.randn(case.meta.num_tokens, sum(widths(mods)), generator=gen)
            ids = module_ids(mods)
            y_ref = y0.clone()
            z = lora_shrink_ref(x, case.pool, case.meta, layer, ids, SLOT_WIDTH)
            lora_expand_ref(z, y_ref, case.pool, case.meta, layer, ids, widths(mods), SLOT_WIDTH)
            y = y0.clone()
            batched.add(x, y, case.pool, layer, ids, widths(mods), SLOT_WIDTH)
            torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(y, y0 + dense_delta(case, layer, mods, x), rtol=1e-4, atol=1e-4)


def test_buckets_group_adapters_by_rank_and_length():
    case = make_case(0, [8, 8, 16, 200], n_seqs=8, popularity="distinct", phase="decode",
                     base_every=0)
    buckets = TorchLora(case.meta).buckets
    # two rank-8 adapters share one bucket; 16 and 200 (padded to 256) get their own
    assert sorted((b.rank, b.slots.numel()) for b in buckets) == [(8, 2), (16, 1), (256, 1)]


def test_step_slots_persist_while_adapters_keep_running():
    case = make_case(1, [4, 8], n_seqs=4, popularity="distinct", phase="decode", base_every=0)
    meta = case.meta
    copies = meta.copies
    assert copies == 2
    for _ in range(3):
        meta.refresh(case.adapters, case.query_lens)
    assert meta.copies == copies  # steady decoding copies no row tables
    meta.refresh(case.adapters[:1] + [None] * 3, case.query_lens)
    assert meta.n_segments == 1 and meta.n_active == 1


@pytest.mark.parametrize("budget", [1 << 30, 20_000])
def test_dense_cache_gives_the_same_deltas_and_stays_in_its_budget(budget):
    gen = torch.Generator().manual_seed(3)
    case = make_case(7, [4, 16, 33, 8], n_seqs=9, popularity="distinct", phase="decode")
    cache = DenseCache(budget)
    plain = TorchLora(case.meta)
    for rep in range(2):   # a later step over the same adapters reuses what the first gathered
        cached = TorchLora(case.meta, cache)
        for layer in range(case.pool.shape[0]):
            for group, mods in GROUPS.items():
                K = 56 if group == "down" else 40
                x = torch.randn(case.meta.num_tokens, K, generator=gen)
                y0 = torch.randn(case.meta.num_tokens, sum(widths(mods)), generator=gen)
                ids = module_ids(mods)
                y_plain, y_cached = y0.clone(), y0.clone()
                plain.add(x, y_plain, case.pool, layer, ids, widths(mods), SLOT_WIDTH)
                cached.add(x, y_cached, case.pool, layer, ids, widths(mods), SLOT_WIDTH)
                assert torch.equal(y_plain, y_cached)
        assert cache.nbytes <= budget
    assert (cache.hits > 0) == (budget > 1 << 20)
