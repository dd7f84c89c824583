"""The scheduler's side of one worker's bidirectional stream.

Keeps the stream open (reconnecting with backoff), turns the worker's state
events into a `WorkerView`, and hands token/completion/error events to the
service. When the stream breaks, the service is told which requests were
in flight so it can re-queue them.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import grpc
from tokenizers import Tokenizer

from chameleon_common.security import SecurityConfig, aio_channel, internal_channel_options
from chameleon.v1 import worker_pb2, worker_pb2_grpc
from scheduler_svc.core.types import WorkerView

log = logging.getLogger(__name__)


class WorkerLink:
    def __init__(self, address: str, on_event: Callable[["WorkerLink", worker_pb2.WorkerEvent], None],
                 on_down: Callable[["WorkerLink"], None], security: SecurityConfig | None = None):
        self.address = address
        self._security = security or SecurityConfig()
        self._on_event = on_event
        self._on_down = on_down
        self.info: worker_pb2.WorkerInfo | None = None
        self.tokenizer: Tokenizer | None = None
        self.view = WorkerView(worker_id=address, total_tokens=0, free_tokens=0, connected=False)
        self.state: worker_pb2.WorkerState | None = None
        self._out: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()
        self.epoch = 0   # counts the streams established (a new one starts with no hint)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def send(self, cmd: worker_pb2.WorkerCommand) -> bool:
        if self._out is None:
            return False
        self._out.put_nowait(cmd)
        return True

    def refresh_view(self) -> WorkerView:
        """The worker's geometry and memory state; free_tokens and running are the
        scheduler's own bookkeeping (RequestBook.views_for)."""
        v = self.view
        if self.info is not None:
            v.total_tokens = self.info.total_pages * self.info.block_size
            v.max_running = self.info.max_running
            v.block_tokens = self.info.block_size
            v.page_bytes = self.info.page_bytes
        if self.state is not None:
            v.cached_adapters = set(self.state.cached_adapters)
            v.loading_adapters = set(self.state.loading_adapters)
            v.free_bytes = self.state.free_pages * v.page_bytes
            v.evictable_bytes = self.state.evictable_pages * v.page_bytes
        return v

    async def _commands(self):
        while True:
            yield await self._out.get()

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            channel = aio_channel(self.address, self._security,
                                  internal_channel_options(self._security))
            try:
                stub = worker_pb2_grpc.WorkerStub(channel)
                # The worker's description (geometry, tokenizer, limits) comes from GetInfo
                # before the stream opens; the stream's hello must name the same worker, so a
                # worker replaced between the two calls is caught and the link starts over.
                info = await stub.GetInfo(worker_pb2.GetInfoRequest(), timeout=10)
                self._out = asyncio.Queue()
                call = stub.Connect(self._commands())
                async for ev in call:
                    if ev.WhichOneof("kind") == "hello":
                        if ev.hello.worker_id != info.worker_id or ev.hello.total_pages != info.total_pages:
                            log.warning("worker %s: stream hello (%s) differs from GetInfo (%s); "
                                        "reconnecting", self.address, ev.hello.worker_id, info.worker_id)
                            call.cancel()
                            break
                        self._hello(info)
                        backoff = 0.2
                    elif ev.WhichOneof("kind") == "state":
                        self.state = ev.state
                        self._on_event(self, ev)
                    else:
                        self._on_event(self, ev)
            except asyncio.CancelledError:
                await channel.close()
                raise
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("worker %s refused this scheduler's token: %s", self.address, e.details())
                elif self.view.connected:
                    log.warning("worker %s stream broke: %s", self.address, e.code())
            finally:
                self._out = None
            await channel.close()
            if self.view.connected:
                self.view.connected = False
                self.connected.clear()
                self._on_down(self)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _hello(self, info: worker_pb2.WorkerInfo) -> None:
        self.info = info
        self.epoch += 1
        self.tokenizer = Tokenizer.from_str(info.tokenizer_json.decode())
        self.view.worker_id = info.worker_id or self.address
        self.view.connected = True
        self.connected.set()
        log.info("worker %s (%s) connected: %s, %d pages x %d tokens", info.worker_id, self.address,
                 info.model_name, info.total_pages, info.block_size)
