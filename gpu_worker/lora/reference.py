"""The pure-torch reference of the LoRA ops, with the kernels' exact signatures.

Semantics, as reference pseudo-code (`pool` is the unified pool [layers, pages,
page_elems], seen per layer as one flat run of elements; a row that starts at slot
s is the elements from s * slot_width on):

    lora_shrink(x, pool, meta, layer, modules, slot_width) -> z:
        z = zeros(len(modules), T, meta.max_rank) in float32
        for each segment g (tokens toks = meta.order[seg_start[g]:seg_start[g+1]],
                            adapter slot a = meta.seg_slot[g]):
            for i, m in enumerate(modules):
                r = meta.ranks[a, layer, m]
                A[j, :] = pool[layer].flat[rows[a, layer, m, 0, j] * slot_width :][:K]   for j < r
                z[i, toks, :r] = x[toks] @ A.T                       (float32 accumulation)

    lora_expand(z, y, pool, meta, layer, modules, out_widths, slot_width):
        column offsets o_i = sum(out_widths[:i]); N_i = out_widths[i]
        for each segment g as above, for i, m in enumerate(modules):
            Bt[j, :] = pool[layer].flat[rows[a, layer, m, 1, j] * slot_width :][:N_i]  for j < r
            y[toks, o_i:o_i + N_i] += (z[i, toks, :r] @ Bt * scales[a, layer, m]).to(y.dtype)

Tokens outside every segment (no adapter) and modules of rank 0 leave y as it was.
`modules` are indices into rows.LORA_MODULES; fusing q/k/v (or gate/up) means passing
them together with y holding their outputs side by side.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .metadata import LoraKernelMeta
from .rows import A, B


def _rows(pool: torch.Tensor, layer: int, slots: torch.Tensor, width: int,
          slot_width: int) -> torch.Tensor:
    flat = pool[layer].reshape(-1)
    return flat.unfold(0, width, slot_width).index_select(0, slots.long())


def lora_shrink_ref(x: torch.Tensor, pool: torch.Tensor, meta: LoraKernelMeta, layer: int,
                    modules: Sequence[int], slot_width: int) -> torch.Tensor:
    T, K = x.shape
    z = torch.zeros(len(modules), T, max(meta.max_rank, 1), dtype=torch.float32, device=x.device)
    order = meta.order.long()
    for (lo, hi), a in zip(meta.seg_bounds, meta.seg_slots):
        toks = order[lo:hi]
        for i, m in enumerate(modules):
            r = int(meta.ranks[a, layer, m])
            if r == 0:
                continue
            w = _rows(pool, layer, meta.rows[a, layer, m, A, :r], K, slot_width)
            z[i, toks, :r] = x[toks].float() @ w.float().t()
    return z


def lora_expand_ref(z: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, meta: LoraKernelMeta,
                    layer: int, modules: Sequence[int], out_widths: Sequence[int],
                    slot_width: int) -> None:
    order = meta.order.long()
    offs = [sum(out_widths[:i]) for i in range(len(out_widths))]
    for (lo, hi), a in zip(meta.seg_bounds, meta.seg_slots):
        toks = order[lo:hi]
        for i, m in enumerate(modules):
            r = int(meta.ranks[a, layer, m])
            if r == 0:
                continue
            N = out_widths[i]
            bt = _rows(pool, layer, meta.rows[a, layer, m, B, :r], N, slot_width)
            d = z[i, toks, :r] @ bt.float() * float(meta.scales[a, layer, m])
            y[toks, offs[i]:offs[i] + N] += d.to(y.dtype)
