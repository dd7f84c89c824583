"""Random LoRA steps for the kernel tests: adapters written into a random pool at chosen
slots (odd ones too), their dense A and B kept for a direct check of the reference."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gpu_worker.lora.metadata import LoraKernelMeta
from gpu_worker.lora.rows import LORA_MODULES, MODULE_INDEX, PooledLora

LAYERS, PAGE_ELEMS, SLOT_WIDTH = 2, 512, 8
# odd-numbered adapters skip k_proj, up_proj and o_proj: rank 0 inside a fused group
PARTIAL = ("q_proj", "v_proj", "gate_proj", "down_proj")
# in/out features of a small GQA model: hidden 40, q 40, k/v 24, intermediate 56
DIMS = {"q_proj": (40, 40), "k_proj": (40, 24), "v_proj": (40, 24), "o_proj": (40, 40),
        "gate_proj": (40, 56), "up_proj": (40, 56), "down_proj": (56, 40)}
GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "gate_up": ("gate_proj", "up_proj"),
          "down": ("down_proj",)}


@dataclass
class Case:
    pool: torch.Tensor
    meta: LoraKernelMeta
    adapters: list[PooledLora | None]       # per sequence
    dense: dict[int, dict]                  # uid -> (layer, module) -> (A [r, in], B [out, r], scale)
    query_lens: list[int]


def make_adapter(gen: torch.Generator, pool: torch.Tensor, cursor: list[int], rank: int,
                 modules: tuple[str, ...], adapter_id: str):
    """Write A and B^T row by row at increasing slots with random gaps (rows start at odd
    slots); returns the PooledLora and the dense weights."""
    flat = pool.view(pool.shape[0], -1)
    starts, dense = {}, {}
    for layer in range(pool.shape[0]):
        for m in modules:
            r = rank if m != "down_proj" else max(1, rank // 2 + 1)   # a second rank in one adapter
            i, o = DIMS[m]
            a = torch.randn(r, i, generator=gen) / i ** 0.5
            b = torch.randn(o, r, generator=gen) / max(r, 1) ** 0.5
            slots = {}
            for name, w in (("A", a), ("B", b.t())):
                slots[name] = []
                for row in w:
                    s = cursor[layer] + int(torch.randint(0, 2, (1,), generator=gen))
                    flat[layer, s * SLOT_WIDTH:s * SLOT_WIDTH + row.numel()] = row.to(pool.dtype)
                    slots[name].append(s)
                    cursor[layer] = s + -(-row.numel() // SLOT_WIDTH)
            scale = float(torch.rand(1, generator=gen)) + 0.5
            starts[(layer, m)] = (slots["A"], slots["B"], scale)
            dense[(layer, m)] = (a.to(pool.dtype).float(), b.to(pool.dtype).float(), scale)
    if cursor[0] * SLOT_WIDTH > flat.shape[1]:
        raise AssertionError("test pool too small")
    return PooledLora.from_starts(adapter_id, pool.shape[0], starts, pool.device), dense


def choose(gen: torch.Generator, n_seqs: int, n_adapters: int, popularity: str) -> list[int]:
    if popularity == "identical":
        return [0] * n_seqs
    if popularity == "distinct":
        return [i % n_adapters for i in range(n_seqs)]
    if popularity == "uniform":
        return torch.randint(0, n_adapters, (n_seqs,), generator=gen).tolist()
    if popularity == "zipf":
        w = 1.0 / torch.arange(1, n_adapters + 1, dtype=torch.float64) ** 1.2
        return torch.multinomial(w, n_seqs, replacement=True, generator=gen).tolist()
    raise ValueError(popularity)


def make_case(seed: int, ranks: list[int], n_seqs: int, popularity: str, phase: str,
              dtype: torch.dtype = torch.float32, base_every: int = 3,
              modules: tuple[str, ...] = LORA_MODULES, device: str = "cpu") -> Case:
    gen = torch.Generator().manual_seed(seed)
    # room for every row with its gap: rank * (slots of a row + 1) per matrix
    need = sum(r * sum(-(-n // SLOT_WIDTH) + 1 for m in modules for n in DIMS[m]) for r in ranks)
    pages = -(-(need + 2) * SLOT_WIDTH // PAGE_ELEMS) + 1
    pool = (torch.randn(LAYERS, pages, PAGE_ELEMS, generator=gen)).to(dtype)
    cursor = [1] * LAYERS
    pooled, dense = [], {}
    for k, r in enumerate(ranks):
        mods = modules if k % 2 == 0 else tuple(m for m in modules if m in PARTIAL) or modules
        ad, d = make_adapter(gen, pool, cursor, r, mods, f"a{k}")
        pooled.append(ad)
        dense[ad.uid] = d
    picks = choose(gen, n_seqs, len(ranks), popularity)
    adapters = [None if base_every and i % base_every == base_every - 1 else pooled[p]
                for i, p in enumerate(picks)]
    if phase == "decode":
        qlens = [1] * n_seqs
    else:  # prefill chunks and decode tokens in one step
        qlens = [int(torch.randint(1, 24, (1,), generator=gen)) if i % 2 == 0 else 1
                 for i in range(n_seqs)]
    pool = pool.to(device)
    for ad in pooled:
        ad.rows, ad.ranks, ad.scales = ad.rows.to(device), ad.ranks.to(device), ad.scales.to(device)
    meta = LoraKernelMeta(LAYERS, max_slots=n_seqs, max_tokens=sum(qlens), device=pool.device)
    meta.refresh(adapters, qlens)
    return Case(pool, meta, adapters, dense, qlens)


def dense_delta(case: Case, layer: int, modules: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
    """What LoRA adds, token by token, straight from the dense weights (float32)."""
    outs = []
    for m in modules:
        o = DIMS[m][1]
        d = torch.zeros(x.shape[0], o, device=x.device)
        pos = 0
        for ad, q in zip(case.adapters, case.query_lens):
            if ad is not None and (layer, m) in case.dense[ad.uid]:
                a, b, s = case.dense[ad.uid][(layer, m)]
                d[pos:pos + q] = x[pos:pos + q].float() @ a.t() @ b.t() * s
            pos += q
        outs.append(d)
    return torch.cat(outs, dim=1)


def module_ids(modules: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(MODULE_INDEX[m] for m in modules)


def widths(modules: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(DIMS[m][1] for m in modules)
