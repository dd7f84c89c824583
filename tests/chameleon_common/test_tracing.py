import pytest
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chameleon_common.tracing import (breakdown_attributes, exporters_from_env, extract, inject,
                                      sampler_from_env, setup_tracing, shutdown_tracing, span_context,
                                      wall_ns)


def test_sampler_follows_otel_traces_sampler():
    assert isinstance(sampler_from_env({}), sampling.ParentBased)
    assert sampler_from_env({"OTEL_TRACES_SAMPLER": "always_off"}) is sampling.ALWAYS_OFF
    r = sampler_from_env({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert isinstance(r, sampling.TraceIdRatioBased) and r.rate == 0.25
    assert isinstance(sampler_from_env({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}),
                      sampling.ParentBased)
    for bad in ({"OTEL_TRACES_SAMPLER": "sometimes"},
                {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
                {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}):
        with pytest.raises(ValueError):
            sampler_from_env(bad)


def test_exporters_follow_otel_variables():
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    assert exporters_from_env({}) == []                           # none by default
    assert exporters_from_env({"OTEL_TRACES_EXPORTER": "none",
                               "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}) == []
    [e] = exporters_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert isinstance(e, Http)
    [e] = exporters_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert isinstance(e, Grpc)
    both = exporters_from_env({"OTEL_TRACES_EXPORTER": "console,otlp",
                               "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})
    assert [type(x) for x in both] == [ConsoleSpanExporter, Http]
    for bad in ({"OTEL_TRACES_EXPORTER": "zipkin"},
                {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}):
        with pytest.raises(ValueError):
            exporters_from_env(bad)


def test_w3c_context_round_trips_and_sampler_is_honoured():
    exp = InMemorySpanExporter()
    tracer = setup_tracing("t", exporter=exp, env={"OTEL_SERVICE_NAME": "renamed"})
    span = tracer.start_span("parent")
    carrier = inject(span_context(span))
    assert carrier["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")
    child = tracer.start_span("child", context=extract(list(carrier.items())))
    child.end()
    span.end()
    off_exp = InMemorySpanExporter()
    off = setup_tracing("t", exporter=off_exp, env={"OTEL_TRACES_SAMPLER": "always_off"})
    off.start_span("dropped").end()
    shutdown_tracing()
    spans = {s.name: s for s in exp.get_finished_spans()}
    assert set(spans) == {"parent", "child"} and off_exp.get_finished_spans() == ()
    assert spans["child"].parent.span_id == spans["parent"].context.span_id
    assert spans["parent"].resource.attributes["service.name"] == "renamed"
    from opentelemetry import trace
    assert not trace.get_current_span(extract({})).get_span_context().is_valid   # no headers


def test_breakdown_splits_the_fetch_out_of_the_adapter_wait():
    a = breakdown_attributes(ttft_ms=100, queue_ms=10, adapter_wait_ms=50, adapter_fetch_ms=30,
                             prefill_ms=35, tbt_p99_ms=7, output_tokens=3)
    assert a["chameleon.adapter_load_ms"] == 20 and a["chameleon.other_ms"] == 5
    assert wall_ns(2.0) - wall_ns(1.0) == 1_000_000_000
