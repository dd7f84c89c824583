"""Read tensor names and shapes from a .safetensors file without loading it.

The format starts with an 8-byte little-endian header length followed by a JSON
header {name: {"dtype", "shape", "data_offsets"}}; reading only that keeps the
store free of torch and cheap on large adapters.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFormatError(ValueError):
    pass


def read_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsFormatError(f"{path.name}: file too short to be safetensors")
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or n > _MAX_HEADER:
            raise SafetensorsFormatError(f"{path.name}: implausible header length {n}")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise SafetensorsFormatError(f"{path.name}: header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path.name}: header is not a JSON object")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            shapes[name] = tuple(int(d) for d in meta["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsFormatError(f"{path.name}: tensor {name!r} has no valid shape") from e
    return shapes
