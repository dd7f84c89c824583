from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chameleon_common.tracing import extract
from scheduler_svc.request_trace import RequestTrace, p99


def tracer_and_exporter():
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    return provider.get_tracer("t"), exp


def test_squashed_request_has_two_queue_stints_and_the_breakdown_on_its_root():
    tracer, exp = tracer_and_exporter()
    t = RequestTrace(tracer, extract({}), "r1", "a")
    t.queued(5, 0)
    carrier = t.dispatched("w0", queue_index=1, wrs=0.4, predicted_output=9)
    t.requeued("squash", "w0", tokens_sent=2)
    t.queued(5, 1)
    t.dispatched("w1", None, None, None)
    t.finished(queue_ms=3, ttft_ms=40, fetch_ms=10, wait_ms=15, prefill_ms=20, token_gaps_ms=[5, 9],
               output_tokens=4, finish="FINISH_REASON_EOS", prompt_tokens=5)
    spans = exp.get_finished_spans()
    names = [s.name for s in spans]
    assert names.count("queued") == 2 and names.count("dispatched") == 2 and "squash" in names
    root = next(s for s in spans if s.name == "generate")
    assert root.parent is None and all(s.parent.span_id == root.context.span_id
                                       for s in spans if s is not root)
    first_dispatch = next(s for s in spans if s.name == "dispatched")
    # the Admit's trace context names the dispatched span: the worker's spans hang below it
    assert carrier["traceparent"].split("-")[2] == format(first_dispatch.context.span_id, "016x")
    assert first_dispatch.attributes["chameleon.ended_by"] == "squash"
    q = next(s for s in spans if s.name == "queued")
    assert (q.attributes["chameleon.queue_index"], q.attributes["chameleon.wrs"],
            q.attributes["chameleon.predicted_output"]) == (1, 0.4, 9)
    a = root.attributes
    assert (a["chameleon.adapter_fetch_ms"], a["chameleon.adapter_load_ms"], a["chameleon.tbt_p99_ms"],
            a["chameleon.output_tokens"]) == (10, 5, 9, 4)


def test_failed_request_ends_every_span_with_an_error():
    tracer, exp = tracer_and_exporter()
    t = RequestTrace(tracer, extract({}), "r2", "")
    t.queued(3, 0)
    t.failed("UNAVAILABLE", "no worker")
    spans = {s.name: s for s in exp.get_finished_spans()}
    assert set(spans) == {"generate", "queued"}
    assert not spans["generate"].status.is_ok


def test_p99_nearest_rank():
    assert p99([]) == 0.0 and p99([3.0]) == 3.0
    assert p99(list(range(1, 101))) == 99 and p99(list(range(1, 11))) == 10
