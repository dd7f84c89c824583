"""Runs the engine on its own thread and bridges it to asyncio.

torch work blocks, so the engine cannot live on the event loop. Everything that
touches the engine or its memory (the cache manager is plain, unlocked Python)
happens on this thread: commands cross in through a queue, and results go back
through callbacks that the service hops onto its event loop.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import grpc

from gpu_worker.core.engine import Engine, EngineEvent
from gpu_worker.core.memory.adapter_cache import CacheStats
from gpu_worker.core.sequence import Sequence
from gpu_worker.core.unified_pool import StagedAdapter
from gpu_worker.core.worker_memory import AdapterTooLargeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSnapshot:
    """What the state stream reports; taken on the engine thread, read anywhere."""
    stats: CacheStats
    running: int
    waiting: int


@dataclass
class EngineCallbacks:
    events: Callable[[list[EngineEvent]], None]
    # requests that failed, with the exception (engine errors) or (code, message) of a failed fetch
    failed: Callable[[list[Sequence], Exception], None]
    need_fetch: Callable[[list[str]], None]
    adapter_failed: Callable[[list[Sequence], object, str], None]


class EngineThread:
    SNAPSHOT_EVERY_S = 0.05

    def __init__(self, engine: Engine, callbacks: EngineCallbacks):
        self.engine = engine
        self._cb = callbacks
        self._cmds: queue.Queue[tuple[str, object]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._stopped = False
        self._snapshot_at = 0.0
        self.snapshot = self._take_snapshot()

    def start(self) -> None:
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        self._cmds.put(("add", seq))

    def abort(self, request_id: str) -> None:
        self._cmds.put(("abort", request_id))

    def install(self, staged: StagedAdapter) -> None:
        self._cmds.put(("install", staged))

    def hint(self, adapter_ids: list[str]) -> None:
        """The scheduler's prefetch hint (most urgent first)."""
        self._cmds.put(("hint", adapter_ids))

    def adapter_failed(self, adapter_id: str, code: object, message: str) -> None:
        self._cmds.put(("adapter_failed", (adapter_id, code, message)))

    def stop(self) -> None:
        self._stopped = True
        self._cmds.put(("stop", None))
        self._thread.join(timeout=10)

    def _apply(self, kind: str, arg) -> None:
        eng = self.engine
        if kind == "add":
            try:
                fetch = eng.add(arg)
            except ValueError as e:
                self._cb.failed([arg], e)
                return
            if fetch:
                self._cb.need_fetch(fetch)
        elif kind == "abort":
            eng.abort(arg)
        elif kind == "hint":
            fetch = eng.hint(arg)
            if fetch:
                self._cb.need_fetch(fetch)
        elif kind == "install":
            try:
                eng.install(arg)
            except AdapterTooLargeError as e:
                self._apply("adapter_failed", (arg.adapter_id, grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)))
        elif kind == "adapter_failed":
            aid, code, message = arg
            seqs = eng.adapter_failed(aid)
            if seqs:
                self._cb.adapter_failed(seqs, code, message)

    def _ask_fetches(self) -> None:
        fetch = self.engine.take_fetches()
        if fetch:
            self._cb.need_fetch(fetch)

    def _idle_wait(self) -> float:
        """How long to wait for a command when nothing can run: until the next modelled
        copy lands (sim engines), at most 0.1 s."""
        w = self.engine.wakeup_in()
        return 0.1 if w is None else min(0.1, max(0.0005, w))

    def _drain(self, block: bool) -> None:
        try:
            kind, arg = self._cmds.get(block=block, timeout=self._idle_wait() if block else None)
        except queue.Empty:
            return
        while True:
            try:
                self._apply(kind, arg)
            except Exception:  # a bad command must not kill the engine thread
                log.exception("engine command %s failed", kind)
            self._ask_fetches()
            try:
                kind, arg = self._cmds.get_nowait()
            except queue.Empty:
                return

    def _take_snapshot(self) -> EngineSnapshot:
        return EngineSnapshot(self.engine.memory.stats(), self.engine.num_running,
                              self.engine.num_waiting)

    def _loop(self) -> None:
        while not self._stopped:
            self._drain(block=not self.engine.has_work())
            now = time.monotonic()
            if now - self._snapshot_at >= self.SNAPSHOT_EVERY_S:
                self.snapshot, self._snapshot_at = self._take_snapshot(), now
            if not self.engine.has_work():
                continue
            try:
                events = self.engine.step()
            except Exception as e:  # keep serving: fail the batch, not the worker
                log.exception("engine step failed")
                victims = list(self.engine.planner.running)
                for s in victims:
                    self.engine.abort(s.request_id)
                self._cb.failed(victims, e)
                continue
            self._ask_fetches()
            if events:
                self._cb.events(events)
            elif not self.engine.num_running:
                self._drain(block=True)  # nothing could run: wait for a command, do not spin
