"""The batched torch LoRA path (CPU, and the fallback on GPU).

Per step, the segments are bucketed by (the adapter's largest rank, the segment's token
count), each rounded up to a power of two, so one bucket is a dense
[adapters, tokens, rank] problem; per module group a bucket costs a handful of ops (gather
A rows from the pool, gather x, one bmm, mask and scale, then per module gather B^T rows,
one bmm and one index_add), whatever the number of adapters in it. Mixed ranks cost at
most 2x padding in rank and in tokens, and padded entries are masked, never read as LoRA.
Rows are read where they sit in the pool (index_select on a strided view of a layer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .metadata import LoraKernelMeta, _pow2
from .rows import A, B


@dataclass
class _Bucket:
    slots: torch.Tensor     # [nb] adapter slots
    gather: torch.Tensor    # [nb, Lb] token indices, padding = T (a zero row of x)
    scatter: torch.Tensor   # [nb * Lb] token indices, padding = 0 (adds exact zeros)
    rank: int               # Rb


class TorchLora:
    def __init__(self, meta: LoraKernelMeta):
        self.meta = meta
        T, dev = meta.num_tokens, meta.device
        groups: dict[tuple[int, int], list[int]] = {}
        for g, ((lo, hi), r) in enumerate(zip(meta.seg_bounds, meta.seg_ranks)):
            groups.setdefault((min(_pow2(r), meta.table_rank), _pow2(hi - lo)), []).append(g)
        order = meta.order_host
        self.buckets = []
        for (rank, length), segs in sorted(groups.items()):
            gather = torch.full((len(segs), length), T, dtype=torch.long)
            for j, g in enumerate(segs):
                lo, hi = meta.seg_bounds[g]
                gather[j, :hi - lo] = order[lo:hi]
            slots = torch.tensor([meta.seg_slots[g] for g in segs], dtype=torch.long)
            self.buckets.append(_Bucket(slots.to(dev), gather.to(dev),
                                        gather.masked_fill(gather == T, 0).reshape(-1).to(dev), rank))
        self._arange = torch.arange(meta.table_rank, device=dev)

    def add(self, x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, layer: int,
            modules: Sequence[int], out_widths: Sequence[int], slot_width: int) -> None:
        """y[:, module i's columns] += LoRA of module i, for every token with an adapter."""
        meta = self.meta
        K = x.shape[1]
        flat = pool[layer].reshape(-1)
        xp = torch.cat((x, x.new_zeros(1, K)))
        mods = torch.tensor(list(modules), device=x.device)
        nm = len(modules)
        offs = [sum(out_widths[:i]) for i in range(nm)]
        for bk in self.buckets:
            Rb, nb = bk.rank, bk.slots.shape[0]
            rows = meta.rows[bk.slots, layer][:, mods, :, :Rb]          # [nb, nm, 2, Rb]
            a = flat.unfold(0, K, slot_width).index_select(0, rows[:, :, A].reshape(-1).long())
            xb = xp[bk.gather]                                          # [nb, Lb, K]
            z = torch.bmm(xb, a.view(nb, nm * Rb, K).transpose(1, 2))   # [nb, Lb, nm*Rb]
            ranks = meta.ranks[bk.slots, layer][:, mods]                # [nb, nm]
            live = self._arange[:Rb] < ranks[..., None]                 # [nb, nm, Rb]
            w = meta.scales[bk.slots, layer][:, mods][..., None].expand(nb, nm, Rb)
            w = torch.where(live, w, 0).to(z.dtype).reshape(nb, 1, nm * Rb)
            # `where`, not a product alone: a padded entry must be exactly 0 even if its read was not finite
            z = torch.where(w != 0, z * w, 0)
            for i in range(nm):
                N = out_widths[i]
                bt = flat.unfold(0, N, slot_width).index_select(0, rows[:, i, B].reshape(-1).long())
                d = torch.bmm(z[:, :, i * Rb:(i + 1) * Rb], bt.view(nb, Rb, N))
                y[:, offs[i]:offs[i] + N].index_add_(0, bk.scatter, d.reshape(-1, N).to(y.dtype))
