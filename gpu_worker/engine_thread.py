"""Runs the engine on its own thread and bridges it to asyncio.

torch work blocks, so the engine cannot live on the event loop; commands
cross into the thread through a queue and events come back through
`loop.call_soon_threadsafe`.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

from gpu_worker.core.engine import Engine, EngineEvent
from gpu_worker.core.sequence import Sequence

log = logging.getLogger(__name__)


class EngineThread:
    def __init__(self, engine: Engine, on_events: Callable[[list[EngineEvent]], None],
                 on_failure: Callable[[list[Sequence], Exception], None]):
        self.engine = engine
        self._on_events = on_events
        self._on_failure = on_failure
        self._cmds: queue.Queue[tuple[str, object]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        self._cmds.put(("add", seq))

    def abort(self, request_id: str) -> None:
        self._cmds.put(("abort", request_id))

    def stop(self) -> None:
        self._stopped = True
        self._cmds.put(("stop", None))
        self._thread.join(timeout=10)

    def _drain(self, block: bool) -> None:
        try:
            kind, arg = self._cmds.get(block=block, timeout=0.5 if block else None)
        except queue.Empty:
            return
        while True:
            if kind == "add":
                try:
                    self.engine.add(arg)
                except ValueError as e:
                    self._on_failure([arg], e)
            elif kind == "abort":
                self.engine.abort(arg)
            try:
                kind, arg = self._cmds.get_nowait()
            except queue.Empty:
                return

    def _loop(self) -> None:
        while not self._stopped:
            self._drain(block=not self.engine.has_work())
            if not self.engine.has_work():
                continue
            try:
                events = self.engine.step()
            except Exception as e:  # keep serving: fail the batch, not the worker
                log.exception("engine step failed")
                victims = list(self.engine.planner.running)
                for s in victims:
                    self.engine.abort(s.request_id)
                self._on_failure(victims, e)
                continue
            if events:
                self._on_events(events)
