"""Limits on what the store asks of its object backend.

Every backend call waits for a slot: at most `max_concurrent` calls in flight
and at most `requests_per_s` started in any second (asyncio-throttle's sliding
window), so a burst of cold adapters cannot flood the object store or its
egress. The limits wrap any backend and keep its interface.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from asyncio_throttle import Throttler

from .backends import ObjectBackend, ObjectInfo


@dataclass(frozen=True)
class ThrottleConfig:
    requests_per_s: int = 200
    max_concurrent: int = 8

    def __post_init__(self) -> None:
        if self.requests_per_s <= 0 or self.max_concurrent <= 0:
            raise ValueError("requests_per_s and max_concurrent must be positive")


class ThrottledBackend:
    def __init__(self, inner: ObjectBackend, cfg: ThrottleConfig = ThrottleConfig()):
        self.inner = inner
        self.kind = inner.kind
        self.cfg = cfg
        self._rate = Throttler(rate_limit=cfg.requests_per_s, period=1.0)
        self._slots = asyncio.Semaphore(cfg.max_concurrent)
        self.in_flight = 0
        self.peak_in_flight = 0

    async def _call(self, coro_fn, *args):
        async with self._slots:
            await self._rate.acquire()
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                return await coro_fn(*args)
            finally:
                self.in_flight -= 1

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._call(self.inner.head, key)

    async def read(self, key: str, offset: int, length: int) -> bytes:
        return await self._call(self.inner.read, key, offset, length)

    async def write(self, key: str, data: bytes) -> ObjectInfo:
        return await self._call(self.inner.write, key, data)

    async def delete(self, key: str) -> None:
        await self._call(self.inner.delete, key)

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        return await self._call(self.inner.list, prefix)

    def describe(self) -> str:
        d = getattr(self.inner, "describe", None)
        return d() if d else self.kind
