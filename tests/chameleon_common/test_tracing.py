from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chameleon_common.tracing import record_request, setup_tracing, shutdown_tracing


def test_span_tree_breaks_ttft_down():
    exp = InMemorySpanExporter()
    tracer = setup_tracing("test", exporter=exp)
    # arrival 10.0, admitted 10.5, adapter 200 ms, prefill 50 ms, first token 10.76, done 11.5
    record_request(tracer, request_id="r1", adapter_id="a", arrival=10.0, admitted=10.5,
                   adapter_load_ms=200, prefill_ms=50, first_token=10.76, finished=11.5,
                   clock_now=11.5, prompt_tokens=5, completion_tokens=7, finish="FINISH_REASON_EOS")
    shutdown_tracing()
    spans = {s.name: s for s in exp.get_finished_spans()}
    assert set(spans) == {"generate", "queue", "adapter_load", "prefill", "decode"}
    root = spans["generate"]
    for name in ("queue", "adapter_load", "prefill", "decode"):
        assert spans[name].parent.span_id == root.context.span_id
    ms = lambda s: (s.end_time - s.start_time) / 1e6
    assert abs(ms(spans["queue"]) - 500) < 1
    assert abs(ms(spans["adapter_load"]) - 200) < 1
    assert abs(ms(spans["prefill"]) - 50) < 1
    assert abs(ms(root) - 1500) < 1
    assert root.attributes["chameleon.adapter_id"] == "a"
