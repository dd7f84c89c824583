"""lora_expand: y[t, cols of module i] += z[i, t, :r] · B_iᵀ · scale for every token t with an
adapter (see reference.py).

One launch covers every module of a fused group (their outputs side by side in y, of
different widths: q vs k/v), every adapter of the step and every rank 1..256. B^T's rows
are read in place from the pool through the row table.
- prefill (`_expand_sgmv`): a program takes BLOCK_M tokens of one segment × BLOCK_N
  output columns of one module and loops over the adapter's rank;
- decode (`_expand_bgmv`): a program takes one token × BLOCK_N columns of one module.
Programs write disjoint tiles of y, so no atomics are needed.
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
def _expand_sgmv(z_ptr, y_ptr, pool_ptr, rows_ptr, ranks_ptr, scales_ptr, order_ptr,
                 seg_start_ptr, seg_slot_ptr, mods_ptr, widths_ptr, col_offs_ptr, layer_off,
                 slot_width, stride_zi, stride_zm, stride_ym, rows_s, rows_l, rows_m, rows_mat,
                 ranks_s, ranks_l, layer, n_nblocks,
                 BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                 UPCAST: tl.constexpr):
    seg = tl.program_id(0)
    i = tl.program_id(2) // n_nblocks
    n0 = (tl.program_id(2) % n_nblocks) * BLOCK_N
    start = tl.load(seg_start_ptr + seg)
    end = tl.load(seg_start_ptr + seg + 1)
    m0 = start + tl.program_id(1) * BLOCK_M
    slot = tl.load(seg_slot_ptr + seg).to(tl.int64)
    mod = tl.load(mods_ptr + i)
    N = tl.load(widths_ptr + i)
    rank = tl.load(ranks_ptr + slot * ranks_s + layer * ranks_l + mod)
    if (m0 < end) & (n0 < N) & (rank > 0):
        scale = tl.load(scales_ptr + slot * ranks_s + layer * ranks_l + mod)
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < end
        toks = tl.load(order_ptr + offs_m, mask=m_ok, other=0).to(tl.int64)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        row_base = rows_ptr + slot * rows_s + layer * rows_l + mod * rows_m + rows_mat  # B^T rows
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for r0 in range(0, rank, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            r_ok = offs_r < rank
            zt = tl.load(z_ptr + i * stride_zi + toks[:, None] * stride_zm + offs_r[None, :],
                         mask=m_ok[:, None] & r_ok[None, :], other=0.0)
            row_slot = tl.load(row_base + offs_r, mask=r_ok, other=0).to(tl.int64)
            bt = tl.load(pool_ptr + layer_off + row_slot[:, None] * slot_width + offs_n[None, :],
                         mask=r_ok[:, None] & n_ok[None, :], other=0.0)   # [BLOCK_R, BLOCK_N]
            if UPCAST:
                acc += tl.dot(zt, bt.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(zt.to(bt.dtype), bt)
        col = tl.load(col_offs_ptr + i)
        y_ptrs = y_ptr + toks[:, None] * stride_ym + col + offs_n[None, :]
        ok = m_ok[:, None] & n_ok[None, :]
        y = tl.load(y_ptrs, mask=ok, other=0.0)
        tl.store(y_ptrs, (y.to(tl.float32) + acc * scale).to(y.dtype), mask=ok)


@triton.jit
def _expand_bgmv(z_ptr, y_ptr, pool_ptr, rows_ptr, ranks_ptr, scales_ptr, order_ptr,
                 token_slot_ptr, mods_ptr, widths_ptr, col_offs_ptr, layer_off, slot_width,
                 stride_zi, stride_zm, stride_ym, rows_s, rows_l, rows_m, rows_mat, ranks_s,
                 ranks_l, layer, n_nblocks, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    n = tl.program_id(0)
    i = tl.program_id(1) // n_nblocks
    n0 = (tl.program_id(1) % n_nblocks) * BLOCK_N
    tok = tl.load(order_ptr + n).to(tl.int64)
    slot = tl.load(token_slot_ptr + n).to(tl.int64)
    mod = tl.load(mods_ptr + i)
    N = tl.load(widths_ptr + i)
    rank = tl.load(ranks_ptr + slot * ranks_s + layer * ranks_l + mod)
    if (n0 < N) & (rank > 0):
        scale = tl.load(scales_ptr + slot * ranks_s + layer * ranks_l + mod)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        row_base = rows_ptr + slot * rows_s + layer * rows_l + mod * rows_m + rows_mat
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for r0 in range(0, rank, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            r_ok = offs_r < rank
            zv = tl.load(z_ptr + i * stride_zi + tok * stride_zm + offs_r, mask=r_ok, other=0.0)
            row_slot = tl.load(row_base + offs_r, mask=r_ok, other=0).to(tl.int64)
            bt = tl.load(pool_ptr + layer_off + row_slot[:, None] * slot_width + offs_n[None, :],
                         mask=r_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(zv[:, None] * bt, axis=0)
        col = tl.load(col_offs_ptr + i)
        y_ptrs = y_ptr + tok * stride_ym + col + offs_n
        y = tl.load(y_ptrs, mask=n_ok, other=0.0)
        tl.store(y_ptrs, (y.to(tl.float32) + acc * scale).to(y.dtype), mask=n_ok)


def lora_expand(z: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, meta: LoraKernelMeta,
                layer: int, modules: Sequence[int], out_widths: Sequence[int], slot_width: int,
                config: dict[str, int] | None = None) -> None:
    """In place on y; the semantics are lora_expand_ref's."""
    if y.dim() != 2 or y.stride(1) != 1:
        raise ValueError("y must be a [tokens, out] matrix with unit column stride")
    check_common(pool, meta, layer, modules, y.dtype, y.device)
    if len(out_widths) != len(modules) or sum(out_widths) != y.shape[1]:
        raise ValueError(f"out_widths {list(out_widths)} must give one width per module and sum "
                         f"to y's {y.shape[1]} columns")
    if (z.dtype != torch.float32 or not z.is_contiguous()
            or tuple(z.shape) != (len(modules), y.shape[0], max(meta.max_rank, 1))):
        raise ValueError(f"z must be lora_shrink's contiguous float32 "
                         f"[{len(modules)}, {y.shape[0]}, {max(meta.max_rank, 1)}], got "
                         f"{z.dtype} {tuple(z.shape)}")
    if y.shape[0] != meta.num_tokens:
        raise ValueError(f"y has {y.shape[0]} tokens, the step's metadata {meta.num_tokens}")
    if meta.n_active == 0:
        return
    phase = "decode" if meta.decode else "prefill"
    cfg = config or launch_config("expand", phase, meta.max_rank)
    n_nblocks = triton.cdiv(max(out_widths), cfg["BLOCK_N"])
    mods = small_tensor(modules, y.device)
    widths = small_tensor(out_widths, y.device)
    col_offs = small_tensor([sum(out_widths[:i]) for i in range(len(out_widths))], y.device)
    rows, ranks = meta.rows, meta.ranks
    common = (mods, widths, col_offs, layer * pool.stride(0), slot_width, z.stride(0), z.stride(1),
              y.stride(0), rows.stride(0), rows.stride(1), rows.stride(2), rows.stride(3),
              ranks.stride(0), ranks.stride(1), layer, n_nblocks)
    if phase == "decode":
        grid = (meta.n_active, len(modules) * n_nblocks)
        _expand_bgmv[grid](z, y, pool, rows, ranks, meta.scales, meta.order, meta.token_slot,
                           *common, BLOCK_R=cfg["BLOCK_R"], BLOCK_N=cfg["BLOCK_N"],
                           num_warps=cfg.get("num_warps", 4))
    else:
        grid = (meta.n_segments, triton.cdiv(meta.max_seg_len, cfg["BLOCK_M"]),
                len(modules) * n_nblocks)
        _expand_sgmv[grid](z, y, pool, rows, ranks, meta.scales, meta.order, meta.seg_start,
                           meta.seg_slot, *common, BLOCK_M=cfg["BLOCK_M"], BLOCK_R=cfg["BLOCK_R"],
                           BLOCK_N=cfg["BLOCK_N"], UPCAST=upcast(y.dtype),
                           num_warps=cfg.get("num_warps", 4))
