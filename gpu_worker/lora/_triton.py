"""What the Triton launchers share: the interpreter switch and argument checks."""
from __future__ import annotations

import os
from typing import Sequence

import torch

from .metadata import LoraKernelMeta

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """TRITON_INTERPRET=1 runs kernels on the CPU (it must be set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def upcast(dtype: torch.dtype) -> bool:
    """Multiply in float32: always for float32 (exact, not tf32), and under the interpreter,
    whose bf16 tl.dot is wrong (triton issue #11584); else fp16/bf16 dot with fp32 accumulation."""
    return dtype == torch.float32 or interpreting()


def check_common(pool: torch.Tensor, meta: LoraKernelMeta, layer: int, modules: Sequence[int],
                 dtype: torch.dtype, device: torch.device) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"LoRA kernels take float32, float16 or bfloat16, not {dtype}")
    if pool.dim() != 3 or not pool.is_contiguous():
        raise ValueError("pool must be the contiguous [layers, pages, page_elems] storage")
    if pool.dtype != dtype or pool.device != device:
        raise ValueError(f"pool is {pool.dtype} on {pool.device}; activations are {dtype} on {device}")
    if not 0 <= layer < pool.shape[0]:
        raise ValueError(f"layer {layer} outside 0..{pool.shape[0] - 1}")
    if not modules or any(not 0 <= m < meta.rows.shape[2] for m in modules):
        raise ValueError(f"bad module indices {list(modules)}")
    if meta.device != device:
        raise ValueError(f"metadata lives on {meta.device}, activations on {device}")


_small: dict[tuple, torch.Tensor] = {}


def small_tensor(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """A tiny int64 argument tensor, built once per distinct value (no copy per launch)."""
    key = (tuple(values), str(device))
    t = _small.get(key)
    if t is None:
        t = _small[key] = torch.tensor(list(values), dtype=torch.int64, device=device)
    return t
