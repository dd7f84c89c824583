"""One request through the three service processes is one connected trace, exported over
real OTLP/HTTP. Each service exports to its own receiver, so every span's process is known."""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from clients.client import ChameleonClient
from clients.launcher import Cluster, ClusterSpec

pytestmark = pytest.mark.e2e

SERVICES = ("scheduler", "worker", "store")
EXPECTED = {
    "scheduler": {"generate", "queued", "dispatched"},
    "worker": {"worker.request", "adapter", "fetch", "load", "prefill", "first_token", "decode"},
    "store": {"chameleon.v1.AdapterStore/StatAdapter", "chameleon.v1.AdapterStore/FetchAdapter"},
}
PARENT = {  # span -> its parent span
    "queued": "generate", "dispatched": "generate",
    "chameleon.v1.AdapterStore/StatAdapter": "generate",
    "worker.request": "dispatched", "adapter": "worker.request", "fetch": "adapter",
    "load": "adapter", "chameleon.v1.AdapterStore/FetchAdapter": "fetch",
    "prefill": "worker.request", "first_token": "worker.request", "decode": "worker.request",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


class Taps:
    """One OTLP/HTTP receiver per service; every span received is kept from the start."""

    def __init__(self, services):
        from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

        self.ports = {s: free_port() for s in services}
        self.taps = {s: OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=p))
                     for s, p in self.ports.items()}
        self.spans: dict[str, list] = {s: [] for s in services}
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> "Taps":
        for s, tap in self.taps.items():
            await tap.start()
            self._tasks.append(asyncio.create_task(self._keep(s, tap)))
        return self

    async def _keep(self, service: str, tap) -> None:
        async for span in tap.stream_traces():
            self.spans[service].append(span)

    async def __aexit__(self, *exc) -> None:
        for t in self._tasks:
            t.cancel()
        for tap in self.taps.values():
            await tap.stop()

    async def trace(self, trace_id: bytes, want: dict[str, set[str]], timeout: float = 30):
        """{service: {span name: span}} of one trace, once every wanted span has arrived."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got = {s: {sp.name: sp for sp in spans if sp.trace_id == trace_id}
                   for s, spans in self.spans.items()}
            if all(names <= set(got[s]) for s, names in want.items()):
                return got
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"spans of trace {trace_id.hex()} that arrived: "
                                     f"{ {s: sorted(g) for s, g in got.items()} }")
            await asyncio.sleep(0.05)


async def test_one_request_is_one_trace_across_three_services(smollm2_assets):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    adapter = "smol-r8-qv"
    async with Taps(SERVICES) as taps:
        spec = ClusterSpec(
            model=Path(smollm2_assets["model"]), adapters=Path(smollm2_assets["adapters"]),
            env={"OTEL_TRACES_SAMPLER": "always_on"},
            service_env={s: {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{p}"}
                         for s, p in taps.ports.items()})
        cluster = await asyncio.to_thread(lambda: Cluster(spec).__enter__())
        try:
            async with ChameleonClient(cluster.address) as c:
                chunks = [ch async for ch in c.generate("Hello there", adapter=adapter, max_tokens=4)]
            trace_id = bytes.fromhex(chunks[0].trace_id)
            assert chunks[-1].trace_id == chunks[0].trace_id and len(trace_id) == 16
            got = await taps.trace(trace_id, EXPECTED)

            # a second request, traced by the client: the client's span is the root
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            async with ChameleonClient(cluster.address, tracer=provider.get_tracer("test")) as c:
                chunks2 = [ch async for ch in c.generate("Hi", adapter=adapter, max_tokens=3)]
            client_span = exporter.get_finished_spans()[0]
            trace2 = client_span.context.trace_id.to_bytes(16, "big")
            assert chunks2[0].trace_id == trace2.hex()
            got2 = await taps.trace(trace2, {"scheduler": {"generate"}, "worker": {"adapter"}})

            # a third, untraced client inside the caller's own span: its context is propagated
            from opentelemetry import trace as otel_trace

            caller = provider.get_tracer("test").start_span("caller")
            async with ChameleonClient(cluster.address) as c:
                chunks3 = [ch async for ch in c.generate(
                    "Hey", max_tokens=2, trace_context=otel_trace.set_span_in_context(caller))]
            caller.end()
            trace3 = caller.get_span_context().trace_id.to_bytes(16, "big")
            assert chunks3[0].trace_id == trace3.hex()
            got3 = await taps.trace(trace3, {"scheduler": {"generate"}})
        finally:
            await asyncio.to_thread(cluster.stop)

    # every span came from the process that does that work, all in the request's trace
    for service, names in EXPECTED.items():
        assert names <= set(got[service]), (service, sorted(got[service]))
    spans = {name: span for per in got.values() for name, span in per.items()}
    root = spans["generate"]
    assert root.parent_span_id == b""
    for child, parent in PARENT.items():
        assert spans[child].parent_span_id == spans[parent].span_id, (child, parent)

    a = attrs(root)
    parts = a["chameleon.queue_ms"] + a["chameleon.adapter_fetch_ms"] + a["chameleon.adapter_load_ms"] \
        + a["chameleon.prefill_ms"]
    assert a["chameleon.ttft_ms"] > 0 and abs(parts - a["chameleon.ttft_ms"]) <= 0.1 * a["chameleon.ttft_ms"], a
    assert a["chameleon.adapter_fetch_ms"] > 0 and a["chameleon.output_tokens"] == len(
        [t for ch in chunks for t in ch.token_ids])
    fetch, served = attrs(spans["fetch"]), attrs(spans["chameleon.v1.AdapterStore/FetchAdapter"])
    assert fetch["chameleon.bytes"] == served["chameleon.bytes"] > 0
    assert fetch["chameleon.digest"] == served["chameleon.digest"]
    assert attrs(spans["load"])["chameleon.pages"] > 0
    assert attrs(spans["adapter"])["chameleon.adapter.cache"] == "miss"
    # the fetch span lies inside the adapter wait, the store's span inside the fetch
    assert spans["adapter"].start_time_unix_nano <= spans["fetch"].start_time_unix_nano
    assert spans["fetch"].end_time_unix_nano <= spans["load"].end_time_unix_nano
    assert attrs(spans["queued"])["chameleon.prompt_tokens"] > 0

    # the client-traced request: scheduler root is the client's child; the adapter was cached
    assert got2["scheduler"]["generate"].parent_span_id == client_span.context.span_id.to_bytes(8, "big")
    assert attrs(got2["worker"]["adapter"])["chameleon.adapter.cache"] == "hit"
    assert client_span.attributes["chameleon.output_tokens"] == chunks2[-1].completion_tokens
    assert got3["scheduler"]["generate"].parent_span_id == caller.get_span_context().span_id.to_bytes(8, "big")
