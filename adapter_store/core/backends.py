"""Where adapter bytes live: one async object interface, no local paths in it.

Keys are `/`-separated strings (`<name>/adapter_config.json`). Every backend
answers the same five calls; a reader never learns whether the bytes came from
a folder, memory or an S3 bucket. `ObjectInfo.etag` changes whenever an
object's content may have changed (S3 ETag or version id; on a folder the
file's size, mtime and inode), so the catalog re-hashes only changed objects.

Errors: a missing object is `ObjectMissing`; a backend that cannot be reached
(network down, 5xx, timeouts) is `BackendUnavailable`, which callers treat as
transient and retry.
"""
from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class ObjectMissing(KeyError):
    pass


class BackendUnavailable(ConnectionError):
    """The object store could not be reached or answered with a server error."""


class InvalidKey(ValueError):
    pass


class ObjectBackend(Protocol):
    kind: str

    async def head(self, key: str) -> ObjectInfo | None: ...
    async def read(self, key: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset` (fewer only at the end of the object)."""
        ...
    async def write(self, key: str, data: bytes) -> ObjectInfo: ...
    async def delete(self, key: str) -> None: ...
    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key."""
        ...


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key \
            or "\x00" in key:
        raise InvalidKey(f"object key {key!r} is not a clean relative key")
    return key


class MemoryBackend:
    """Objects in a dict: for unit tests. `fail` makes every call raise BackendUnavailable."""

    kind = "memory"

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._versions = itertools.count(1)
        self.fail = False
        self.reads = 0  # ranged reads served, for tests of the hot cache and header reads

    def _check(self) -> None:
        if self.fail:
            raise BackendUnavailable("memory backend set to fail")

    async def head(self, key: str) -> ObjectInfo | None:
        self._check()
        hit = self._objects.get(check_key(key))
        return None if hit is None else ObjectInfo(key, len(hit[0]), hit[1])

    async def read(self, key: str, offset: int, length: int) -> bytes:
        self._check()
        hit = self._objects.get(check_key(key))
        if hit is None:
            raise ObjectMissing(key)
        self.reads += 1
        return hit[0][offset:offset + length]

    async def write(self, key: str, data: bytes) -> ObjectInfo:
        self._check()
        self._objects[check_key(key)] = (bytes(data), f"m{next(self._versions)}")
        return ObjectInfo(key, len(data), self._objects[key][1])

    async def delete(self, key: str) -> None:
        self._check()
        self._objects.pop(check_key(key), None)

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        self._check()
        return [ObjectInfo(k, len(v[0]), v[1]) for k, v in sorted(self._objects.items())
                if k.startswith(prefix)]

    def corrupt(self, key: str, offset: int) -> None:
        """Flips one byte in place, keeping the etag (as silent corruption would)."""
        data, etag = self._objects[key]
        b = bytearray(data)
        b[offset] ^= 0xFF
        self._objects[key] = (bytes(b), etag)


class LocalFolderBackend:
    """Objects are files under `root`; symlinks that lead out of the root are refused."""

    kind = "local"

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"adapter folder {root} does not exist")

    def _path(self, key: str) -> Path:
        p = self.root / check_key(key)
        real = Path(os.path.realpath(p))
        if real != self.root and self.root not in real.parents:
            raise InvalidKey(f"object {key!r} resolves outside the adapter folder")
        return real

    def _info(self, key: str) -> ObjectInfo | None:
        try:
            p = self._path(key)
            st = p.stat()
        except (FileNotFoundError, NotADirectoryError, InvalidKey):
            return None
        if not p.is_file():
            return None
        return ObjectInfo(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}")

    async def head(self, key: str) -> ObjectInfo | None:
        return await asyncio.to_thread(self._info, key)

    def _read(self, key: str, offset: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError as e:
            raise ObjectMissing(key) from e

    async def read(self, key: str, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._read, key, offset, length)

    def _write(self, key: str, data: bytes) -> ObjectInfo:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, p)
        info = self._info(key)
        assert info is not None
        return info

    async def write(self, key: str, data: bytes) -> ObjectInfo:
        return await asyncio.to_thread(self._write, key, data)

    def _delete(self, key: str) -> None:
        p = self._path(key)
        p.unlink(missing_ok=True)
        # drop folders the deletion emptied, never the root itself
        for parent in p.parents:
            if parent == self.root or self.root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    def _list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        # walk only the folder the prefix names (`name/` lists one adapter, not the whole root)
        top = self.root
        if "/" in prefix:
            try:
                top = self._path(prefix.rsplit("/", 1)[0])
            except InvalidKey:
                return []
            if not top.is_dir():
                return []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = os.path.relpath(dirpath, self.root)
            for fn in filenames:
                if fn.startswith("."):
                    continue
                key = fn if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{fn}"
                if key.startswith(prefix):
                    info = self._info(key)
                    if info is not None:
                        out.append(info)
        return sorted(out, key=lambda i: i.key)

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        return await asyncio.to_thread(self._list, prefix)
