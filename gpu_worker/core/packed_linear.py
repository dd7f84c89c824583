"""Weights pre-packed for MKL's fp32 GEMM, for decode steps of a steady batch size (CPU).

A plain `x @ W^T` makes MKL repack panels of W into its kernel layout on every call. At
decode x has one row per running request, so that repacking costs about as much as the
multiply itself. `torch.ops.mkl._mkl_reorder_linear_weight(W, M)` packs W once for inputs
of M rows and `torch.ops.mkl._mkl_linear` multiplies with the packed copy (any other row
count falls back to the plain product inside the op). The packed kernel is a GEMM like the
plain one, but not always the same one: for some row counts and shapes MKL's plain call takes
another kernel, so the two agree to fp32 rounding, not always bit for bit (at 16 rows on
SmolLM2's shapes they are identical). Token parity with HF + PEFT is what the parity tests
check, with packing on (the default).

A packed set is as large as the weights again, so at most one is kept: the one for the
decode batch size that has held for `steady_steps` forward passes in a row. A batch that
changes size every few steps never pays for packing; one that settles is packed once. A
pack stalls one step for about as long as several decode steps (it rewrites every weight),
so after one, the next waits at least `min_gap_steps` forward passes: a server whose batch
size keeps changing repacks at most that often, however it churns.
"""
from __future__ import annotations

import torch


def available(device: torch.device) -> bool:
    """MKL's packed GEMM is there: a CPU build of torch with MKL."""
    return (device.type == "cpu" and torch.backends.mkl.is_available()
            and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"))


class PackedWeights:
    def __init__(self, weights: dict[str, torch.Tensor], steady_steps: int = 4,
                 min_gap_steps: int = 256):
        """`weights`: name -> W [out, in] (float32, contiguous), the matrices to pack."""
        if steady_steps <= 0 or min_gap_steps < 0:
            raise ValueError(f"steady_steps must be positive and min_gap_steps >= 0, got "
                             f"{steady_steps}, {min_gap_steps}")
        self.weights, self.steady_steps, self.min_gap_steps = weights, steady_steps, min_gap_steps
        self.rows: int | None = None            # the row count the packed set is for
        self._packed: dict[str, torch.Tensor] = {}
        self._last, self._run = 0, 0
        self._since_pack: int | None = None     # forward passes since the last pack
        self.packs = 0                           # packed sets built so far (observability)

    def observe(self, rows: int) -> None:
        """A forward pass of `rows` tokens is about to run: pack for it once it is steady."""
        self._run = self._run + 1 if rows == self._last else 1
        self._last = rows
        if self._since_pack is not None:
            self._since_pack += 1
        gap_ok = self._since_pack is None or self._since_pack >= self.min_gap_steps
        if rows != self.rows and self._run >= self.steady_steps and gap_ok:
            self._packed = {}   # free the old set before building the new one
            self._packed = {n: torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
                            for n, w in self.weights.items()}
            self.rows = rows
            self.packs += 1
            self._since_pack = 0

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x [T, in] @ W^T, through the packed copy when there is one for T rows."""
        w = self.weights[name]
        if x.shape[0] == self.rows and x.dtype == torch.float32:
            return torch.ops.mkl._mkl_linear(x, self._packed[name], w, None, self.rows)
        return x @ w.t()
