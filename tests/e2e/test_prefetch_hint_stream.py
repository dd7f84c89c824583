"""A prefetch hint sent down a real worker's Connect stream caches the adapters before any
request for them arrives; the request that follows is a hit. Real store and worker processes."""
from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from chameleon.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from clients.launcher import Cluster, ClusterSpec

pytestmark = pytest.mark.e2e


async def test_a_prefetch_hint_caches_adapters_and_the_next_request_hits(tiny_assets):
    adapters = sorted(p.name for p in Path(tiny_assets["adapters"]).iterdir() if p.is_dir())[:2]
    spec = ClusterSpec(model=Path(tiny_assets["model"]), adapters=Path(tiny_assets["adapters"]),
                       num_workers=1, policy="fifo", worker_args=["--block-size", "4"])
    with Cluster(spec) as cluster:
        async with grpc.aio.insecure_channel(cluster.workers[0].address) as ch:
            commands: asyncio.Queue = asyncio.Queue()

            async def send():
                while True:
                    yield await commands.get()

            stream = worker_pb2_grpc.WorkerStub(ch).Connect(send())
            await commands.put(worker_pb2.WorkerCommand(
                prefetch=worker_pb2.PrefetchHint(adapter_ids=adapters)))
            state = None
            async with asyncio.timeout(60):
                async for ev in stream:
                    if ev.WhichOneof("kind") == "state":
                        state = ev.state
                        if set(adapters) <= set(state.cached_adapters):
                            break
            assert state.cache_hits == 0 and state.cache_misses == 0  # no request asked yet
            await commands.put(worker_pb2.WorkerCommand(admit=worker_pb2.Admit(
                request_id="after-hint", prompt_token_ids=[1, 2, 3], adapter_id=adapters[0],
                params=common_pb2.SamplingParams(max_tokens=2))))
            done = False
            async with asyncio.timeout(60):
                async for ev in stream:
                    kind = ev.WhichOneof("kind")
                    assert kind != "error", ev.error.message
                    done = done or (kind == "batch" and len(ev.batch.completions) > 0)
                    if done and kind == "state":
                        state = ev.state
                        break
            assert state.cache_hits == 1 and state.cache_misses == 0
            stream.cancel()
