"""lora_shrink: z[i, t, :r] = x[t] · A_iᵀ for every token t with an adapter (see reference.py).

One launch covers every module of a fused group (q/k/v or gate/up share x), every adapter
of the step and every rank 1..256: a program reads its adapter's rank and row table and
masks past the rank. A's rows are read in place from the pool through the row table.
- prefill (`_shrink_sgmv`): a program takes BLOCK_M tokens of one segment (tokens that
  share an adapter) × BLOCK_R ranks of one module, so an A tile is read once per BLOCK_M tokens;
- decode (`_shrink_bgmv`): a program takes one token × BLOCK_R ranks of one module.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from ._triton import check_common, small_tensor, upcast
from .configs import launch_config
from .metadata import LoraKernelMeta


@triton.jit
def _shrink_sgmv(x_ptr, z_ptr, pool_ptr, rows_ptr, ranks_ptr, order_ptr, seg_start_ptr,
                 seg_slot_ptr, mods_ptr, K, layer_off, slot_width, stride_xm, stride_zi,
                 stride_zm, rows_s, rows_l, rows_m, ranks_s, ranks_l, layer, n_rblocks,
                 BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                 UPCAST: tl.constexpr):
    seg = tl.program_id(0)
    i = tl.program_id(2) // n_rblocks
    r0 = (tl.program_id(2) % n_rblocks) * BLOCK_R
    start = tl.load(seg_start_ptr + seg)
    end = tl.load(seg_start_ptr + seg + 1)
    m0 = start + tl.program_id(1) * BLOCK_M
    slot = tl.load(seg_slot_ptr + seg).to(tl.int64)
    mod = tl.load(mods_ptr + i)
    rank = tl.load(ranks_ptr + slot * ranks_s + layer * ranks_l + mod)
    if (m0 < end) & (r0 < rank):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < end
        toks = tl.load(order_ptr + offs_m, mask=m_ok, other=0).to(tl.int64)
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_ok = offs_r < rank
        # rows[slot, layer, mod, 0 (A), r]: the slot where row r of A starts
        row_slot = tl.load(rows_ptr + slot * rows_s + layer * rows_l + mod * rows_m + offs_r,
                           mask=r_ok, other=0).to(tl.int64)
        a_base = layer_off + row_slot * slot_width
        acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            xt = tl.load(x_ptr + toks[:, None] * stride_xm + offs_k[None, :],
                         mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            at = tl.load(pool_ptr + a_base[None, :] + offs_k[:, None],
                         mask=r_ok[None, :] & k_ok[:, None], other=0.0)   # [BLOCK_K, BLOCK_R]
            if UPCAST:
                acc += tl.dot(xt.to(tl.float32), at.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(xt, at)
        tl.store(z_ptr + i * stride_zi + toks[:, None] * stride_zm + offs_r[None, :], acc,
                 mask=m_ok[:, None] & r_ok[None, :])


@triton.jit
def _shrink_bgmv(x_ptr, z_ptr, pool_ptr, rows_ptr, ranks_ptr, order_ptr, token_slot_ptr,
                 mods_ptr, K, layer_off, slot_width, stride_xm, stride_zi, stride_zm, rows_s,
                 rows_l, rows_m, ranks_s, ranks_l, layer, n_rblocks,
                 BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    n = tl.program_id(0)
    i = tl.program_id(1) // n_rblocks
    r0 = (tl.program_id(1) % n_rblocks) * BLOCK_R
    tok = tl.load(order_ptr + n).to(tl.int64)
    slot = tl.load(token_slot_ptr + n).to(tl.int64)
    mod = tl.load(mods_ptr + i)
    rank = tl.load(ranks_ptr + slot * ranks_s + layer * ranks_l + mod)
    if r0 < rank:
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_ok = offs_r < rank
        row_slot = tl.load(rows_ptr + slot * rows_s + layer * rows_l + mod * rows_m + offs_r,
                           mask=r_ok, other=0).to(tl.int64)
        a_base = layer_off + row_slot * slot_width
        acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            xv = tl.load(x_ptr + tok * stride_xm + offs_k, mask=k_ok, other=0.0).to(tl.float32)
            at = tl.load(pool_ptr + a_base[:, None] + offs_k[None, :],
                         mask=r_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(at * xv[None, :], axis=1)
        tl.store(z_ptr + i * stride_zi + tok * stride_zm + offs_r, acc, mask=r_ok)


def lora_shrink(x: torch.Tensor, pool: torch.Tensor, meta: LoraKernelMeta, layer: int,
                modules: Sequence[int], slot_width: int,
                config: dict[str, int] | None = None) -> torch.Tensor:
    """z [len(modules), T, meta.max_rank] float32; the semantics are lora_shrink_ref's."""
    if x.dim() != 2 or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous [tokens, in] matrix, got {tuple(x.shape)}")
    check_common(pool, meta, layer, modules, x.dtype, x.device)
    T, K = x.shape
    if T != meta.num_tokens:
        raise ValueError(f"x has {T} tokens, the step's metadata {meta.num_tokens}")
    z = torch.zeros(len(modules), T, max(meta.max_rank, 1), dtype=torch.float32, device=x.device)
    if meta.n_active == 0:
        return z
    phase = "decode" if meta.decode else "prefill"
    cfg = config or launch_config("shrink", phase, meta.max_rank)
    n_rblocks = triton.cdiv(meta.max_rank, cfg["BLOCK_R"])
    mods = small_tensor(modules, x.device)
    rows, ranks = meta.rows, meta.ranks
    common = (K, layer * pool.stride(0), slot_width, x.stride(0), z.stride(0), z.stride(1),
              rows.stride(0), rows.stride(1), rows.stride(2), ranks.stride(0), ranks.stride(1),
              layer, n_rblocks)
    if phase == "decode":
        grid = (meta.n_active, len(modules) * n_rblocks)
        _shrink_bgmv[grid](x, z, pool, rows, ranks, meta.order, meta.token_slot, mods, *common,
                           BLOCK_R=cfg["BLOCK_R"], BLOCK_K=cfg["BLOCK_K"],
                           num_warps=cfg.get("num_warps", 4))
    else:
        grid = (meta.n_segments, triton.cdiv(meta.max_seg_len, cfg["BLOCK_M"]),
                len(modules) * n_rblocks)
        _shrink_sgmv[grid](x, z, pool, rows, ranks, meta.order, meta.seg_start, meta.seg_slot,
                           mods, *common, BLOCK_M=cfg["BLOCK_M"], BLOCK_R=cfg["BLOCK_R"],
                           BLOCK_K=cfg["BLOCK_K"], UPCAST=upcast(x.dtype),
                           num_warps=cfg.get("num_warps", 4))
    return z
