"""Worker gRPC servicer: one bidirectional stream per connected scheduler.

Admissions go to the engine once their adapter is resident (fetched from the
adapter store on a miss); engine events go back up the stream that admitted
the request, together with periodic memory/cache state.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc

from chameleon.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from gpu_worker.adapter_fetcher import AdapterFetcher, AdapterFetchError
from gpu_worker.core.adapter_residency import AdapterResidency
from gpu_worker.core.engine import Engine, EngineEvent
from gpu_worker.core.lora import LoraAdapter
from gpu_worker.core.sequence import Finish, SamplingSpec, Sequence
from gpu_worker.engine_thread import EngineThread

log = logging.getLogger(__name__)

_FINISH = {Finish.EOS: common_pb2.FINISH_REASON_EOS, Finish.LENGTH: common_pb2.FINISH_REASON_LENGTH,
           Finish.STOP_STRING: common_pb2.FINISH_REASON_STOP_STRING,
           Finish.CANCELLED: common_pb2.FINISH_REASON_CANCELLED}


@dataclass(eq=False)
class _Stream:
    out: asyncio.Queue
    requests: set[str] = field(default_factory=set)


@dataclass(eq=False)
class _Request:
    seq: Sequence
    stream: _Stream
    admitted_at: float
    holds_adapter: bool = False


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, engine: Engine, fetcher: AdapterFetcher, info: worker_pb2.WorkerInfo,
                 adapter_capacity: int, state_interval_s: float = 0.25):
        self.engine = engine
        self.fetcher = fetcher
        self.info = info
        self.state_interval_s = state_interval_s
        self.residency: AdapterResidency[LoraAdapter] = AdapterResidency(adapter_capacity, time.monotonic)
        engine.get_adapter = self.residency.get
        self.thread = EngineThread(engine, self._from_engine, self._engine_failed)
        self._loads: dict[str, asyncio.Future] = {}
        self._requests: dict[str, _Request] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.thread.start()

    async def drain(self) -> None:
        while self._requests:
            await asyncio.sleep(0.05)

    # -- rpc ----------------------------------------------------------------
    async def GetInfo(self, request, context):
        return self.info

    async def Connect(self, request_iterator, context):
        stream = _Stream(asyncio.Queue())
        stream.out.put_nowait(worker_pb2.WorkerEvent(hello=self.info))
        reader = asyncio.create_task(self._read(request_iterator, stream))
        ticker = asyncio.create_task(self._tick(stream))
        try:
            while True:
                ev = await stream.out.get()
                if ev is None:
                    return
                yield ev
        finally:
            reader.cancel()
            ticker.cancel()
            for rid in list(stream.requests):  # the scheduler went away: stop its work
                self._cancel(rid)

    async def _read(self, request_iterator, stream: _Stream) -> None:
        try:
            async for cmd in request_iterator:
                kind = cmd.WhichOneof("kind")
                if kind == "admit":
                    await self._admit(cmd.admit, stream)
                elif kind == "cancel":
                    self._cancel(cmd.cancel.request_id)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            stream.out.put_nowait(None)

    async def _tick(self, stream: _Stream) -> None:
        while True:
            stream.out.put_nowait(worker_pb2.WorkerEvent(state=self.state()))
            await asyncio.sleep(self.state_interval_s)

    def state(self) -> worker_pb2.WorkerState:
        st = self.residency.stats
        return worker_pb2.WorkerState(
            worker_id=self.info.worker_id, total_pages=self.info.total_pages,
            free_pages=self.engine.allocator.num_free, evictable_pages=0,
            running=self.engine.num_running, waiting=self.engine.num_waiting,
            cached_adapters=self.residency.resident(), loading_adapters=sorted(self.residency.loading),
            cache_hits=st.hits, cache_misses=st.misses, evictions=st.evictions,
            bytes_loaded=st.bytes_loaded)

    # -- admission ------------------------------------------------------------
    def _error(self, stream: _Stream, rid: str, code: grpc.StatusCode, msg: str) -> None:
        stream.out.put_nowait(worker_pb2.WorkerEvent(
            error=worker_pb2.RequestError(request_id=rid, code=code.value[0], message=msg)))

    async def _admit(self, a: worker_pb2.Admit, stream: _Stream) -> None:
        rid = a.request_id
        if not rid or rid in self._requests:
            self._error(stream, rid, grpc.StatusCode.INVALID_ARGUMENT,
                        f"request id {rid!r} is empty or already running")
            return
        p = a.params
        try:
            spec = SamplingSpec(max_tokens=p.max_tokens, temperature=p.temperature,
                                top_p=p.top_p if p.HasField("top_p") else 1.0, seed=p.seed if p.HasField("seed") else None,
                                stop=list(p.stop))
        except ValueError as e:
            self._error(stream, rid, grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        if not a.prompt_token_ids or len(a.prompt_token_ids) >= self.info.max_context:
            self._error(stream, rid, grpc.StatusCode.INVALID_ARGUMENT,
                        f"prompt has {len(a.prompt_token_ids)} tokens; it must have 1 to "
                        f"{self.info.max_context - 1}")
            return
        seq = Sequence(rid, list(a.prompt_token_ids), spec, adapter_id=a.adapter_id or None,
                       arrival=time.monotonic())
        req = _Request(seq, stream, time.monotonic())
        self._requests[rid] = req
        stream.requests.add(rid)
        if seq.adapter_id and not self.residency.acquire(seq.adapter_id):
            asyncio.create_task(self._load_then_submit(req))
            return
        req.holds_adapter = seq.adapter_id is not None
        seq.ready_at = time.monotonic()
        self.thread.submit(seq)

    async def _load_then_submit(self, req: _Request) -> None:
        aid = req.seq.adapter_id
        fut = self._loads.get(aid)
        if fut is None:
            fut = self._loads[aid] = asyncio.ensure_future(self._load(aid))
        try:
            await asyncio.shield(fut)
        except AdapterFetchError as e:
            self._fail(req, e.code, e.message)
            return
        except ValueError as e:  # the adapter does not fit the model
            self._fail(req, grpc.StatusCode.FAILED_PRECONDITION, f"adapter {aid!r}: {e}")
            return
        if req.seq.request_id not in self._requests:  # cancelled while loading
            return
        if self.residency.get(aid) is None or not self.residency.acquire(aid):
            asyncio.create_task(self._load_then_submit(req))  # evicted meanwhile: load again
            return
        self.residency.stats.hits -= 1  # the re-acquire after our own load is not a hit
        req.holds_adapter = True
        req.seq.ready_at = time.monotonic()
        self.thread.submit(req.seq)

    async def _load(self, aid: str) -> None:
        self.residency.loading.add(aid)
        try:
            folder, nbytes = await self.fetcher.fetch(aid)
            model = self.engine.model
            adapter = await asyncio.to_thread(LoraAdapter.from_peft_dir, folder, model.config,
                                              model.device, model.dtype)
            self.residency.insert(aid, adapter, nbytes, refs=0)
        finally:
            self.residency.loading.discard(aid)
            self._loads.pop(aid, None)

    def _cancel(self, rid: str) -> None:
        req = self._requests.get(rid)
        if req is None:
            return
        self.thread.abort(rid)
        self._finish(req, Finish.CANCELLED, "")

    def _fail(self, req: _Request, code: grpc.StatusCode, msg: str) -> None:
        self._error(req.stream, req.seq.request_id, code, msg)
        self._forget(req)

    def _forget(self, req: _Request) -> None:
        rid = req.seq.request_id
        if self._requests.pop(rid, None) is None:
            return
        req.stream.requests.discard(rid)
        if req.holds_adapter:
            req.holds_adapter = False
            self.residency.release(req.seq.adapter_id)

    def _timings(self, req: _Request) -> common_pb2.Timings:
        s = req.seq
        load = ((s.ready_at or req.admitted_at) - req.admitted_at) * 1000.0
        return common_pb2.Timings(adapter_load_ms=load, prefill_ms=s.prefill_ms)

    def _finish(self, req: _Request, finish: Finish, text: str) -> None:
        if req.seq.request_id not in self._requests:
            return
        req.stream.out.put_nowait(worker_pb2.WorkerEvent(completion=worker_pb2.Completion(
            request_id=req.seq.request_id, finish_reason=_FINISH[finish],
            completion_tokens=len(req.seq.output_ids), timings=self._timings(req), text=text)))
        self._forget(req)

    # -- engine thread callbacks (hop onto the event loop) --------------------
    def _from_engine(self, events: list[EngineEvent]) -> None:
        self._loop.call_soon_threadsafe(self._deliver, events)

    def _engine_failed(self, seqs: list[Sequence], exc: Exception) -> None:
        self._loop.call_soon_threadsafe(self._deliver_failure, seqs, exc)

    def _deliver(self, events: list[EngineEvent]) -> None:
        for ev in events:
            req = self._requests.get(ev.seq.request_id)
            if req is None:
                continue
            if ev.token_ids or (ev.text and ev.finish is None) or ev.first:
                req.stream.out.put_nowait(worker_pb2.WorkerEvent(token=worker_pb2.TokenEvent(
                    request_id=ev.seq.request_id, token_ids=ev.token_ids,
                    text=ev.text if ev.finish is None else "",
                    timings=self._timings(req) if ev.first else None)))
                if ev.finish is not None:
                    self._finish(req, ev.finish, ev.text)
            elif ev.finish is not None:
                self._finish(req, ev.finish, ev.text)

    def _deliver_failure(self, seqs: list[Sequence], exc: Exception) -> None:
        for s in seqs:
            req = self._requests.get(s.request_id)
            if req is None:
                continue
            code = (grpc.StatusCode.INVALID_ARGUMENT if isinstance(exc, ValueError)
                    else grpc.StatusCode.INTERNAL)
            self._fail(req, code, f"{type(exc).__name__}: {exc}")
