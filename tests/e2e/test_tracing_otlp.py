"""Traces leave the scheduler over real OTLP/HTTP and carry the TTFT breakdown."""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from clients.client import ChameleonClient
from clients.launcher import Cluster, ClusterSpec

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_generate_exports_queue_adapter_load_prefill_spans(tiny_assets):
    from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

    port = free_port()
    adapter = sorted(p.name for p in Path(tiny_assets["adapters"]).iterdir() if p.is_dir())[0]
    async with OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=port)) as tap:
        spec = ClusterSpec(model=Path(tiny_assets["model"]), adapters=Path(tiny_assets["adapters"]),
                           env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"})
        cluster = await asyncio.to_thread(lambda: Cluster(spec).__enter__())
        try:
            async with ChameleonClient(cluster.address) as c:
                _, ids, _ = await c.complete("Hello there", adapter=adapter, max_tokens=4)
            names = {}
            async def collect():
                async for span in tap.stream_traces():
                    names[span.name] = span
                    if {"generate", "queue", "adapter_load", "prefill", "decode"} <= set(names):
                        return
            await asyncio.wait_for(collect(), timeout=30)
        finally:
            await asyncio.to_thread(cluster.stop)
    root = names["generate"]
    attrs = {kv.key: kv.value for kv in root.attributes}
    assert attrs["chameleon.adapter_id"].string_value == adapter
    for child in ("queue", "adapter_load", "prefill", "decode"):
        assert names[child].parent_span_id == root.span_id
        assert names[child].trace_id == root.trace_id
    load_ms = (names["adapter_load"].end_time_unix_nano - names["adapter_load"].start_time_unix_nano) / 1e6
    assert load_ms > 0  # the first use of an adapter is a miss: it had to be fetched
