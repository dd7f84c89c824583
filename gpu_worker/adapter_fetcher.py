"""Fetches adapters from the adapter store into host staging memory as the chunks arrive.

Each file's bytes go straight into a staging buffer of its size as its chunks
arrive (copied and hashed on a helper thread, since hashlib releases the GIL, so
verifying overlaps with receiving the next chunks); its sha256 is checked against the digest the store sends with the last
chunk, and the adapter's digest over all files against the one the stream
names, before anything is loaded, so a torn or corrupted transfer can never
reach the model (DATA_LOSS, never retried: the stored bytes are bad).

A stream that breaks (store restarted, object store away: UNAVAILABLE, or a
stream that ends early) is resumed from the last good offset after a backoff
that doubles up to `max_backoff_s`; after `deadline_s` without success the fetch
fails with UNAVAILABLE. If the adapter changed meanwhile (ABORTED) it starts over.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import numpy as np

from chameleon_common.adapters import adapter_digest
from chameleon_common.chunk_wire import split_chunk
from chameleon_common.server import CHANNEL_OPTIONS
from chameleon.v1 import store_pb2

log = logging.getLogger(__name__)

FETCH_METHOD = "/chameleon.v1.AdapterStore/FetchAdapter"

_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
              grpc.StatusCode.INTERNAL)


class AdapterFetchError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RetryPolicy:
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    deadline_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff_s <= self.max_backoff_s or self.deadline_s <= 0:
            raise ValueError("need 0 < initial_backoff_s <= max_backoff_s and deadline_s > 0")


@dataclass
class FetchStats:
    nbytes: int = 0
    ttfb_s: float = 0.0           # request sent -> first byte of adapter data
    seconds: float = 0.0          # request sent -> last byte verified
    attempts: int = 0

    @property
    def bytes_per_s(self) -> float:
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0


@dataclass
class FetchedAdapter:
    adapter_id: str
    digest: str
    files: dict[str, bytearray]
    stats: FetchStats


@dataclass
class _Partial:
    """What one fetch has received so far: enough to resume from the last good offset."""
    digest: str = ""
    order: list[str] = field(default_factory=list)
    buffers: dict[str, bytearray] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    hashes: dict[str, Any] = field(default_factory=dict)
    done: dict[str, str] = field(default_factory=dict)    # file -> verified sha256
    pending: deque = field(default_factory=deque)         # copies+hashes still on the helper thread

    async def settle(self) -> None:
        while self.pending:
            await self.pending.popleft()

    def resume_point(self) -> tuple[str, int]:
        if not self.order:
            return "", 0
        last = self.order[-1]
        return last, self.received[last]


# chunks received ahead of the helper thread, at most (bounds the memory they hold)
_MAX_PENDING = 8


def _absorb(buf: bytearray, offset: int, data: memoryview, h) -> None:
    if data:
        # numpy's copy drops the GIL (a bytearray slice assignment holds it), so the event loop
        # goes on receiving while this thread copies, as it does while hashlib hashes
        np.frombuffer(buf, np.uint8, len(data), offset)[:] = np.frombuffer(data, np.uint8)
    h.update(data)


class AdapterFetcher:
    def __init__(self, store_address: str, *, retry: RetryPolicy = RetryPolicy(),
                 chunk_bytes: int = 0, channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
                 metadata: tuple[tuple[str, str], ...] = (),
                 clock: Callable[[], float] = time.monotonic):
        self.channel = (channel_factory(store_address) if channel_factory is not None else
                        grpc.aio.insecure_channel(store_address, options=CHANNEL_OPTIONS))
        # the stub's FetchAdapter, except that each chunk's data stays a view into the received
        # message (chunk_wire): protobuf would copy it twice before the staging copy
        self._fetch_call = self.channel.unary_stream(
            FETCH_METHOD, request_serializer=store_pb2.FetchAdapterRequest.SerializeToString,
            response_deserializer=split_chunk)
        self.retry = retry
        self.chunk_bytes = chunk_bytes
        self.metadata = metadata
        self._clock = clock
        self.last_stats: FetchStats | None = None
        self.fetches = 0

    async def fetch(self, adapter_id: str, metadata: tuple[tuple[str, str], ...] = ()) -> FetchedAdapter:
        """`metadata` goes with every attempt's call, after the fetcher's own (the fetch span's
        trace context)."""
        start = self._clock()
        deadline = start + self.retry.deadline_s
        stats = FetchStats()
        part = _Partial()
        helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fetch-{adapter_id}"[:15])
        try:
            await self._attempts(adapter_id, part, stats, start, deadline, helper,
                                 self.metadata + tuple(metadata))
        finally:
            await part.settle()
            helper.shutdown(wait=False)
        stats.seconds = self._clock() - start
        files = {n: part.buffers[n] for n in part.order}
        if adapter_digest(part.done) != part.digest:
            raise AdapterFetchError(grpc.StatusCode.DATA_LOSS,
                                    f"adapter {adapter_id!r}: its files do not add up to its digest")
        self.last_stats = stats
        self.fetches += 1
        log.info("fetched %s: %d bytes in %.3f s (%.1f MB/s, first byte after %.1f ms, %d attempt%s)",
                 adapter_id, stats.nbytes, stats.seconds, stats.bytes_per_s / 1e6, stats.ttfb_s * 1e3,
                 stats.attempts, "" if stats.attempts == 1 else "s")
        return FetchedAdapter(adapter_id, part.digest, files, stats)

    async def _attempts(self, adapter_id: str, part: _Partial, stats: FetchStats, start: float,
                        deadline: float, helper: ThreadPoolExecutor,
                        metadata: tuple[tuple[str, str], ...]) -> None:
        backoff = self.retry.initial_backoff_s
        last_error = "no attempt made"
        while True:
            stats.attempts += 1
            try:
                if await self._stream(adapter_id, part, stats, start, deadline, helper, metadata):
                    return
                last_error = "the stream ended before every file was complete"
            except AdapterFetchError:
                raise
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.ABORTED:  # changed under us: start over
                    await part.settle()
                    part.__init__()
                elif code not in _TRANSIENT:
                    raise AdapterFetchError(code, e.details() or code.name) from e
                last_error = f"{code.name}: {e.details()}"
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise AdapterFetchError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"adapter {adapter_id!r} could not be fetched within {self.retry.deadline_s:g} s "
                    f"({stats.attempts} attempts; last: {last_error})")
            pause = min(backoff * (0.5 + random.random() / 2), remaining)
            log.warning("fetch of %s interrupted (%s); resuming at %s in %.2f s", adapter_id,
                        last_error, part.resume_point(), pause)
            await asyncio.sleep(pause)
            backoff = min(backoff * 2, self.retry.max_backoff_s)

    async def _stream(self, adapter_id: str, part: _Partial, stats: FetchStats, start: float,
                      deadline: float, helper: ThreadPoolExecutor,
                      metadata: tuple[tuple[str, str], ...] = ()) -> bool:
        """One attempt; True once every file arrived and verified."""
        await part.settle()
        loop = asyncio.get_running_loop()
        resume_file, resume_offset = part.resume_point()
        req = store_pb2.FetchAdapterRequest(adapter_id=adapter_id, chunk_bytes=self.chunk_bytes,
                                            resume_file=resume_file, resume_offset=resume_offset,
                                            expect_sha256=part.digest)
        call = self._fetch_call(req, timeout=max(0.1, deadline - self._clock()),
                                metadata=metadata or None)
        complete = False
        async for c, data in call:
            if not part.digest:
                part.digest = c.adapter_sha256
            elif c.adapter_sha256 and c.adapter_sha256 != part.digest:
                raise AdapterFetchError(grpc.StatusCode.DATA_LOSS,
                                        f"adapter {adapter_id!r}: the stream switched content")
            name = c.file_name
            if name not in part.buffers:
                if c.offset != 0 or c.file_size < 0:
                    raise AdapterFetchError(grpc.StatusCode.DATA_LOSS,
                                            f"adapter {adapter_id!r}: {name} started at offset {c.offset}")
                part.order.append(name)
                part.buffers[name] = bytearray(c.file_size)   # the staging memory for this file
                part.received[name] = 0
                part.hashes[name] = hashlib.sha256()
            got = part.received[name]
            if c.offset != got or got + len(data) > len(part.buffers[name]):
                raise AdapterFetchError(grpc.StatusCode.DATA_LOSS,
                                        f"adapter {adapter_id!r}: {name} chunk at {c.offset}, "
                                        f"expected {got} (of {len(part.buffers[name])} bytes)")
            if data and stats.nbytes == 0:
                stats.ttfb_s = self._clock() - start
            part.pending.append(loop.run_in_executor(helper, _absorb, part.buffers[name], got, data,
                                                     part.hashes[name]))
            if len(part.pending) > _MAX_PENDING:
                await part.pending.popleft()
            part.received[name] = got + len(data)
            stats.nbytes += len(data)
            complete = False
            if c.last:
                if part.received[name] != len(part.buffers[name]):
                    raise AdapterFetchError(grpc.StatusCode.DATA_LOSS,
                                            f"adapter {adapter_id!r}: {name} ended short")
                await part.settle()
                sha = part.hashes[name].hexdigest()
                if sha != c.sha256:
                    raise AdapterFetchError(grpc.StatusCode.DATA_LOSS,
                                            f"adapter {adapter_id!r}: {name} failed its sha256 check")
                part.done[name] = sha
                complete = True
        return complete and len(part.done) == len(part.order) and bool(part.order)

    async def close(self) -> None:
        await self.channel.close()
