"""Device cost model: how long an engine step and an adapter copy take on one GPU.

A profile (sim/profiles/<name>.json) holds only cited numbers: the model's shapes, the
device's spec sheet (memory size and bandwidth, peak fp16 tensor FLOP rate, the
host-to-device link's spec rate) and, for the A40, the published single-request TTFT per
LoRA rank. Nothing in a profile or here depends on how requests are scheduled or cached.

API (stable; gpu_worker's --sim-profile mode and the simulator use it):

    cm = CostModel.from_profile("a40-llama7b")        # or a path to a JSON file
    cm.step_s(prefill=[(tokens, rank), ...], decode=[rank, ...], context_tokens=C,
              distinct_ranks=[rank of each distinct adapter in the step])
    cm.prefill_s(tokens, rank=0)                     # one request's prefill step, alone
    cm.decode_s(batch, total_context, ranks)         # a decode-only step
    cm.copy_s(nbytes)                                # one adapter copy over the link, alone
    cm.pool_pages(block_size)                        # unified pool capacity in KV pages
    cm.adapter_bytes(rank), cm.kv_bytes_per_token, cm.page_bytes(block_size)

Step time (one forward pass over every token of the step; a roofline sum):

    step = (weights + KV of the context read + weights of each distinct adapter) / mem_bw
           + new_tokens * 2 * params / F  +  sum_i tokens_i * rank_i * lora_flops_per_rank / F

where F is the achieved FLOP rate. Adapter copies are separate: bytes / h2d on ONE link
shared by all copies of a worker (the simulator queues them), overlapping compute, as the
worker's side-stream copy does.

Calibration (a40-llama7b). Two numbers are not on a spec sheet: the achieved FLOP rate F
and the achieved host-to-device rate h2d. Both are fitted, by least squares, to the
paper's single-request TTFT (74/78/88/107/144 ms for ranks 8..128) modelled as
copy(adapter) + one prefill step of the reference prompt (the mean scaled input of the
paper workload, sim/workload.py). The TTFT grows by ~0.58 ms per unit of rank; the LoRA
FLOPs of a 231-token prompt are ~0.01 ms per rank at any sane F, so the fit attributes
the slope to the copy: h2d comes out ~3.6 GB/s (11% of PCIe 4.0 x16's 31.5 GB/s spec,
i.e. a pageable host copy) and F ~62 TFLOPS (41% of the A40's 149.7 TFLOPS peak). Both
are printed by `fitted()`. A profile without its own TTFT figures (h100-llama7b) takes
those two efficiencies (achieved / spec) from the profile named in `transfer_from`.
Not modelled: attention FLOPs (small at these lengths), tensor parallelism.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

PROFILE_DIR = Path(__file__).with_name("profiles")


def profile_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        return p
    q = PROFILE_DIR / f"{name_or_path}.json"
    if not q.exists():
        known = sorted(x.stem for x in PROFILE_DIR.glob("*.json"))
        raise ValueError(f"unknown device profile {name_or_path!r}; known: {', '.join(known)}")
    return q


def load_profile(name_or_path: str | Path) -> dict:
    return json.loads(profile_path(name_or_path).read_text())


@dataclass(frozen=True)
class Fitted:
    achieved_flops: float
    h2d_bytes_per_s: float
    compute_efficiency: float   # achieved / peak
    link_efficiency: float      # achieved / spec
    reference_prompt_tokens: int
    max_rel_error: float        # of the fit over the calibration points (0 when transferred)


class CostModel:
    def __init__(self, profile: dict, fitted: Fitted | None = None):
        self.profile = profile
        self.name: str = profile["name"]
        m, d = profile["model"], profile["device"]
        self.num_layers = int(m["num_layers"])
        self.hidden = int(m["hidden_size"])
        self.kv_dim = int(m["num_kv_heads"]) * int(m["head_dim"])
        self.dtype_bytes = int(m["dtype_bytes"])
        self.num_params = int(m["num_params"])
        self.max_context = int(m["max_context"])
        self.lora_modules: dict[str, tuple[int, int]] = {
            k: (int(v[0]), int(v[1])) for k, v in m["lora_target_modules"].items()}
        self.weight_bytes = self.num_params * self.dtype_bytes
        self.kv_bytes_per_token = 2 * self.num_layers * self.kv_dim * self.dtype_bytes
        self.memory_bytes = float(d["memory_bytes"])
        self.mem_bw = float(d["memory_bandwidth_bytes_per_s"])
        self.peak_flops = float(d["peak_fp16_tensor_flops"])
        self.h2d_spec = float(d["host_to_device_spec_bytes_per_s"])
        self.memory_utilization = float(d["memory_utilization"])
        if not 0 < self.memory_utilization <= 1:
            raise ValueError(f"{self.name}: memory_utilization must be in (0, 1]")
        # elements per unit of rank over all layers (A: r x in, B: r x out per module)
        self._lora_elems_per_rank = self.num_layers * sum(i + o for i, o in self.lora_modules.values())
        self.fitted = fitted or self._calibrate()
        self.achieved_flops = self.fitted.achieved_flops
        self.h2d_bytes_per_s = self.fitted.h2d_bytes_per_s

    @classmethod
    def from_profile(cls, name_or_path: str | Path) -> "CostModel":
        return cls(load_profile(name_or_path))

    # -- sizes ----------------------------------------------------------------
    def adapter_bytes(self, rank: int) -> int:
        """Bytes of a rank-r adapter's weights on the profile's target modules."""
        return rank * self._lora_elems_per_rank * self.dtype_bytes

    def page_bytes(self, block_size: int) -> int:
        """One unified-pool page: one KV block (block_size tokens of K and V, every layer)."""
        return block_size * self.kv_bytes_per_token

    def pool_bytes(self) -> float:
        return self.memory_bytes * self.memory_utilization - self.weight_bytes

    def pool_pages(self, block_size: int) -> int:
        pages = int(self.pool_bytes() // self.page_bytes(block_size))
        if pages <= 0:
            raise ValueError(f"{self.name}: the weights leave no room for a pool")
        return pages

    # -- times ----------------------------------------------------------------
    def step_s(self, prefill: Sequence[tuple[int, int]] = (), decode: Sequence[int] = (),
               context_tokens: int = 0, distinct_ranks: Iterable[int] | None = None) -> float:
        """One forward pass: `prefill` = (prompt tokens, rank) per prefilling request, `decode`
        = the rank of each decoding request (rank 0: base model), `context_tokens` = KV
        tokens the step's attention reads, `distinct_ranks` = rank of each distinct adapter
        in the step (default: every request's adapter counted once)."""
        new_tokens = sum(n for n, _ in prefill) + len(decode)
        if new_tokens == 0:
            return 0.0
        rank_tokens = sum(n * r for n, r in prefill) + sum(decode)
        if distinct_ranks is None:
            distinct_ranks = [r for _, r in prefill] + list(decode)
        adapter_read = sum(self.adapter_bytes(r) for r in distinct_ranks if r > 0)
        memory = (self.weight_bytes + context_tokens * self.kv_bytes_per_token + adapter_read) / self.mem_bw
        flops = new_tokens * 2 * self.num_params + rank_tokens * 2 * self._lora_elems_per_rank
        return memory + flops / self.achieved_flops

    def prefill_s(self, tokens: int, rank: int = 0) -> float:
        return self.step_s(prefill=[(tokens, rank)], context_tokens=tokens)

    def decode_s(self, batch: int, total_context: int, ranks: Sequence[int] | None = None) -> float:
        ranks = list(ranks) if ranks is not None else [0] * batch
        if len(ranks) != batch:
            raise ValueError(f"need one rank per decoding request: {batch}, got {len(ranks)}")
        return self.step_s(decode=ranks, context_tokens=total_context)

    def copy_s(self, nbytes: int) -> float:
        """One copy alone on the host-to-device link (queueing is the simulator's)."""
        return nbytes / self.h2d_bytes_per_s

    def single_request_ttft_s(self, tokens: int, rank: int) -> float:
        """A cold request alone: its adapter copy, then its prefill step."""
        return (self.copy_s(self.adapter_bytes(rank)) if rank else 0.0) + self.prefill_s(tokens, rank)

    # -- calibration ----------------------------------------------------------
    def _calibrate(self) -> Fitted:
        cal = self.profile.get("calibration", {})
        if "transfer_from" in cal:
            src = CostModel.from_profile(cal["transfer_from"]).fitted
            return Fitted(src.compute_efficiency * self.peak_flops, src.link_efficiency * self.h2d_spec,
                          src.compute_efficiency, src.link_efficiency, src.reference_prompt_tokens, 0.0)
        if "achieved_flops" in cal:   # a profile measured on a device (clients/profile.py)
            f, h = float(cal["achieved_flops"]), float(cal["h2d_bytes_per_s"])
            return Fitted(f, h, f / self.peak_flops, h / self.h2d_spec,
                          int(cal.get("reference_prompt_tokens", 0)), 0.0)
        points = {int(r): ms / 1000.0 for r, ms in cal["single_request_ttft_ms"].items()}
        from .workload import reference_prompt_tokens
        n = reference_prompt_tokens()
        # ttft(r) = a0(r) + x * A(r) + y * B(r); x = 1 / F, y = 1 / h2d
        rows = []
        for r, t in points.items():
            b = self.adapter_bytes(r)
            a0 = (self.weight_bytes + n * self.kv_bytes_per_token + b) / self.mem_bw
            a = n * 2 * self.num_params + n * r * 2 * self._lora_elems_per_rank
            rows.append((a, float(b), t - a0))
        saa = sum(a * a for a, _, _ in rows)
        sbb = sum(b * b for _, b, _ in rows)
        sab = sum(a * b for a, b, _ in rows)
        sat = sum(a * t for a, _, t in rows)
        sbt = sum(b * t for _, b, t in rows)
        det = saa * sbb - sab * sab
        x, y = (sat * sbb - sbt * sab) / det, (saa * sbt - sab * sat) / det
        if not (x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"{self.name}: calibration points give no positive FLOP/link rate")
        flops, h2d = 1.0 / x, 1.0 / y
        err = max(abs(a0r + x * a + y * b - t_true) / t_true for (a, b, _), a0r, t_true in
                  ((row, points[r] - row[2], points[r]) for row, r in zip(rows, points)))
        return Fitted(flops, h2d, flops / self.peak_flops, h2d / self.h2d_spec, n, err)

    def describe(self) -> dict:
        f = self.fitted
        return {"profile": self.name, "achieved_tflops": f.achieved_flops / 1e12,
                "compute_efficiency": f.compute_efficiency, "h2d_gb_per_s": f.h2d_bytes_per_s / 1e9,
                "link_efficiency": f.link_efficiency, "reference_prompt_tokens": f.reference_prompt_tokens,
                "fit_max_rel_error": f.max_rel_error, "pool_pages_16": self.pool_pages(16),
                "weight_read_ms": self.weight_bytes / self.mem_bw * 1000.0}
