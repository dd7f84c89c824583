"""OpenTelemetry tracing shared by the services and the client.

One trace per request: the client (when given a tracer) or else the scheduler
starts it; its context travels as W3C `traceparent`/`tracestate` in gRPC metadata
on unary-request calls (Generate, StatAdapter, FetchAdapter) and, on the long-lived
Worker stream, in each admission's `trace_context` field.

Configuration follows the standard environment variables:
- OTEL_TRACES_EXPORTER: comma-separated `otlp`, `console`, `none`. When unset, `otlp`
  if an OTLP endpoint (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT) is set, else none.
- OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL: `http/protobuf` (default) or `grpc`; the
  exporters read their endpoint, headers and timeouts from the usual variables.
- OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG: always_on, always_off, traceidratio,
  parentbased_always_on (default), parentbased_always_off, parentbased_traceidratio.
- OTEL_SERVICE_NAME overrides the service name.
"""
from __future__ import annotations

import os
import time
from typing import Iterable, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROVIDERS: list[TracerProvider] = []
_W3C = TraceContextTextMapPropagator()
_WALL_MINUS_MONO_NS = time.time_ns() - time.monotonic_ns()

SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")


def sampler_from_env(env: Mapping[str, str]) -> sampling.Sampler:
    name = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if name not in SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER={name!r}: choose one of {', '.join(SAMPLERS)}")
    ratio = 1.0
    if name.endswith("traceidratio"):
        arg = env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(arg)
        except ValueError:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a number") from None
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={ratio} must be in [0, 1]")
    base = {"always_on": sampling.ALWAYS_ON, "always_off": sampling.ALWAYS_OFF}.get(
        name.removeprefix("parentbased_"))
    if base is None:
        base = sampling.TraceIdRatioBased(ratio)
    return sampling.ParentBased(base) if name.startswith("parentbased_") else base


def exporters_from_env(env: Mapping[str, str]) -> list[SpanExporter]:
    names = env.get("OTEL_TRACES_EXPORTER")
    if names is None:
        has_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        names = "otlp" if has_endpoint else "none"
    out: list[SpanExporter] = []
    for name in (n.strip().lower() for n in names.split(",") if n.strip()):
        if name == "none":
            continue
        if name == "console":
            out.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            elif protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            else:
                raise ValueError(f"OTLP protocol {protocol!r} is not supported: use grpc or "
                                 "http/protobuf")
            out.append(OTLPSpanExporter())
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} "
                             "(use otlp, console or none)")
    return out


def setup_tracing(service_name: str, exporter: SpanExporter | None = None,
                  env: Mapping[str, str] | None = None) -> trace.Tracer:
    """A tracer for this process's service. Without an exporter (the default) spans are
    still created, so trace context still flows through, but nothing leaves the process."""
    env = os.environ if env is None else env
    name = env.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}),
                              sampler=sampler_from_env(env))
    for exp in [exporter] if exporter is not None else exporters_from_env(env):
        provider.add_span_processor(BatchSpanProcessor(exp, schedule_delay_millis=200))
    _PROVIDERS.append(provider)
    return provider.get_tracer("chameleon")


def shutdown_tracing() -> None:
    """Flush and stop every provider this process set up (call on shutdown)."""
    while _PROVIDERS:
        _PROVIDERS.pop().shutdown()


# -- context propagation ------------------------------------------------------
def inject(ctx: otel_context.Context | None = None) -> dict[str, str]:
    """W3C headers (traceparent, tracestate) of the span current in `ctx`; {} without one."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=ctx)
    return carrier


def grpc_metadata(ctx: otel_context.Context | None = None) -> tuple[tuple[str, str], ...]:
    return tuple(inject(ctx).items())


def extract(carrier: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> otel_context.Context:
    """The context that W3C headers name (an empty context when there are none)."""
    if carrier is None:
        return otel_context.Context()
    if not isinstance(carrier, Mapping):
        carrier = {k.lower(): v for k, v in carrier if isinstance(v, str)}
    return _W3C.extract(carrier, context=otel_context.Context())


def from_grpc(servicer_context) -> otel_context.Context:
    """The caller's trace context from a grpc.aio servicer context's metadata."""
    return extract(servicer_context.invocation_metadata() or ())


def span_context(span: trace.Span) -> otel_context.Context:
    return trace.set_span_in_context(span, otel_context.Context())


def wall_ns(monotonic_s: float) -> int:
    """A time.monotonic() reading as epoch nanoseconds (span timestamps)."""
    return int(monotonic_s * 1e9) + _WALL_MINUS_MONO_NS


def trace_id_hex(span: trace.Span) -> str:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def breakdown_attributes(*, ttft_ms: float, queue_ms: float, adapter_wait_ms: float,
                         adapter_fetch_ms: float, prefill_ms: float, tbt_p99_ms: float,
                         output_tokens: int) -> dict[str, float | int]:
    """A request's root span attributes: its TTFT in disjoint parts. `adapter_wait_ms` is the
    whole wait for the adapter (Timings.adapter_load_ms); the fetch from the store is split out
    of it, so chameleon.adapter_load_ms is staging plus loading into the pool."""
    load_ms = max(0.0, adapter_wait_ms - adapter_fetch_ms)
    return {"chameleon.ttft_ms": ttft_ms, "chameleon.queue_ms": queue_ms,
            "chameleon.adapter_fetch_ms": adapter_fetch_ms, "chameleon.adapter_load_ms": load_ms,
            "chameleon.prefill_ms": prefill_ms,
            # what the parts leave out: RPC hops, waiting for the engine's next step, sampling
            "chameleon.other_ms": ttft_ms - queue_ms - adapter_fetch_ms - load_ms - prefill_ms,
            "chameleon.tbt_p99_ms": tbt_p99_ms, "chameleon.output_tokens": output_tokens}
