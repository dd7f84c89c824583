"""Read and check a .safetensors header with ranged reads, never the tensors.

The format: an 8-byte little-endian header length n, n bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
then the data section; offsets are relative to the data section. A header is
accepted only if it describes the file exactly: the header fits in the file,
every dtype is known, every tensor's byte range matches its shape and dtype,
lies inside the data section and overlaps no other tensor.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Awaitable, Callable

MAX_HEADER_BYTES = 100 * 1024 * 1024
# bytes per element of every dtype the safetensors format defines
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# the first ranged read takes this much, so a typical header needs one round trip
FIRST_READ_BYTES = 64 * 1024


class SafetensorsFormatError(ValueError):
    pass


@dataclass(frozen=True)
class TensorMeta:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def header_length(prefix: bytes, file_size: int, name: str = "safetensors") -> int:
    if len(prefix) < 8 or file_size < 8:
        raise SafetensorsFormatError(f"{name}: file too short to be safetensors ({file_size} bytes)")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n == 0:
        raise SafetensorsFormatError(f"{name}: header length is 0")
    if n > file_size - 8:
        raise SafetensorsFormatError(
            f"{name}: header length {n} is larger than the file ({file_size} bytes)")
    if n > MAX_HEADER_BYTES:
        raise SafetensorsFormatError(f"{name}: header length {n} exceeds {MAX_HEADER_BYTES} bytes")
    return n


def parse_header(raw: bytes, data_size: int, name: str = "safetensors") -> dict[str, TensorMeta]:
    """The tensors of a header whose JSON is `raw`, given the data section's size."""
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise SafetensorsFormatError(f"{name}: header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{name}: header is not a JSON object")
    tensors: dict[str, TensorMeta] = {}
    for tname, meta in header.items():
        if tname == "__metadata__":
            continue
        if not isinstance(meta, dict):
            raise SafetensorsFormatError(f"{name}: tensor {tname!r} has no metadata object")
        dtype = meta.get("dtype")
        if dtype not in DTYPE_BYTES:
            raise SafetensorsFormatError(f"{name}: tensor {tname!r} has unknown dtype {dtype!r}")
        shape, offs = meta.get("shape"), meta.get("data_offsets")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsFormatError(f"{name}: tensor {tname!r} has no valid shape")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and o >= 0 for o in offs)):
            raise SafetensorsFormatError(f"{name}: tensor {tname!r} has no valid data_offsets")
        begin, end = offs
        if begin > end or end > data_size:
            raise SafetensorsFormatError(
                f"{name}: tensor {tname!r} data_offsets [{begin}, {end}] are out of range "
                f"(data section is {data_size} bytes)")
        want = math.prod(shape) * DTYPE_BYTES[dtype]
        if end - begin != want:
            raise SafetensorsFormatError(
                f"{name}: tensor {tname!r} spans {end - begin} bytes but shape {shape} of "
                f"{dtype} needs {want}")
        tensors[tname] = TensorMeta(dtype, tuple(shape), begin, end)
    spans = sorted((t.begin, t.end, n) for n, t in tensors.items() if t.end > t.begin)
    for (b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise SafetensorsFormatError(f"{name}: tensors {n0!r} and {n1!r} overlap")
    return tensors


ReadRange = Callable[[int, int], Awaitable[bytes]]


async def read_header(read: ReadRange, file_size: int, name: str = "safetensors"
                      ) -> dict[str, TensorMeta]:
    """Reads only the header through `read(offset, length)`: one ranged read, two if it is large."""
    first = await read(0, min(FIRST_READ_BYTES, file_size))
    n = header_length(first, file_size, name)
    raw = first[8:8 + n]
    if len(raw) < n:
        raw += await read(8 + len(raw), n - len(raw))
    if len(raw) != n:
        raise SafetensorsFormatError(f"{name}: header ends before its stated length {n}")
    return parse_header(raw, file_size - 8 - n, name)


def tensor_shapes(tensors: dict[str, TensorMeta]) -> dict[str, tuple[int, ...]]:
    return {n: t.shape for n, t in tensors.items()}


def tensor_dtypes(tensors: dict[str, TensorMeta]) -> dict[str, str]:
    return {n: t.dtype for n, t in tensors.items()}
