"""One adapter version: its id and the digest of its files.

The store stamps each adapter it offers with `adapter_digest` over the sha256 of
its files, and the worker computes the same digest over the files it received,
so the two sides name one version of an adapter with one string.

The digest is sha256 over the concatenated lowercase hex sha256 of each file, in
file-name order. For the store's two files (adapter_config.json,
adapter_model.safetensors) name order is the order the store always hashed them
in, so digests the store published before this module existed are unchanged.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

_HEX = frozenset("0123456789abcdef")


def adapter_digest(file_sha256: Mapping[str, str]) -> str:
    """Digest of one adapter version from {file name: hex sha256 of that file}."""
    if not file_sha256:
        raise ValueError("an adapter digest needs at least one file")
    for name, h in file_sha256.items():
        if len(h) != 64 or not set(h) <= _HEX:
            raise ValueError(f"file {name!r}: {h!r} is not a lowercase hex sha256")
    joined = "".join(file_sha256[name] for name in sorted(file_sha256))
    return hashlib.sha256(joined.encode()).hexdigest()


@dataclass(frozen=True)
class AdapterRef:
    """An adapter id and the digest of the version meant (empty: any version)."""

    adapter_id: str
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.adapter_id:
            raise ValueError("adapter_id must not be empty")

    @classmethod
    def of_files(cls, adapter_id: str, file_sha256: Mapping[str, str]) -> "AdapterRef":
        return cls(adapter_id, adapter_digest(file_sha256))

    def matches(self, other: "AdapterRef") -> bool:
        """Same adapter, and the same version unless either side leaves the version open."""
        return (self.adapter_id == other.adapter_id
                and (not self.digest or not other.digest or self.digest == other.digest))

    def __str__(self) -> str:
        return f"{self.adapter_id}@{self.digest[:12]}" if self.digest else self.adapter_id
