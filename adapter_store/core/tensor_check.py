"""Finds NaN or ±Inf values in a safetensors file's float tensors, without torch.

Works through a ranged reader (`read(offset, length)`) over the tensors a parsed
header lists, in bounded slices, so it runs on any backend and never holds more
than a slice. bfloat16 has no numpy dtype, so its values are checked by their
bits: all exponent bits set means Inf or NaN.
"""
from __future__ import annotations

import numpy as np

from .safetensors_header import ReadRange, TensorMeta

_FLOATS = {"F64": np.float64, "F32": np.float32, "F16": np.float16}
SLICE_BYTES = 4 << 20


def _finite(data: bytes, dtype: str) -> bool:
    if dtype == "BF16":
        bits = np.frombuffer(data, dtype="<u2")
        return not bool(((bits & 0x7F80) == 0x7F80).any())
    return bool(np.isfinite(np.frombuffer(data, dtype=np.dtype(_FLOATS[dtype]).newbyteorder("<"))).all())


async def non_finite_tensors(read: ReadRange, tensors: dict[str, TensorMeta], data_start: int
                             ) -> list[str]:
    """Names of the float tensors holding a NaN or ±Inf; `data_start` is where the data
    section begins in the file (8 + the header's length)."""
    bad = []
    for name, t in sorted(tensors.items(), key=lambda kv: kv[1].begin):
        if t.dtype != "BF16" and t.dtype not in _FLOATS:
            continue  # integer and bool tensors hold no NaN
        item = 2 if t.dtype == "BF16" else np.dtype(_FLOATS[t.dtype]).itemsize
        step = max(item, SLICE_BYTES - SLICE_BYTES % item)
        for o in range(t.begin, t.end, step):
            n = min(step, t.end - o)
            if not _finite(await read(data_start + o, n), t.dtype):
                bad.append(name)
                break
    return bad


def non_finite_in_buffer(buf: bytes, tensors: dict[str, TensorMeta], data_start: int) -> list[str]:
    """The same check over a file held in memory (a push)."""
    bad = []
    for name, t in tensors.items():
        if (t.dtype == "BF16" or t.dtype in _FLOATS) and t.end > t.begin:
            if not _finite(bytes(buf[data_start + t.begin:data_start + t.end]), t.dtype):
                bad.append(name)
    return sorted(bad)
