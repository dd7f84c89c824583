"""Chunked reading of an adapter's files for a stream, from the hot cache or the backend.

A stream may start anywhere (`start_file`, `start_offset`): a receiver whose
stream broke asks for the rest from its last good offset. Reads from the
backend run `readahead` chunks ahead of the sender, so object-store latency
overlaps with the network. A file read from its first byte that fits the hot
cache is hashed on the way; if its sha256 is not the one on record the stream
ends with AdapterCorrupt before the last chunk, and the file never enters the
cache. Files that bypass the cache are not hashed here: the receiver verifies
every file against the sha256 sent with its last chunk (one hash, not two).
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator

from .catalog import AdapterCatalog, AdapterRecord, FileRecord
from .hot_cache import HotCache


class AdapterCorrupt(Exception):
    """Stored bytes do not match the adapter's recorded sha256 or size."""


@dataclass(frozen=True)
class Chunk:
    file: FileRecord
    offset: int
    data: bytes | memoryview    # a view into the hot cache's copy: the sender copies it once
    last: bool


async def stream_adapter(catalog: AdapterCatalog, hot: HotCache, rec: AdapterRecord, *,
                         chunk_bytes: int, start_file: str = "", start_offset: int = 0,
                         readahead: int = 4) -> AsyncIterator[Chunk]:
    if chunk_bytes <= 0 or readahead <= 0:
        raise ValueError("chunk_bytes and readahead must be positive")
    names = [f.name for f in rec.files]
    if start_file and start_file not in names:
        raise ValueError(f"adapter {rec.adapter_id!r} has no file {start_file!r}")
    first = names.index(start_file) if start_file else 0
    for i, f in enumerate(rec.files[first:]):
        offset = start_offset if (start_file and i == 0) else 0
        if not 0 <= offset <= f.size_bytes:
            raise ValueError(f"offset {offset} is outside {f.name} ({f.size_bytes} bytes)")
        cached = hot.get(rec.sha256, f.name)
        if cached is not None:
            async for c in _from_memory(f, cached, offset, chunk_bytes):
                yield c
        else:
            async for c in _from_backend(catalog, hot, rec, f, offset, chunk_bytes, readahead):
                yield c


async def _from_memory(f: FileRecord, data: bytes, offset: int, chunk_bytes: int
                       ) -> AsyncIterator[Chunk]:
    view = memoryview(data)
    if offset >= f.size_bytes:
        yield Chunk(f, offset, b"", True)
        return
    while offset < f.size_bytes:
        end = min(offset + chunk_bytes, f.size_bytes)
        yield Chunk(f, offset, view[offset:end], end >= f.size_bytes)
        offset = end


async def _from_backend(catalog: AdapterCatalog, hot: HotCache, rec: AdapterRecord, f: FileRecord,
                        offset: int, chunk_bytes: int, readahead: int) -> AsyncIterator[Chunk]:
    whole = offset == 0
    # the chunks themselves are kept (no copy per chunk) and joined once for the cache
    keep: list[bytes] | None = [] if whole and f.size_bytes <= hot.capacity_bytes else None
    digest = hashlib.sha256() if keep is not None else None
    if f.size_bytes == 0 or offset >= f.size_bytes:
        if digest is not None and digest.hexdigest() != f.sha256:
            raise AdapterCorrupt(f"adapter {rec.adapter_id!r}: {f.name} is empty, not as on record")
        yield Chunk(f, offset, b"", True)
        return
    starts = iter(range(offset, f.size_bytes, chunk_bytes))
    pending: deque[tuple[int, asyncio.Task]] = deque()

    def more() -> None:
        for o in starts:
            pending.append((o, asyncio.ensure_future(
                catalog.read(f, o, min(chunk_bytes, f.size_bytes - o)))))
            if len(pending) >= readahead:
                return

    try:
        more()
        while pending:
            o, task = pending.popleft()
            data = await task
            more()
            want = min(chunk_bytes, f.size_bytes - o)
            if len(data) != want:
                raise AdapterCorrupt(f"adapter {rec.adapter_id!r}: {f.name} is shorter than its "
                                     f"record ({f.size_bytes} bytes)")
            last = o + want >= f.size_bytes
            if digest is not None and keep is not None:
                digest.update(data)
                keep.append(data)
                if last and digest.hexdigest() != f.sha256:
                    raise AdapterCorrupt(f"adapter {rec.adapter_id!r}: {f.name} does not match its "
                                         "sha256 on record (the stored object is corrupt)")
            yield Chunk(f, o, data, last)
        if keep is not None:
            hot.put(rec.sha256, f.name, b"".join(keep))
    finally:
        for _, task in pending:
            task.cancel()
