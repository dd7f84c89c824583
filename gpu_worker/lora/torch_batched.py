"""The batched torch LoRA path (CPU, and the fallback on GPU).

Per step, the segments are bucketed by (the adapter's largest rank, the segment's token
count), each rounded up to a power of two, so one bucket is a dense
[adapters, tokens, rank] problem; per module group a bucket costs a handful of ops (gather
A rows from the pool and x, one bmm; per module gather the scaled B^T rows, one bmm and
one index_add), whatever the number of adapters in it. Mixed ranks cost at
most 2x padding in rank and in tokens, and padded entries are masked, never read as LoRA.
Rows are read where they sit in the pool (index_select on a strided view of a layer).

Those gathers copy every row each step. A `DenseCache` (optional, bounded in bytes) keeps a
bucket's gathered rows (the scale folded into B^T, padding zeroed) per layer and module group, keyed by the
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
    padded: bool = True     # some segment is shorter than Lb (gather reads padding row T)


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
            pad = gather == T
            self.buckets.append(_Bucket(slots.to(dev), gather.to(dev),
                                        gather.masked_fill(pad, 0).reshape(-1).to(dev), rank,
                                        tuple(meta.slot_uid(meta.seg_slots[g]) for g in segs),
                                        bool(pad.any())))
        self._arange = torch.arange(meta.table_rank, device=dev)
        self._mods: dict[tuple[int, ...], torch.Tensor] = {}
        # [layer][module]: does any adapter of this step have LoRA there (one host copy per
        # step, so that groups no adapter targets, here the MLP, cost no per-layer work)
        step_slots = torch.tensor(sorted(set(meta.seg_slots)), dtype=torch.long, device=dev)
        self._targets: list[list[bool]] = (meta.ranks[step_slots] > 0).any(0).tolist()

    def add(self, x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, layer: int,
            modules: Sequence[int], out_widths: Sequence[int], slot_width: int) -> None:
        """y[:, module i's columns] += LoRA of module i, for every token with an adapter."""
        modules = tuple(modules)
        if not any(self._targets[layer][m] for m in modules):
            return   # no adapter of this step has these modules in this layer: nothing to add
        K = x.shape[1]
        flat = pool[layer].reshape(-1)
        xp: torch.Tensor | None = None
        nm = len(modules)
        offs = [sum(out_widths[:i]) for i in range(nm)]
        for bk in self.buckets:
            key = (layer, modules, bk.rank, bk.uids)
            dense = self.cache.get(key) if self.cache is not None else None
            if dense is None:
                dense = self._gather(bk, flat, layer, modules, K, out_widths, slot_width, x.dtype)
                if self.cache is not None:
                    self.cache.put(key, dense, sum(t.numel() * t.element_size() for t in
                                                   (dense[0], *dense[1])) if dense else 0)
            if not dense:   # no adapter of the bucket targets these modules in this layer
                continue
            at, bts = dense
            if bk.padded:   # padding reads row T, a zero row appended to x
                if xp is None:
                    xp = torch.cat((x, x.new_zeros(1, K)))
                xb = xp[bk.gather]                                      # [nb, Lb, K]
            else:
                xb = x[bk.gather]
            z = torch.bmm(xb, at)                                       # [nb, Lb, nm*Rb]
            Rb = bk.rank
            for i in range(nm):
                N = out_widths[i]
                d = torch.bmm(z[:, :, i * Rb:(i + 1) * Rb], bts[i])
                y[:, offs[i]:offs[i] + N].index_add_(0, bk.scatter, d.reshape(-1, N).to(y.dtype))

    def _gather(self, bk: _Bucket, flat: torch.Tensor, layer: int, modules: tuple[int, ...],
                K: int, out_widths: Sequence[int], slot_width: int, dtype: torch.dtype):
        """A bucket's rows for one layer and module group: A^T [nb, K, nm*Rb] and per module
        (scale * B)^T [nb, Rb, N], both exactly 0 past an adapter's rank; () when no adapter
        of the bucket has these modules in this layer (the delta is zero, nothing runs).

        The scale rides on B^T, so a step costs two bmm per module and no elementwise pass;
        zeroing with `where` at gather time (not a product) keeps a padded entry exactly 0
        whatever its read held, and then x @ 0 and 0 @ (0 rows) add exact zeros."""
        meta = self.meta
        Rb, nb, nm = bk.rank, bk.slots.shape[0], len(modules)
        mods = self._mods.get(modules)
        if mods is None:
            mods = self._mods[modules] = torch.tensor(modules, device=meta.device)
        ranks = meta.ranks[bk.slots, layer][:, mods]                    # [nb, nm]
        if not bool(ranks.any()):
            return ()
        rows = meta.rows[bk.slots, layer][:, mods, :, :Rb]              # [nb, nm, 2, Rb]
        live = self._arange[:Rb] < ranks[..., None]                     # [nb, nm, Rb]
        a = flat.unfold(0, K, slot_width).index_select(0, rows[:, :, A].reshape(-1).long())
        a = torch.where(live.reshape(-1, 1), a, 0).view(nb, nm * Rb, K).transpose(1, 2)
        scale = meta.scales[bk.slots, layer][:, mods][..., None].to(dtype)   # [nb, nm, 1]
        bts = []
        for i, N in enumerate(out_widths):
            bt = flat.unfold(0, N, slot_width).index_select(0, rows[:, i, B].reshape(-1).long())
            bt = bt.view(nb, Rb, N) * scale[:, i, :, None]
            bts.append(torch.where(live[:, i, :, None], bt, 0))
        return a, bts
