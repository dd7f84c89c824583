"""OpenTelemetry traces that break each request's TTFT down.

The scheduler records one `generate` span per request when it finishes, with
children `queue` (arrival → admitted to a worker), `adapter_load` (time the
request waited for its adapter on the worker), `prefill` and `decode`. The
worker reports its part as durations, so the spans are laid end to end from
the admission time rather than read off two clocks.

Export is configured by the standard variable OTEL_EXPORTER_OTLP_ENDPOINT
(OTLP over HTTP, e.g. http://jaeger:4318); without it nothing is exported.
"""
from __future__ import annotations

import os
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter


_PROVIDERS: list[TracerProvider] = []


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> trace.Tracer:
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is None and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    _PROVIDERS.append(provider)
    return provider.get_tracer("chameleon")


def shutdown_tracing() -> None:
    """Flush and stop every provider this process set up (call on shutdown)."""
    while _PROVIDERS:
        _PROVIDERS.pop().shutdown()


def record_request(tracer: trace.Tracer, *, request_id: str, adapter_id: str | None, arrival: float,
                   admitted: float | None, adapter_load_ms: float, prefill_ms: float,
                   first_token: float | None, finished: float, clock_now: float,
                   prompt_tokens: int, completion_tokens: int, finish: str) -> None:
    """Emit the span tree; times are on the caller's monotonic clock (`clock_now` = now)."""
    wall_now = time.time_ns()

    def ns(t: float) -> int:
        return wall_now - int((clock_now - t) * 1e9)

    attrs = {"chameleon.request_id": request_id, "chameleon.adapter_id": adapter_id or "",
             "chameleon.prompt_tokens": prompt_tokens, "chameleon.completion_tokens": completion_tokens,
             "chameleon.finish_reason": finish}
    root = tracer.start_span("generate", start_time=ns(arrival), attributes=attrs)
    ctx = trace.set_span_in_context(root)
    admitted = admitted if admitted is not None else finished
    t = admitted
    parts = [("queue", arrival, admitted)]
    load_end = t + adapter_load_ms / 1000.0
    parts.append(("adapter_load", t, load_end))
    prefill_end = load_end + prefill_ms / 1000.0
    if first_token is not None:
        prefill_end = min(max(prefill_end, load_end), first_token)
    parts.append(("prefill", load_end, prefill_end))
    parts.append(("decode", prefill_end, finished))
    for name, a, b in parts:
        s = tracer.start_span(name, context=ctx, start_time=ns(a))
        s.end(end_time=ns(max(a, b)))
    root.end(end_time=ns(finished))
