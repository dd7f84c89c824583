"""Launch configurations of the LoRA kernels, kept as data and keyed by shape.

For each (kernel, phase), rows of (largest rank in the step, config); the first row whose
rank covers the step's largest rank is used. `phase` is "decode" (one token per request,
the BGMV-like kernels) or "prefill" (segments of tokens sharing an adapter, SGMV-like).
These are starting points chosen for memory-bound shapes (Llama-7B: K, N in 4096..11008);
they have not been tuned on a GPU, since none was available when they were written.
"""
from __future__ import annotations

LAUNCH_CONFIGS: dict[tuple[str, str], list[tuple[int, dict[str, int]]]] = {
    ("shrink", "prefill"): [
        (16, {"BLOCK_M": 64, "BLOCK_R": 16, "BLOCK_K": 64, "num_warps": 4}),
        (64, {"BLOCK_M": 64, "BLOCK_R": 64, "BLOCK_K": 64, "num_warps": 4}),
        (256, {"BLOCK_M": 64, "BLOCK_R": 64, "BLOCK_K": 32, "num_warps": 4}),
    ],
    ("shrink", "decode"): [
        (16, {"BLOCK_R": 16, "BLOCK_K": 256, "num_warps": 4}),
        (64, {"BLOCK_R": 64, "BLOCK_K": 128, "num_warps": 4}),
        (256, {"BLOCK_R": 64, "BLOCK_K": 128, "num_warps": 8}),
    ],
    ("expand", "prefill"): [
        (16, {"BLOCK_M": 64, "BLOCK_R": 16, "BLOCK_N": 128, "num_warps": 4}),
        (64, {"BLOCK_M": 64, "BLOCK_R": 32, "BLOCK_N": 128, "num_warps": 4}),
        (256, {"BLOCK_M": 64, "BLOCK_R": 32, "BLOCK_N": 64, "num_warps": 4}),
    ],
    ("expand", "decode"): [
        (16, {"BLOCK_R": 16, "BLOCK_N": 256, "num_warps": 4}),
        (64, {"BLOCK_R": 32, "BLOCK_N": 256, "num_warps": 4}),
        (256, {"BLOCK_R": 32, "BLOCK_N": 128, "num_warps": 8}),
    ],
}


def launch_config(kernel: str, phase: str, max_rank: int) -> dict[str, int]:
    rows = LAUNCH_CONFIGS[(kernel, phase)]
    for rank, cfg in rows:
        if max_rank <= rank:
            return dict(cfg)
    return dict(rows[-1][1])
