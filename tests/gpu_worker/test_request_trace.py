import time
from dataclasses import dataclass, field

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chameleon_common.tracing import wall_ns
from gpu_worker.request_trace import FetchLog, WorkerTraces


@dataclass
class Seq:   # the Sequence fields the tracer reads
    arrival: float
    adapter_wait_s: float
    prefill_started_at: float | None
    first_token_at: float | None
    prefill_ms: float = 5.0
    prompt_ids: list = field(default_factory=lambda: [1, 2, 3])
    output_ids: list = field(default_factory=lambda: [7, 8])


def test_miss_trace_and_a_second_waiter_linked_to_the_fetch():
    T = time.monotonic()   # the engine's clock; the test's times lie just ahead of now
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    wt = WorkerTraces(provider.get_tracer("t"), "w0")
    a = wt.admitted("r1", {}, "ad", 3)
    b = wt.admitted("r2", {}, "ad", 3)
    f = wt.fetch_started("ad", a)
    assert f.metadata and f.metadata[0][0] == "traceparent"
    f.fetched(1234, "d" * 64)
    f.staged(6)
    sa = Seq(arrival=T, adapter_wait_s=0.5, prefill_started_at=T + 0.6, first_token_at=T + 0.7)
    wt.first_token(a, sa, sent_at=T + 0.71)
    wt.finished(a, sa, "EOS")
    sb = Seq(arrival=T + 0.2, adapter_wait_s=0.3, prefill_started_at=T + 0.6, first_token_at=T + 0.7)
    wt.first_token(b, sb, sent_at=T + 0.71)
    wt.finished(b, sb, "LENGTH")
    spans = exp.get_finished_spans()
    by = {}
    for s in spans:
        by.setdefault(s.name, []).append(s)
    adapter_a = next(s for s in by["adapter"] if s.parent.span_id == a.root.get_span_context().span_id)
    adapter_b = next(s for s in by["adapter"] if s is not adapter_a)
    [fetch], [load] = by["fetch"], by["load"]
    assert fetch.parent.span_id == load.parent.span_id == adapter_a.context.span_id
    assert fetch.attributes["chameleon.bytes"] == 1234 and load.attributes["chameleon.pages"] == 6
    assert load.end_time == adapter_a.end_time == wall_ns(T + 0.5)
    assert adapter_a.attributes["chameleon.adapter.cache"] == "miss" and not adapter_a.links
    assert [l.context.span_id for l in adapter_b.links] == [fetch.context.span_id]
    assert {s.name for s in spans} >= {"worker.request", "prefill", "first_token", "decode"}
    prefill = by["prefill"][0]
    assert (prefill.start_time, prefill.end_time) == (wall_ns(T + 0.6), wall_ns(T + 0.7))


def test_fetch_log_overlap():
    log = FetchLog()
    log.record("a", 1.0, 2.0)
    assert log.overlap_ms("a", 0.5, 1.5) == 500.0
    assert log.overlap_ms("a", 2.5, 3.0) == 0.0 and log.overlap_ms("b", 0, 9) == 0.0


def test_unsampled_requests_go_through_every_hook():
    """OTEL_TRACES_SAMPLER=always_off: spans do not record, and nothing may trip on that."""
    from opentelemetry.sdk.trace import sampling

    exp = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampling.ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exp))
    wt = WorkerTraces(provider.get_tracer("t"), "w0")
    T = time.monotonic()
    a = wt.admitted("r1", {}, "ad", 3)
    b = wt.admitted("r2", {}, "ad", 3)
    f = wt.fetch_started("ad", a)
    f.fetched(10, "d" * 64)
    f.staged(2)
    for spans, arrival in ((a, T), (b, T + 0.1)):
        seq = Seq(arrival=arrival, adapter_wait_s=0.3, prefill_started_at=T + 0.5, first_token_at=T + 0.6)
        wt.first_token(spans, seq, sent_at=T + 0.61)
        wt.finished(spans, seq, "EOS")
    wt.resident("ad", T + 0.3)
    assert exp.get_finished_spans() == ()
