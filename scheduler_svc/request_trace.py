"""The scheduler's spans of one request, opened and closed as the request moves.

    generate (root, or the client's child)   arrival at the scheduler -> last message
      queued        queued (again after a squash or a lost worker) -> dispatched
      dispatched    Admit sent to a worker -> completion there (or squash / loss)
                    (the worker's spans are children of this one, via Admit.trace_context)
      squash        the policy stopped the request to run it again later

The root span carries the TTFT breakdown as attributes when the request ends:
chameleon.ttft_ms = queue_ms + adapter_fetch_ms + adapter_load_ms + prefill_ms + the
hops between them; plus tbt_p99_ms and output_tokens.
"""
from __future__ import annotations

import math
from typing import Sequence

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from chameleon_common.tracing import breakdown_attributes, grpc_metadata, inject, span_context


def p99(values: Sequence[float]) -> float:
    """Nearest-rank 99th percentile (0 for no values)."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


class RequestTrace:
    def __init__(self, tracer: trace.Tracer, parent, request_id: str, adapter_id: str):
        self.tracer = tracer
        self.root = tracer.start_span(
            "generate", context=parent, kind=SpanKind.SERVER,
            attributes={"chameleon.request_id": request_id, "chameleon.adapter_id": adapter_id})
        self._ctx = span_context(self.root)
        self._queued: trace.Span | None = None
        self._dispatched: trace.Span | None = None

    @property
    def trace_id(self) -> str:
        return format(self.root.get_span_context().trace_id, "032x")

    def store_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata for calls made on the request's behalf (StatAdapter)."""
        return grpc_metadata(self._ctx)

    def queued(self, prompt_tokens: int, attempt: int) -> None:
        self._end_queued()
        self._queued = self.tracer.start_span("queued", context=self._ctx, attributes={
            "chameleon.prompt_tokens": prompt_tokens, "chameleon.attempt": attempt})

    def dispatched(self, worker_id: str, queue_index: int | None, wrs: float | None,
                   predicted_output: int | None) -> dict[str, str]:
        """Ends `queued`, opens `dispatched`; returns the trace context for the Admit."""
        if self._queued is not None:
            attrs = {"chameleon.queue_index": queue_index, "chameleon.wrs": wrs,
                     "chameleon.predicted_output": predicted_output}
            self._queued.set_attributes({k: v for k, v in attrs.items() if v is not None})
        self._end_queued()
        self._end_dispatched()
        self._dispatched = self.tracer.start_span(
            "dispatched", context=self._ctx, kind=SpanKind.PRODUCER,
            attributes={"chameleon.worker_id": worker_id})
        return inject(span_context(self._dispatched))

    def requeued(self, reason: str, worker_id: str | None, tokens_sent: int) -> None:
        """The request runs again: squashed by the policy, or its worker was lost."""
        if self._dispatched is not None:
            self._dispatched.set_attribute("chameleon.ended_by", reason)
        self._end_dispatched()
        if reason == "squash":
            span = self.tracer.start_span("squash", context=self._ctx, attributes={
                "chameleon.worker_id": worker_id or "", "chameleon.tokens_sent": tokens_sent})
            span.end()

    def finished(self, *, queue_ms: float, ttft_ms: float, fetch_ms: float, wait_ms: float,
                 prefill_ms: float, token_gaps_ms: Sequence[float], output_tokens: int,
                 finish: str, prompt_tokens: int) -> None:
        self._end_queued()
        self._end_dispatched()
        self.root.set_attributes(breakdown_attributes(
            ttft_ms=ttft_ms, queue_ms=queue_ms, adapter_wait_ms=wait_ms, adapter_fetch_ms=fetch_ms,
            prefill_ms=prefill_ms, tbt_p99_ms=p99(token_gaps_ms), output_tokens=output_tokens))
        self.root.set_attributes({"chameleon.prompt_tokens": prompt_tokens,
                                  "chameleon.finish_reason": finish})
        self.root.end()

    def failed(self, code_name: str, message: str) -> None:
        self._end_queued()
        self._end_dispatched()
        self.root.set_status(Status(StatusCode.ERROR, f"{code_name}: {message}"))
        self.root.end()

    def _end_queued(self) -> None:
        if self._queued is not None:
            self._queued.end()
            self._queued = None

    def _end_dispatched(self) -> None:
        if self._dispatched is not None:
            self._dispatched.end()
            self._dispatched = None

