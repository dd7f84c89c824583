"""The worker's spans of each request, and of each adapter fetch.

    worker.request   Admit received -> finished here (child of the scheduler's `dispatched`,
                     whose context arrives in Admit.trace_context)
      adapter        -> the request's adapter is resident; chameleon.adapter.cache = hit|miss
        fetch        the store stream (bytes, digest); the store's FetchAdapter span is its
                     child through the call's metadata
        load         staging the weights and loading them into pool pages (pages)
      prefill        first prefill forward pass -> first token sampled (forward_ms: the
                     forward passes alone)
      first_token    sampled -> sent up the stream
      decode         first token -> finished (output_tokens)

A fetch belongs to the trace of the oldest request waiting for it; requests that waited
on a fetch another request started link to it. A fetch no request waits for (a
prefetch hint) gets its own trace, rooted at a `prefetch` span.

Engine-thread timestamps (Sequence fields, time.monotonic) are turned into span times
with chameleon_common.tracing.wall_ns, so the spans sit where the work happened.
`FetchLog` keeps the last fetch interval of each adapter for the Timings' adapter_fetch_ms
whether or not tracing is on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from chameleon_common.tracing import extract, grpc_metadata, span_context, wall_ns


class FetchLog:
    """adapter id -> (start, end) of its last completed fetch, monotonic seconds."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}

    def record(self, adapter_id: str, start: float, end: float) -> None:
        self._last[adapter_id] = (start, end)

    def overlap_ms(self, adapter_id: str, wait_from: float, wait_to: float) -> float:
        """How much of a request's adapter wait [wait_from, wait_to] the last fetch covered."""
        iv = self._last.get(adapter_id)
        if iv is None or wait_to <= wait_from:
            return 0.0
        return max(0.0, min(iv[1], wait_to) - max(iv[0], wait_from)) * 1000.0


@dataclass(eq=False)
class RequestSpans:
    root: trace.Span
    adapter: trace.Span | None
    adapter_id: str | None


class FetchSpans:
    def __init__(self, tracer: trace.Tracer, adapter_id: str, trigger: RequestSpans | None):
        self.tracer = tracer
        self.adapter_id = adapter_id
        self.trigger = trigger
        attrs = {"chameleon.adapter_id": adapter_id}
        self._prefetch = None
        if trigger is not None and trigger.adapter is not None:
            self._parent = span_context(trigger.adapter)
        else:
            self._prefetch = tracer.start_span("prefetch", attributes=attrs)
            self._parent = span_context(self._prefetch)
        self.fetch: trace.Span | None = tracer.start_span("fetch", context=self._parent,
                                                          kind=SpanKind.CLIENT, attributes=attrs)
        self.load: trace.Span | None = None
        self.metadata = grpc_metadata(span_context(self.fetch))
        self.fetch_context = self.fetch.get_span_context()   # for the links of other waiters

    @property
    def open(self) -> bool:
        return self.fetch is not None or self.load is not None


    def fetched(self, nbytes: int, digest: str) -> None:
        self.fetch.set_attributes({"chameleon.bytes": nbytes, "chameleon.digest": digest})
        self.fetch.end()
        self.fetch = None
        self.load = self.tracer.start_span("load", context=self._parent,
                                           attributes={"chameleon.adapter_id": self.adapter_id})

    def staged(self, pages: int) -> None:
        if self.load is not None:
            self.load.set_attribute("chameleon.pages", pages)

    def loaded(self, at: float) -> None:
        """The adapter became resident at monotonic time `at`."""
        if self.load is not None:
            self.load.end(end_time=max(wall_ns(at), getattr(self.load, "start_time", None) or 0))
            self.load = None
        if self._prefetch is not None:
            self._prefetch.end(end_time=max(wall_ns(at), getattr(self._prefetch, "start_time", None) or 0))
            self._prefetch = None

    def failed(self, message: str) -> None:
        for span in (self.fetch, self.load, self._prefetch):
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, message))
                span.end()
        self.fetch = self.load = self._prefetch = None


class WorkerTraces:
    def __init__(self, tracer: trace.Tracer, worker_id: str):
        self.tracer = tracer
        self.worker_id = worker_id
        self.fetches: dict[str, FetchSpans] = {}   # adapter id -> its latest fetch

    def admitted(self, request_id: str, trace_context, adapter_id: str | None,
                 prompt_tokens: int) -> RequestSpans:
        root = self.tracer.start_span("worker.request", context=extract(dict(trace_context)),
                                      kind=SpanKind.SERVER, attributes={
                                          "chameleon.request_id": request_id,
                                          "chameleon.worker_id": self.worker_id,
                                          "chameleon.prompt_tokens": prompt_tokens})
        adapter = None
        if adapter_id:
            adapter = self.tracer.start_span("adapter", context=span_context(root),
                                             attributes={"chameleon.adapter_id": adapter_id})
        return RequestSpans(root, adapter, adapter_id)

    def fetch_started(self, adapter_id: str, trigger: RequestSpans | None) -> FetchSpans:
        old = self.fetches.get(adapter_id)
        if old is not None and old.open:
            old.failed("superseded by a new fetch of the same adapter")
        f = self.fetches[adapter_id] = FetchSpans(self.tracer, adapter_id, trigger)
        return f

    def first_token(self, spans: RequestSpans, seq, sent_at: float) -> None:
        """The first token went up the stream at monotonic `sent_at`."""
        if spans.adapter is not None:
            ready = seq.arrival + seq.adapter_wait_s
            f = self.fetches.get(spans.adapter_id)
            hit = seq.adapter_wait_s <= 0.0
            spans.adapter.set_attribute("chameleon.adapter.cache", "hit" if hit else "miss")
            if f is not None and not hit:
                if f.trigger is not spans:
                    spans.adapter.add_link(f.fetch_context)
                f.loaded(ready)
            spans.adapter.end(end_time=wall_ns(ready))
        first = seq.first_token_at if seq.first_token_at is not None else sent_at
        start = getattr(seq, "prefill_started_at", None)
        if start is not None:
            self._interval("prefill", spans, start, first, {
                "chameleon.forward_ms": seq.prefill_ms, "chameleon.prompt_tokens": len(seq.prompt_ids)})
        self._interval("first_token", spans, first, sent_at, {})

    def resident(self, adapter_id: str, ready_at: float | None) -> None:
        """The state tick saw the adapter resident (ready since `ready_at`)."""
        f = self.fetches.get(adapter_id)
        if f is not None and f.load is not None and ready_at is not None:
            f.loaded(ready_at)

    def open_loads(self) -> list[str]:
        return [a for a, f in self.fetches.items() if f.load is not None]

    def finished(self, spans: RequestSpans, seq, finish: str, error: str | None = None) -> None:
        now = time.monotonic()
        if spans.adapter is not None and spans.adapter.is_recording():
            spans.adapter.end()   # never got its adapter (failed or cancelled)
        if seq.first_token_at is not None:
            self._interval("decode", spans, seq.first_token_at, now,
                           {"chameleon.output_tokens": len(seq.output_ids)})
        spans.root.set_attributes({"chameleon.finish_reason": finish,
                                   "chameleon.output_tokens": len(seq.output_ids)})
        if error is not None:
            spans.root.set_status(Status(StatusCode.ERROR, error))
        spans.root.end()

    def _interval(self, name: str, spans: RequestSpans, start: float, end: float, attrs) -> None:
        s = self.tracer.start_span(name, context=span_context(spans.root), start_time=wall_ns(start),
                                   attributes=attrs)
        s.end(end_time=wall_ns(max(start, end)))
