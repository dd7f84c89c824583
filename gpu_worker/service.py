"""Worker gRPC servicer: one bidirectional stream per connected scheduler.

Admissions go to the engine once their adapter is resident (fetched from the
adapter store on a miss); engine events go back up the stream that admitted
the request, together with periodic memory/cache state. Tokens and completions
travel in TokenBatch events: one per engine step and stream, and the output of
steps the stream has not sent yet joins the batch still waiting in its queue.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc

from chameleon.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from chameleon_common.validation import InvalidId, check_adapter_id, check_request_id
from gpu_worker.adapter_fetcher import AdapterFetcher, AdapterFetchError, FetchedAdapter
from gpu_worker.core.engine import Engine, EngineEvent
from gpu_worker.core.lora import CONFIG_FILE, WEIGHTS_FILE, LoraAdapter
from gpu_worker.core.sequence import Finish, SamplingSpec, Sequence
from gpu_worker.core.unified_pool import StagedAdapter, stage_adapter
from gpu_worker.engine_thread import EngineCallbacks, EngineThread
from gpu_worker.metrics import WorkerMetrics, page_uses
from gpu_worker.request_trace import FetchLog, RequestSpans, WorkerTraces

log = logging.getLogger(__name__)

_FINISH = {Finish.EOS: common_pb2.FINISH_REASON_EOS, Finish.LENGTH: common_pb2.FINISH_REASON_LENGTH,
           Finish.STOP_STRING: common_pb2.FINISH_REASON_STOP_STRING,
           Finish.CANCELLED: common_pb2.FINISH_REASON_CANCELLED}


@dataclass(eq=False)
class _Stream:
    out: asyncio.Queue
    requests: set[str] = field(default_factory=set)
    # the TokenBatch event queued and not sent yet: later steps' output joins it
    open_batch: worker_pb2.WorkerEvent | None = None

    def batch(self) -> worker_pb2.TokenBatch:
        if self.open_batch is None:
            self.open_batch = worker_pb2.WorkerEvent(batch=worker_pb2.TokenBatch())
            self.out.put_nowait(self.open_batch)
        return self.open_batch.batch


@dataclass(eq=False)
class _Request:
    seq: Sequence
    stream: _Stream
    admitted_at: float
    spans: RequestSpans | None = None


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, engine: Engine, fetcher: AdapterFetcher | None, info: worker_pb2.WorkerInfo,
                 state_interval_s: float = 0.25, tracer=None, loader=None):
        """Adapters come from `fetcher` (files from the store, parsed and staged here) or, when
        given, `loader`: anything with `async load(adapter_id) -> staged weights` raising
        AdapterFetchError (the --sim-profile worker's, which describes adapters, not loads them)."""
        if (fetcher is None) == (loader is None):
            raise ValueError("give the worker service exactly one of fetcher and loader")
        self.engine = engine
        self.fetcher = fetcher
        self.loader = loader
        self.info = info
        self.state_interval_s = state_interval_s
        self.thread = EngineThread(engine, EngineCallbacks(
            events=self._hop(self._deliver), failed=self._hop(self._deliver_failure),
            need_fetch=self._hop(self._start_fetches), adapter_failed=self._hop(self._adapter_failed)))
        self._fetches: dict[str, asyncio.Task] = {}
        self._requests: dict[str, _Request] = {}
        self.fetch_log = FetchLog()
        self.metrics = WorkerMetrics(info.worker_id, lambda: self.thread.snapshot,
                                     lambda: self.fetcher.fetches)
        self.traces = WorkerTraces(tracer, info.worker_id) if tracer is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.thread.start()

    async def drain(self) -> None:
        while self._requests:
            await asyncio.sleep(0.05)

    def _hop(self, fn):
        """A callback for the engine thread that runs `fn` on the event loop."""
        return lambda *args: self._loop.call_soon_threadsafe(fn, *args)

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
                if ev is stream.open_batch:
                    stream.open_batch = None   # sent: the next step starts a new batch
                if context.done():
                    return   # the scheduler went away: writing now only logs a traceback
                yield ev
        finally:
            reader.cancel()
            ticker.cancel()
            for rid in list(stream.requests):  # the scheduler went away: stop its work
                self._cancel(rid)
            # wait for both to unwind: a task only cancelled, never awaited, is left pending
            # when the loop closes at shutdown ("Task was destroyed but it is pending")
            await asyncio.gather(reader, ticker, return_exceptions=True)

    async def _read(self, request_iterator, stream: _Stream) -> None:
        try:
            async for cmd in request_iterator:
                kind = cmd.WhichOneof("kind")
                if kind == "admit":
                    await self._admit(cmd.admit, stream)
                elif kind == "cancel":
                    self._cancel(cmd.cancel.request_id)
                elif kind == "prefetch":
                    self.thread.hint(list(cmd.prefetch.adapter_ids))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            stream.out.put_nowait(None)

    async def _tick(self, stream: _Stream) -> None:
        while True:
            stream.out.put_nowait(worker_pb2.WorkerEvent(state=self.state()))
            if self.traces is not None:
                self._trace_resident()
            await asyncio.sleep(self.state_interval_s)

    def _trace_resident(self) -> None:
        """End load spans of adapters no waiting request reports on (prefetches)."""
        cache = self.engine.memory.cache
        for aid in self.traces.open_loads():
            e = cache.entry(aid)   # a dict read; the engine thread owns the cache
            if e is not None and e.loaded:
                self.traces.resident(aid, e.ready_at)

    def state(self) -> worker_pb2.WorkerState:
        snap = self.thread.snapshot
        st = snap.stats
        return worker_pb2.WorkerState(
            worker_id=self.info.worker_id, total_pages=st.total_pages,
            free_pages=st.free_pages, evictable_pages=st.idle_adapter_pages,
            running=snap.running, waiting=snap.waiting,
            cached_adapters=list(st.cached_adapters), loading_adapters=list(st.loading_adapters),
            cache_hits=st.hits, cache_misses=st.misses, evictions=st.evictions,
            bytes_loaded=st.bytes_loaded, kv_pages=st.kv_pages,
            active_adapter_pages=page_uses(st)["adapter_active"], **self._fetch_state())

    def _fetch_state(self) -> dict:
        s = self.fetcher.last_stats if self.fetcher is not None else None
        if s is None:
            return {}
        return {"adapter_fetches": self.fetcher.fetches, "fetch_bytes_per_s": s.bytes_per_s,
                "fetch_ttfb_ms": s.ttfb_s * 1e3}

    # -- admission ------------------------------------------------------------
    def _error(self, stream: _Stream, rid: str, code: grpc.StatusCode, msg: str) -> None:
        stream.out.put_nowait(worker_pb2.WorkerEvent(
            error=worker_pb2.RequestError(request_id=rid, code=code.value[0], message=msg)))

    async def _admit(self, a: worker_pb2.Admit, stream: _Stream) -> None:
        rid = a.request_id
        try:  # the scheduler checked these too; a worker trusts no caller with them
            check_request_id(rid)
            if a.adapter_id:
                check_adapter_id(a.adapter_id)
        except InvalidId as e:
            self._error(stream, rid, grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        if rid in self._requests:
            self._error(stream, rid, grpc.StatusCode.ALREADY_EXISTS, f"request id {rid!r} is already running")
            return
        if any(t < 0 or t >= self.info.vocab_size for t in a.prompt_token_ids):
            self._error(stream, rid, grpc.StatusCode.INVALID_ARGUMENT,
                        f"prompt token ids must be in [0, {self.info.vocab_size})")
            return
        p = a.params
        try:
            spec = SamplingSpec(max_tokens=p.max_tokens, temperature=p.temperature,
                                top_p=p.top_p if p.HasField("top_p") else 1.0, seed=p.seed if p.HasField("seed") else None,
                                stop=list(p.stop), min_tokens=p.min_tokens, ignore_eos=p.ignore_eos)
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
        if p.HasField("sim_output_tokens"):   # honoured by a --sim-profile engine only
            seq.sim_output_tokens = p.sim_output_tokens
        req = self._requests[rid] = _Request(seq, stream, time.monotonic())
        if self.traces is not None:
            req.spans = self.traces.admitted(rid, a.trace_context, seq.adapter_id, len(seq.prompt_ids))
        stream.requests.add(rid)
        self.thread.submit(seq)

    # -- adapter loading: store -> host staging -> (engine thread) pool pages ----
    def _start_fetches(self, adapter_ids: list[str]) -> None:
        for aid in adapter_ids:
            if aid not in self._fetches:
                self._fetches[aid] = asyncio.create_task(self._fetch(aid))

    async def _fetch(self, aid: str) -> None:
        """One fetch per adapter, shared by every request waiting for it (see _start_fetches)."""
        spans = self.traces.fetch_started(aid, self._trigger(aid)) if self.traces else None
        try:
            t0 = time.monotonic()
            if self.loader is not None:
                staged = await self.loader.load(aid)
                self.fetch_log.record(aid, t0, time.monotonic())
            else:
                fetched = await self.fetcher.fetch(aid, spans.metadata if spans else ())
                self.fetch_log.record(aid, t0, time.monotonic())
                self.metrics.fetch_seconds.labels(self.info.worker_id).observe(time.monotonic() - t0)
                if spans is not None:
                    spans.fetched(fetched.stats.nbytes, fetched.digest)
                staged = await asyncio.to_thread(self._stage, fetched)
            if spans is not None:
                spans.staged(self.engine.memory.storage.layout(staged).num_pages)
        except AdapterFetchError as e:
            self._fetch_failed(spans, aid, e.code, e.message)
        except ValueError as e:  # the adapter does not fit the base model
            self._fetch_failed(spans, aid, grpc.StatusCode.FAILED_PRECONDITION, f"adapter {aid!r}: {e}")
        except Exception as e:  # never leave requests parked on a load that died
            log.exception("loading adapter %s failed", aid)
            self._fetch_failed(spans, aid, grpc.StatusCode.INTERNAL, f"adapter {aid!r}: {e}")
        else:
            self.thread.install(staged)
        finally:
            self._fetches.pop(aid, None)

    def _fetch_failed(self, spans, aid: str, code: grpc.StatusCode, message: str) -> None:
        if spans is not None:
            spans.failed(message)
        self.thread.adapter_failed(aid, code, message)

    def _trigger(self, aid: str) -> RequestSpans | None:
        """The oldest request here still waiting for adapter `aid` (its trace owns the fetch)."""
        for req in self._requests.values():
            if req.seq.adapter_id == aid and req.seq.first_token_at is None and req.spans:
                return req.spans
        return None

    def _stage(self, fetched: FetchedAdapter) -> StagedAdapter:
        """Host staging memory -> a staged adapter the engine thread copies into pool pages."""
        cfg = self.engine.model.config
        adapter = LoraAdapter.from_peft_bytes(
            fetched.files.get(CONFIG_FILE, b""), fetched.files.get(WEIGHTS_FILE, b""), cfg,
            fetched.adapter_id, "cpu", self.engine.model.dtype)
        return stage_adapter(adapter, cfg, fetched.digest)

    def _adapter_failed(self, seqs: list[Sequence], code: grpc.StatusCode, message: str) -> None:
        for s in seqs:
            req = self._requests.get(s.request_id)
            if req is not None:
                self._fail(req, code, message)

    def _cancel(self, rid: str) -> None:
        req = self._requests.get(rid)
        if req is None:
            return
        self.thread.abort(rid)
        self._finish(req, Finish.CANCELLED, "")

    def _fail(self, req: _Request, code: grpc.StatusCode, msg: str) -> None:
        self._error(req.stream, req.seq.request_id, code, msg)
        if req.seq.request_id in self._requests:
            self.metrics.ended(code.name)
            if req.spans is not None:
                self.traces.finished(req.spans, req.seq, "ERROR", f"{code.name}: {msg}")
        self._forget(req)

    def _forget(self, req: _Request) -> None:
        rid = req.seq.request_id
        if self._requests.pop(rid, None) is None:
            return
        req.stream.requests.discard(rid)

    def _timings(self, req: _Request) -> common_pb2.Timings:
        s = req.seq
        fetch_ms = (self.fetch_log.overlap_ms(s.adapter_id, s.arrival, s.arrival + s.adapter_wait_s)
                    if s.adapter_id else 0.0)
        return common_pb2.Timings(adapter_load_ms=s.adapter_wait_s * 1000.0, prefill_ms=s.prefill_ms,
                                  adapter_fetch_ms=fetch_ms)

    def _finish(self, req: _Request, finish: Finish, text: str) -> None:
        if req.seq.request_id not in self._requests:
            return
        req.stream.batch().completions.add(
            request_id=req.seq.request_id, finish_reason=_FINISH[finish],
            completion_tokens=len(req.seq.output_ids), timings=self._timings(req), text=text)
        self.metrics.ended(finish.name)
        if req.spans is not None:
            self.traces.finished(req.spans, req.seq, finish.name)
        self._forget(req)

    # -- engine thread results (already hopped onto the event loop) -----------
    def _deliver(self, events: list[EngineEvent]) -> None:
        for ev in events:
            req = self._requests.get(ev.seq.request_id)
            if req is None:
                continue
            if ev.error is not None:  # this request failed alone in the engine
                log.warning("request %s failed in the engine: %r", ev.seq.request_id, ev.error)
                self._fail(req, grpc.StatusCode.INTERNAL,
                           f"generation failed: {type(ev.error).__name__}: {ev.error}")
                continue
            if ev.token_ids or (ev.text and ev.finish is None) or ev.first:
                req.stream.batch().tokens.add(
                    request_id=ev.seq.request_id, token_ids=ev.token_ids,
                    text=ev.text if ev.finish is None else "",
                    timings=self._timings(req) if ev.first else None)
                if ev.first and req.spans is not None:
                    self.traces.first_token(req.spans, ev.seq, time.monotonic())
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
