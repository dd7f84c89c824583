"""Scheduler gRPC servicer: validates requests, queues them in the admission
policy, dispatches admissions over the workers' streams and relays tokens."""
from __future__ import annotations

import asyncio
import contextlib
import random
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import grpc

from chameleon.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, store_pb2_grpc, worker_pb2
from chameleon_common.security import SecurityConfig, aio_channel, internal_channel_options
from scheduler_svc.core.hints import HintConfig, HintThrottle
from scheduler_svc.core.lifecycle import Lifecycle, RequestBook
from scheduler_svc.core.types import AdmissionPolicy, PendingRequest
from scheduler_svc.metrics import SchedulerMetrics
from scheduler_svc.request_trace import RequestTrace, p99
from scheduler_svc.intake import Intake, IntakeLimits, Refused, check_request
from scheduler_svc.store_watch import StoreWatch
from scheduler_svc.worker_link import WorkerLink

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Live:
    """One client stream; its lifecycle (worker, re-runs, replay skip) is in `book`."""
    lc: Lifecycle
    admit: worker_pb2.Admit
    # (kind, payload) from the worker, in order; `wake` is set when one is added
    events: deque = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    first_ttft: float = 0.0
    first_token_at: float | None = None
    trace: RequestTrace | None = None
    first_timings: common_pb2.Timings | None = None   # the worker's, on the first token
    token_gaps_ms: list[float] = field(default_factory=list)
    last_token_at: float | None = None

    @property
    def pending(self) -> PendingRequest:
        return self.lc.pending

    def put(self, kind: str, payload) -> None:
        self.events.append((kind, payload))
        self.wake.set()

    async def get(self) -> tuple[str, object]:
        """The next event; tokens the client has not been sent yet come merged into one."""
        while not self.events:
            self.wake.clear()
            await self.wake.wait()
        kind, payload = self.events.popleft()
        if kind != "token" or not self.events or self.events[0][0] != "token":
            return kind, payload
        ids, texts = list(payload.token_ids), [payload.text]
        while self.events and self.events[0][0] == "token":
            more = self.events.popleft()[1]
            ids += more.token_ids
            texts.append(more.text)
        return kind, worker_pb2.TokenEvent(request_id=payload.request_id, token_ids=ids,
                                           text="".join(texts), timings=payload.timings)


class SchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, policy: AdmissionPolicy, store_address: str, worker_addresses: list[str],
                 clock=time.monotonic, worker_wait_s: float = 30.0, tracer=None,
                 hints: HintConfig | None = None, limits: IntakeLimits | None = None,
                 security: SecurityConfig | None = None, admission_window: int = 0):
        self.tracer = tracer
        # requests a worker may hold that have not started (0: as many as its memory takes);
        # see SchedulerConfig.admission_window
        self.admission_window = admission_window

        self.policy = policy
        self.clock = clock
        self.worker_wait_s = worker_wait_s
        security = security or SecurityConfig()
        self._store_channel = aio_channel(store_address, security, internal_channel_options(security))
        self.store = store_pb2_grpc.AdapterStoreStub(self._store_channel)
        self.intake = Intake(self.store, limits or IntakeLimits(), clock)
        # the store tells of pushes and deletes: cached metadata goes at once, not at its TTL
        self.store_watch = StoreWatch(self.store, self._adapters_changed, self.intake.meta.clear)
        self.links = [WorkerLink(a, self._on_worker_event, self._on_worker_down, security)
                      for a in worker_addresses]
        self.book = RequestBook(policy, clock)
        self.metrics = SchedulerMetrics(policy, self.book.running)
        self._live: dict[str, _Live] = {}
        self._links_by_id: dict[str, WorkerLink] = {}
        self._kick = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self.hints = HintThrottle(hints or HintConfig(), clock)
        self._hint_timer: asyncio.TimerHandle | None = None
        self._epochs: dict[str, int] = {}   # worker id -> the stream its last hint went down

    @property
    def completed(self) -> int:
        return self.book.completed_count

    async def start(self) -> None:
        for link in self.links:
            link.start()
        self.store_watch.start()
        self._loop_task = asyncio.create_task(self._schedule_loop())
        self._loop_task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        if self._hint_timer is not None:
            self._hint_timer.cancel()
        for link in self.links:
            await link.stop()
        await self.store_watch.stop()
        await self._store_channel.close()
        self.intake.close()

    async def drain(self) -> None:
        while self._live:
            await asyncio.sleep(0.05)

    # -- helpers --------------------------------------------------------------
    async def _any_worker(self, context) -> WorkerLink:
        ready = [l for l in self.links if l.view.connected]
        if ready:
            return ready[0]
        waits = [asyncio.create_task(l.connected.wait()) for l in self.links]
        done, pending = await asyncio.wait(waits, timeout=self.worker_wait_s,
                                           return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        ready = [l for l in self.links if l.view.connected]
        if not ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no worker is connected; retry later")
        return ready[0]

    def _resident_anywhere(self, adapter_id: str) -> bool:
        return any(l.view.connected and l.state is not None and adapter_id in l.state.cached_adapters
                   for l in self.links)

    def _adapters_changed(self, name: str, refs: list[str]) -> None:
        """`name` may resolve to another version now; `refs` were pushed or deleted."""
        for key in (name, *refs):
            self.intake.meta.invalidate(key)

    def _queued_tokens(self) -> int:
        return sum(l.lc.pending.reserved_tokens for l in self._live.values() if l.lc.worker is None)

    async def _validate(self, request, rid: str, context, trace: RequestTrace | None
                        ) -> tuple[worker_pb2.Admit, PendingRequest]:
        """Everything after the request-only checks (intake.check_request); raises Refused."""
        p = request.params
        if not 0 <= p.min_tokens <= p.max_tokens:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"params.min_tokens must be in [0, max_tokens={p.max_tokens}], got {p.min_tokens}")
        if p.HasField("sim_output_tokens") and p.sim_output_tokens <= 0:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"params.sim_output_tokens must be > 0 when set, got {p.sim_output_tokens}")
        adapter_bytes = rank = 0
        # `name` resolves to its latest version (`name@n`): the workers cache immutable versions
        adapter_id = request.adapter_id
        if request.adapter_id:
            info = await self.intake.adapter_info(request.adapter_id, self._resident_anywhere,
                                                  trace.store_metadata() if trace else ())
            if info.content_mismatch:
                self.intake.meta.invalidate(request.adapter_id)
                raise Refused(grpc.StatusCode.DATA_LOSS,
                              f"adapter {request.adapter_id!r}: {info.invalid_reason}")
            if not info.valid:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                              f"adapter {request.adapter_id!r} does not fit the base model: "
                              f"{info.invalid_reason}")
            adapter_bytes, rank = info.size_bytes, info.rank
            adapter_id = info.adapter_id or request.adapter_id
        link = await self._any_worker(context)
        ids = await self.intake.tokenize(link.tokenizer, request.prompt)
        ctx = link.info.max_context
        if not ids:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "prompt encodes to zero tokens")
        if len(ids) >= ctx:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"prompt is {len(ids)} tokens; the model's context is {ctx} tokens, "
                          f"so the prompt must be at most {ctx - 1}")
        params = common_pb2.SamplingParams()
        params.CopyFrom(p)
        params.max_tokens = min(p.max_tokens, ctx - len(ids))
        params.min_tokens = min(p.min_tokens, params.max_tokens)
        self.intake.check_room(self.policy.queued(), self._queued_tokens(),
                               len(ids) + params.max_tokens)
        if params.temperature > 0 and not params.HasField("seed"):
            # pin the sample: a re-run after a squash or a lost worker then regenerates the very
            # tokens the client already has, so skipping that prefix leaves one clean stream
            params.seed = random.getrandbits(62)
        admit = worker_pb2.Admit(request_id=rid, prompt_token_ids=ids, adapter_id=adapter_id,
                                 params=params)
        pending = PendingRequest(request_id=rid, adapter_id=adapter_id or None,
                                 input_tokens=len(ids), max_tokens=params.max_tokens,
                                 adapter_bytes=adapter_bytes, adapter_rank=rank, arrival=self.clock())
        return admit, pending

    # -- rpc ------------------------------------------------------------------
    async def Generate(self, request, context):
        trace = None
        if self.tracer is not None:
            from chameleon_common.tracing import from_grpc

            trace = RequestTrace(self.tracer, from_grpc(context), request.request_id,
                                 request.adapter_id)
        rid = None
        try:
            try:
                check_request(request, self.intake.limits)
                candidate = request.request_id or uuid.uuid4().hex
                self.intake.reserve(candidate)   # atomic: no await between the check and the claim
                rid = candidate
                admit, pending = await self._validate(request, rid, context, trace)
            except Refused as e:
                await _refuse(context, e)
        except BaseException:
            code = context.code()
            name = code.name if isinstance(code, grpc.StatusCode) else "CANCELLED"
            self.metrics.ended(name)
            if trace is not None:
                trace.failed(name, context.details() or "")
            if rid is not None:
                self.intake.release(rid)
            raise
        try:
            live = _Live(self.book.add(pending), admit, trace=trace)
            if trace is not None:
                trace.root.set_attribute("chameleon.request_id", rid)
                trace.queued(pending.input_tokens, 0)
            self._live[rid] = live
            self._kick.set()
            async with contextlib.aclosing(self._relay(live, pending, context)) as relay:
                async for item in relay:  # closing it releases the request at once
                    if context.done():
                        # the client cancelled (or the deadline passed): a write now would
                        # only make grpc core log an ExecuteBatchError traceback
                        return
                    yield item
        finally:
            self.intake.release(rid)

    async def _relay(self, live: "_Live", pending: PendingRequest, context):
        rid = pending.request_id
        trace = live.trace
        first = True
        try:
            while True:
                kind, payload = await live.get()
                if kind == "error":
                    code, msg = payload
                    self.metrics.ended(code.name)
                    if trace is not None:
                        trace.failed(code.name, msg)
                    await context.abort(code, msg)
                now = self.clock()
                timings = None
                if first or kind == "done":
                    queue_ms = ((live.lc.admitted_at or now) - pending.arrival) * 1000.0
                    timings = common_pb2.Timings(
                        queue_ms=queue_ms, ttft_ms=(now - pending.arrival) * 1000.0,
                        adapter_load_ms=payload.timings.adapter_load_ms,
                        prefill_ms=payload.timings.prefill_ms)
                    if kind == "done":
                        timings.total_ms = (now - pending.arrival) * 1000.0
                        timings.ttft_ms = live.first_ttft if not first else timings.ttft_ms
                        timings.tbt_p99_ms = p99(live.token_gaps_ms)
                        timings.adapter_fetch_ms = (live.first_timings or payload.timings).adapter_fetch_ms
                    else:
                        live.first_ttft = timings.ttft_ms
                        live.first_timings = payload.timings
                        timings.adapter_fetch_ms = payload.timings.adapter_fetch_ms
                if kind == "token":
                    if first:
                        live.first_token_at = now
                    elif live.last_token_at is not None:
                        live.token_gaps_ms.append((now - live.last_token_at) * 1000.0)
                    live.last_token_at = now
                    first = False
                    yield scheduler_pb2.GenerateResponse(
                        request_id=rid, text=payload.text, token_ids=payload.token_ids,
                        timings=timings, prompt_tokens=pending.input_tokens,
                        completion_tokens=live.lc.sent_tokens,
                        trace_id=trace.trace_id if trace is not None and timings is not None else "")
                else:
                    self._trace_done(live, payload, timings)
                    yield scheduler_pb2.GenerateResponse(
                        request_id=rid, text=payload.text, finish_reason=payload.finish_reason,
                        timings=timings, prompt_tokens=pending.input_tokens,
                        completion_tokens=live.lc.sent_tokens,
                        trace_id=trace.trace_id if trace is not None else "")
                    return
        finally:
            if not live.lc.done:
                self.metrics.ended("CANCELLED")
                if trace is not None:
                    trace.failed("CANCELLED", "the client went away")
            self._release(live, cancel=not live.lc.done)

    def _trace_done(self, live: _Live, done: worker_pb2.Completion, t: common_pb2.Timings) -> None:
        self.metrics.ended("OK")
        self.metrics.latency(live.pending.adapter_rank, t.ttft_ms, live.token_gaps_ms)
        if live.trace is None:
            return
        w = live.first_timings or done.timings
        live.trace.finished(queue_ms=t.queue_ms, ttft_ms=t.ttft_ms, fetch_ms=w.adapter_fetch_ms,
                            wait_ms=w.adapter_load_ms, prefill_ms=w.prefill_ms,
                            token_gaps_ms=live.token_gaps_ms, output_tokens=live.lc.sent_tokens,
                            finish=common_pb2.FinishReason.Name(done.finish_reason),
                            prompt_tokens=live.pending.input_tokens)

    async def ListAdapters(self, request, context):
        try:
            return await self.store.ListAdapters(common_pb2.ListAdaptersRequest(), timeout=30)
        except grpc.aio.AioRpcError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"adapter store: {e.details()}")

    async def GetStatus(self, request, context):
        workers = []
        for l in self.links:
            v, st = self.book.views_for([l.refresh_view()])[0], l.state or worker_pb2.WorkerState()
            workers.append(scheduler_pb2.WorkerStatus(
                worker_id=v.worker_id, address=l.address, connected=v.connected, running=v.running,
                total_tokens=v.total_tokens, free_tokens=v.free_tokens, free_pages=st.free_pages,
                evictable_pages=st.evictable_pages, cached_adapters=sorted(v.cached_adapters),
                cache_hits=st.cache_hits, cache_misses=st.cache_misses, evictions=st.evictions,
                bytes_loaded=st.bytes_loaded, loading_adapters=sorted(st.loading_adapters),
                adapter_fetches=st.adapter_fetches, fetch_bytes_per_s=st.fetch_bytes_per_s,
                fetch_ttfb_ms=st.fetch_ttfb_ms, kv_pages=st.kv_pages,
                active_adapter_pages=st.active_adapter_pages))
        metrics = {k: float(v) for k, v in self.policy.metrics().items()
                   if isinstance(v, (int, float))}
        metrics["prefetch_hints_sent"] = float(self.hints.messages)
        metrics.update(self.intake.metrics())
        return scheduler_pb2.GetStatusResponse(
            policy=self.policy.name, queued=self.policy.queued(),
            running=self.book.running(), workers=workers, metrics=metrics,
            completed=self.completed, requests_by_status=dict(self.metrics.by_status),
            queues=[scheduler_pb2.QueueStatus(index=q.index, length=q.length,
                                              quota_tokens=q.quota_tokens, held_tokens=q.held_tokens,
                                              upper_wrs=q.upper_wrs)
                    for q in self.policy.queue_status()])

    # -- scheduling -----------------------------------------------------------
    async def _schedule_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            links = {l.view.worker_id: l for l in self.links if l.view.connected}
            if not links:
                continue
            if self.policy.queued():
                views = self.book.views_for([l.refresh_view() for l in links.values()])
                rnd = self.book.schedule(self.book.window_for(views, self.admission_window))
                for adm in rnd.admit:
                    self._dispatch(adm.request.request_id, links[adm.worker_id])
                for rid, wid in rnd.cancel:   # squashed: already re-queued
                    self._trace_requeue(rid, "squash", wid)
                    self._send_cancel(rid, wid)
                if rnd.cancel:
                    self._kick.set()
            self._send_hints(links)

    def _send_hints(self, links: dict[str, WorkerLink]) -> None:
        """Tell each worker which adapters its queued requests need next (after the round's
        admissions, so an admitted request's adapter is the worker's before the hint drops
        it); only changes go out, at most one per worker per interval (core/hints.py)."""
        if not self.hints.enabled:
            return
        retry: float | None = None
        for wid, link in links.items():
            if self._epochs.get(wid) != link.epoch:   # a new stream: the worker has no hint
                self.hints.forget(wid)
                self._epochs[wid] = link.epoch
            send, wait = self.hints.offer(wid, self.policy.prefetch_hints(wid, self.hints.config.limit))
            if send is not None and not link.send(worker_pb2.WorkerCommand(
                    prefetch=worker_pb2.PrefetchHint(adapter_ids=send))):
                self.hints.forget(wid)                # not sent: offer it again next round
            if wait is not None:
                retry = wait if retry is None else min(retry, wait)
        if retry is not None and self._hint_timer is None:
            def again() -> None:
                self._hint_timer = None
                self._kick.set()
            self._hint_timer = asyncio.get_running_loop().call_later(retry, again)

    def _dispatch(self, rid: str, link: WorkerLink) -> None:
        live = self._live.get(rid)
        if live is None:
            return
        self._links_by_id[link.view.worker_id] = link
        if live.trace is not None:
            p = live.pending
            live.admit.trace_context.clear()
            live.admit.trace_context.update(live.trace.dispatched(
                link.view.worker_id, p.queue_index, p.wrs, p.predicted_output))
        if not link.send(worker_pb2.WorkerCommand(admit=live.admit)):
            self._requeue(rid)
            self._trace_requeue(rid, "send_failed", link.view.worker_id)

    def _send_cancel(self, rid: str, worker_id: str) -> None:
        link = self._links_by_id.get(worker_id)
        if link is not None:
            link.send(worker_pb2.WorkerCommand(cancel=worker_pb2.Cancel(request_id=rid)))

    def _requeue(self, rid: str) -> None:
        """Run a request again (its worker was lost or it was squashed); the client's
        stream continues where it stopped because the replayed prefix is skipped."""
        wid = self.book.requeue(rid)
        if wid is not None:
            self._send_cancel(rid, wid)
        self._kick.set()

    def _trace_requeue(self, rid: str, reason: str, worker_id: str | None) -> None:
        live = self._live.get(rid)
        if live is not None and live.trace is not None:
            live.trace.requeued(reason, worker_id, live.lc.sent_tokens)
            live.trace.queued(live.pending.input_tokens, live.pending.attempts)

    def _release(self, live: _Live, cancel: bool) -> None:
        rid = live.pending.request_id
        if self._live.pop(rid, None) is None:
            return
        wid = self.book.release(rid, cancel)
        if wid is not None:
            self._send_cancel(rid, wid)
        self._kick.set()

    def _on_worker_event(self, link: WorkerLink, ev: worker_pb2.WorkerEvent) -> None:
        kind = ev.WhichOneof("kind")
        if kind == "state":
            self._kick.set()
            return
        wid = link.view.worker_id
        if kind == "batch":   # one engine step (or several) of many requests
            for t in ev.batch.tokens:
                self._on_request_event(wid, "token", t)
            for c in ev.batch.completions:
                self._on_request_event(wid, "completion", c)
        else:
            self._on_request_event(wid, kind, getattr(ev, kind))

    def _on_request_event(self, wid: str, kind: str, msg) -> None:
        live = self._live.get(msg.request_id)
        if live is None or self.book.current(msg.request_id, wid) is None:
            return
        if kind == "token":
            # a re-run replays tokens the client already has: drop that prefix
            n = len(msg.token_ids)
            first = live.lc.seen_tokens == 0
            if self.book.tokens(msg.request_id, wid, n) == 0 and n > 0 and live.lc.sent_tokens > 0:
                return
            if first and self.admission_window > 0:
                self._kick.set()   # the worker's admission window has room again
            live.put("token", msg)
        elif kind == "completion":
            self.book.completed(msg.request_id, wid)
            live.put("done", msg)
        elif kind == "error":
            self.book.completed(msg.request_id, wid)
            code = grpc.StatusCode[_code_name(msg.code)]
            self.intake.worker_error(live.pending.adapter_id, code)
            live.put("error", (code, msg.message))

    def _on_worker_down(self, link: WorkerLink) -> None:
        for rid in self.book.worker_down(link.view.worker_id):
            log.warning("re-queueing %s: worker %s went away", rid, link.address)
            self._trace_requeue(rid, "worker_lost", link.view.worker_id)
        self._kick.set()


async def _refuse(context, e: Refused) -> None:
    if e.trailers:
        context.set_trailing_metadata(e.trailers)
    await context.abort(e.code, e.message)


def _log_crash(task: asyncio.Task) -> None:
    """The scheduling loop must never end silently: nothing would be admitted any more."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("the scheduling loop crashed", exc_info=task.exception())


def _code_name(value: int) -> str:
    for c in grpc.StatusCode:
        if c.value[0] == value:
            return c.name
    return "UNKNOWN"
