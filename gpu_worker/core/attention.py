"""Batched attention over the paged KV cache: one call per layer for a whole step.

A step mixes decode tokens (one query each) and prefill chunks (many queries).
The layer-independent part — which pages each sequence reads, and which cache
slots each query may see — is built once per step (`AttentionMeta.build`) and
reused by every layer. Each layer then runs at most two
`scaled_dot_product_attention` calls: one for every decoding sequence, one for
every prefilling sequence, each padded to the group's longest context with a
boolean mask.

Grouped-query attention needs no `repeat_interleave` of K/V: the `g = num_heads
// num_kv_heads` query heads that share a KV head are laid out as extra query
rows of that KV head (`[B, kv_heads, g * Q, head_dim]`), which is exactly the
grouping `repeat_interleave` produced (query head h reads KV head h // g).

`paged_attention_reference` is the per-sequence loop this replaces; tests
compare the two on random shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv_cache import PagedKVCache


@dataclass
class _Group:
    rows: torch.Tensor       # [B, Q] flat token row of each query (padding rows repeat row 0)
    valid: torch.Tensor      # [B, Q] bool: a real query, not padding
    pages: torch.Tensor      # [B, P] pages each sequence reads (padding: page 0, masked out)
    mask: torch.Tensor       # [B, 1, g*Q, P*block_size] bool: query may see that slot

    @property
    def queries(self) -> int:
        return self.rows.shape[1]


@dataclass
class AttentionMeta:
    """What every layer of one step needs to attend: built once per forward."""
    decode: _Group | None     # sequences with one query this step
    prefill: _Group | None    # sequences with several
    num_tokens: int

    @classmethod
    def build(cls, query_lens: list[int], context_lens: list[int], block_tables: list[list[int]],
              block_size: int, group: int, device: torch.device) -> "AttentionMeta":
        starts, t = [], 0
        for q in query_lens:
            starts.append(t)
            t += q
        dec = [i for i, q in enumerate(query_lens) if q == 1]
        pre = [i for i, q in enumerate(query_lens) if q > 1]

        def make(idx: list[int]) -> _Group | None:
            if not idx:
                return None
            qmax = max(query_lens[i] for i in idx)
            lmax = max(context_lens[i] for i in idx)
            pmax = -(-lmax // block_size)
            rows = torch.zeros(len(idx), qmax, dtype=torch.long)
            valid = torch.zeros(len(idx), qmax, dtype=torch.bool)
            pages = torch.zeros(len(idx), pmax, dtype=torch.long)
            qpos = torch.zeros(len(idx), qmax, dtype=torch.long)  # position of each query
            for b, i in enumerate(idx):
                q, L = query_lens[i], context_lens[i]
                rows[b, :q] = torch.arange(starts[i], starts[i] + q)
                valid[b, :q] = True
                n = -(-L // block_size)
                pages[b, :n] = torch.tensor(block_tables[i][:n], dtype=torch.long)
                qpos[b, :q] = torch.arange(L - q, L)
            slot = torch.arange(pmax * block_size)
            # causal within the sequence; a padding query sees slot 0 only, so that its
            # softmax row stays finite (its output is discarded)
            mask = (slot[None, None, :] <= qpos[:, :, None]) & valid[:, :, None]
            mask[:, :, 0] |= ~valid
            mask = mask.repeat_interleave(group, dim=1)[:, None]   # [B, 1, Q*g, L]
            return _Group(rows.to(device), valid.to(device), pages.to(device), mask.to(device))

        return cls(make(dec), make(pre), t)


def _attend_group(q: torch.Tensor, kv: PagedKVCache, layer: int, grp: _Group, group: int
                  ) -> torch.Tensor:
    """q [T, heads, hd] -> outputs [B, Q, heads, hd] for the group's (padded) queries."""
    b, nq = grp.rows.shape
    heads, hd = q.shape[1], q.shape[2]
    kvh = heads // group
    qs = q[grp.rows]                                             # [B, Q, heads, hd]
    qs = qs.view(b, nq, kvh, group, hd).permute(0, 2, 1, 3, 4).reshape(b, kvh, nq * group, hd)
    span = grp.pages.shape[1] * kv.block_size
    k = kv.k[layer, grp.pages].reshape(b, span, kvh, hd).transpose(1, 2)   # [B, kvh, L, hd]
    v = kv.v[layer, grp.pages].reshape(b, span, kvh, hd).transpose(1, 2)
    o = F.scaled_dot_product_attention(qs, k, v, attn_mask=grp.mask)        # [B, kvh, Q*g, hd]
    return o.view(b, kvh, nq, group, hd).permute(0, 2, 1, 3, 4).reshape(b, nq, heads, hd)


def paged_attention(q: torch.Tensor, kv: PagedKVCache, layer: int, meta: AttentionMeta
                    ) -> torch.Tensor:
    """Causal attention of every query of the step over its sequence's cached K/V.

    q [T, heads, hd] (RoPE applied; this step's K/V already written to the cache)
    -> [T, heads * hd]."""
    heads, hd = q.shape[1], q.shape[2]
    group = heads // kv.num_kv_heads
    out = q.new_empty(meta.num_tokens, heads, hd)
    for grp in (meta.decode, meta.prefill):
        if grp is None:
            continue
        o = _attend_group(q, kv, layer, grp, group)
        if grp is meta.decode:
            out[grp.rows[:, 0]] = o[:, 0]
        else:
            out[grp.rows[grp.valid]] = o[grp.valid]
    return out.view(meta.num_tokens, heads * hd)


def paged_attention_reference(q: torch.Tensor, kv: PagedKVCache, layer: int,
                              query_lens: list[int], context_lens: list[int],
                              block_tables: list[list[int]]) -> torch.Tensor:
    """The per-sequence loop: for each sequence, gather its pages, repeat K/V per query head,
    attend with a causal mask offset by the cached prefix. Same contract as `paged_attention`."""
    heads = q.shape[1]
    group = heads // kv.num_kv_heads
    outs, start = [], 0
    for ql, L, table in zip(query_lens, context_lens, block_tables):
        ks, vs = kv.gather(layer, table, L)
        qs = q[start:start + ql].transpose(0, 1)                        # [heads, q, hd]
        ks = ks.transpose(0, 1).repeat_interleave(group, dim=0)         # [heads, L, hd]
        vs = vs.transpose(0, 1).repeat_interleave(group, dim=0)
        mask = torch.arange(L, device=q.device)[None, :] <= torch.arange(L - ql, L, device=q.device)[:, None]
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask)
        outs.append(o.transpose(0, 1).reshape(ql, -1))
        start += ql
    return torch.cat(outs, dim=0)
