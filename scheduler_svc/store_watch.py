"""Follows the adapter store's WatchAdapters stream so cached adapter metadata is dropped the
moment an adapter is pushed or deleted, not only when its TTL runs out.

`on_change(name, refs)` is called for every push or delete (`name` alone may now resolve to
another version; `refs` are the versions concerned). While the stream is down events may be
missed, so every (re)connection first calls `on_reset()`: the caller forgets everything and
asks the store again. Reconnects back off from 0.2 s to 5 s.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

import grpc

from chameleon.v1 import store_pb2

log = logging.getLogger(__name__)


class StoreWatch:
    def __init__(self, stub, on_change: Callable[[str, list[str]], None],
                 on_reset: Callable[[], None], metadata: tuple = (),
                 initial_backoff_s: float = 0.2, max_backoff_s: float = 5.0):
        self.stub = stub
        self.on_change, self.on_reset = on_change, on_reset
        self.metadata = metadata
        self.initial_backoff_s, self.max_backoff_s = initial_backoff_s, max_backoff_s
        self.events = 0
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        backoff = self.initial_backoff_s
        while True:
            call = self.stub.WatchAdapters(store_pb2.WatchAdaptersRequest(),
                                           metadata=self.metadata or None)
            try:
                await call.wait_for_connection()
                self.on_reset()
                self.connected.set()
                backoff = self.initial_backoff_s
                async for ev in call:
                    self.events += 1
                    self.on_change(ev.name, list(ev.refs))
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.warning("the adapter store has no WatchAdapters: metadata follows its TTL only")
                    return
                log.debug("adapter store watch broke (%s); reconnecting", e.code().name)
            finally:
                self.connected.clear()
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
