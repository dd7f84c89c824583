"""The scheduler tells the worker which adapters its queue holds: a request waiting in the
scheduler's queue finds its adapter already staged on the worker when it is admitted (a
cache hit, no load on its critical path). Real store, worker and scheduler processes."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.client import ChameleonClient
from clients.launcher import Cluster, ClusterSpec

pytestmark = pytest.mark.e2e


async def test_a_queued_requests_adapter_is_staged_before_it_is_admitted(tiny_assets):
    adapter = sorted(p.name for p in Path(tiny_assets["adapters"]).iterdir() if p.is_dir())[0]
    # one batch slot: while the base-model requests run, the adapter request waits in the
    # scheduler's queue, and only the scheduler's hint can bring its adapter to the worker
    spec = ClusterSpec(model=Path(tiny_assets["model"]), adapters=Path(tiny_assets["adapters"]),
                       policy="fifo", worker_args=["--max-running", "1", "--block-size", "4"])
    with Cluster(spec) as cluster:
        async with ChameleonClient(cluster.address) as c:
            long = [asyncio.create_task(c.complete("Once upon a time,", max_tokens=240,
                                                   temperature=1.0, seed=i)) for i in range(2)]
            await asyncio.sleep(0.05)
            async def run_queued() -> tuple[list[int], dict]:
                ids, timings = [], {}
                async for chunk in c.generate("The capital of France is", adapter=adapter,
                                              max_tokens=4):
                    ids += chunk.token_ids
                    timings = chunk.timings or timings
                return ids, timings

            queued = asyncio.create_task(run_queued())
            staged_while_queued = False
            async with asyncio.timeout(60):
                while not queued.done():
                    s = await c.status()
                    w = s.workers[0]
                    if s.queued >= 1 and adapter in w.cached_adapters:
                        staged_while_queued = True
                        assert w.cache_misses == 0    # nobody asked for it yet: only the hint
                        break
                    await asyncio.sleep(0.01)
                ids, timings = await queued
                await asyncio.gather(*long)
                # the worker reports its cache every 0.25 s: wait for the report that counts
                # the request (a fixed sleep was too short on a loaded machine)
                s = await c.status()
                while s.workers[0].cache_hits + s.workers[0].cache_misses == 0:
                    await asyncio.sleep(0.05)
                    s = await c.status()
    assert staged_while_queued, "the adapter was not staged while its request was queued"
    assert s.metrics["prefetch_hints_sent"] >= 1
    w = s.workers[0]
    assert w.cache_hits == 1 and w.cache_misses == 0 and len(ids) >= 1
    assert timings["adapter_load_ms"] < 50.0
