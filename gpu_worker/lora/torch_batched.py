"""The batched torch LoRA path (CPU, and the fallback on GPU).

Per step, the segments are bucketed by (the adapter's largest rank, the segment's token
count), each rounded up to a power of two, so one bucket is a dense
[adapters, tokens, rank] problem; per module group a bucket costs a handful of ops (gather
A rows from the pool, gather x, one bmm, mask and scale, then per module gather B^T rows,
one bmm and one index_add), whatever the number of adapters in it. Mixed ranks cost at
most 2x padding in rank and in tokens, and padded entries are masked, never read as LoRA.
Rows are read where they sit in the pool (index_select on a strided view of a layer).

Those gathers copy every row each step. A `DenseCache` (optional, bounded in bytes) keeps a
bucket's gathered rows, rank mask and scales per layer and module group, keyed by the
adapters' never-reused install ids, so steady decoding over the same adapters gathers once
and then only multiplies. It holds copies of adapter weights outside the unified pool, so it
is meant for the CPU path; its bound is its whole footprint.
"""
from __future__ import annotations

from collections import OrderedDict
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
    uids: tuple = ()        # install ids of the bucket's adapters (the dense cache's key)


class DenseCache:
    """Gathered bucket weights, least recently used out first, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes, self.nbytes = max_bytes, 0
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple):
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: tuple, value: tuple, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        while self._entries and self.nbytes + nbytes > self.max_bytes:
            self.nbytes -= self._entries.popitem(last=False)[1][0]
        self._entries[key] = (nbytes, value)
        self.nbytes += nbytes


class TorchLora:
    def __init__(self, meta: LoraKernelMeta, cache: DenseCache | None = None):
        self.meta = meta
        self.cache = cache
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
                                        gather.masked_fill(gather == T, 0).reshape(-1).to(dev), rank,
                                        tuple(meta.slot_uid(meta.seg_slots[g]) for g in segs)))
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
            key = (layer, tuple(modules), Rb, bk.uids)
            dense = self.cache.get(key) if self.cache is not None else None
            if dense is None:
                dense = self._gather(bk, flat, layer, mods, K, out_widths, slot_width, x.dtype)
                if self.cache is not None:
                    self.cache.put(key, dense, sum(t.numel() * t.element_size() for t in
                                                   (dense[0], dense[1], *dense[2])) if dense else 0)
            if not dense:   # no adapter of the bucket targets these modules in this layer
                continue
            at, w, bts = dense
            xb = xp[bk.gather]                                          # [nb, Lb, K]
            z = torch.bmm(xb, at)                                       # [nb, Lb, nm*Rb]
            # `where`, not a product alone: a padded entry must be exactly 0 even if its read was not finite
            z = torch.where(w != 0, z * w, 0)
            for i in range(nm):
                N = out_widths[i]
                d = torch.bmm(z[:, :, i * Rb:(i + 1) * Rb], bts[i])
                y[:, offs[i]:offs[i] + N].index_add_(0, bk.scatter, d.reshape(-1, N).to(y.dtype))

    def _gather(self, bk: _Bucket, flat: torch.Tensor, layer: int, mods: torch.Tensor, K: int,
                out_widths: Sequence[int], slot_width: int, dtype: torch.dtype):
        """A bucket's rows for one layer and module group: A^T [nb, K, nm*Rb], the scale of
        every rank entry (0 past an adapter's rank) [nb, 1, nm*Rb], and per module B^T
        [nb, Rb, N]; () when no adapter of the bucket has these modules in this layer (the
        delta is zero, nothing runs)."""
        meta = self.meta
        Rb, nb, nm = bk.rank, bk.slots.shape[0], mods.shape[0]
        ranks = meta.ranks[bk.slots, layer][:, mods]                    # [nb, nm]
        if not bool(ranks.any()):
            return ()
        rows = meta.rows[bk.slots, layer][:, mods, :, :Rb]              # [nb, nm, 2, Rb]
        a = flat.unfold(0, K, slot_width).index_select(0, rows[:, :, A].reshape(-1).long())
        live = self._arange[:Rb] < ranks[..., None]                     # [nb, nm, Rb]
        w = meta.scales[bk.slots, layer][:, mods][..., None].expand(nb, nm, Rb)
        w = torch.where(live, w, 0).to(dtype).reshape(nb, 1, nm * Rb)
        bts = [flat.unfold(0, N, slot_width).index_select(0, rows[:, i, B].reshape(-1).long())
               .view(nb, Rb, N) for i, N in enumerate(out_widths)]
        return a.view(nb, nm * Rb, K).transpose(1, 2), w, bts
