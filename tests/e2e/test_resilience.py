"""Losing a worker loses no request; SIGTERM drains streams in flight. Real processes."""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from clients.client import ChameleonClient
from clients.launcher import Cluster, ClusterSpec
from tests.e2e.hf_reference import hf_greedy

pytestmark = pytest.mark.e2e


def spec(tiny_assets, workers: int, policy: str = "chameleon") -> ClusterSpec:
    return ClusterSpec(model=Path(tiny_assets["model"]), adapters=Path(tiny_assets["adapters"]),
                       num_workers=workers, policy=policy,
                       worker_args=["--max-running", "4", "--block-size", "4"])


@pytest.mark.parametrize("policy", ["fifo", "chameleon"])
async def test_killed_worker_requests_are_requeued_and_finish_with_the_right_tokens(tiny_assets, policy):
    adapters = sorted(p.name for p in Path(tiny_assets["adapters"]).iterdir() if p.is_dir())
    jobs = [("Once upon a time,", adapters[i % len(adapters)] if i % 3 else None) for i in range(16)]
    model = Path(tiny_assets["model"])
    refs = [hf_greedy(model, Path(tiny_assets["adapters"]) / a if a else None, p, 24) for p, a in jobs]
    with Cluster(spec(tiny_assets, 2, policy)) as cluster:
        async with ChameleonClient(cluster.address) as c:
            calls = [asyncio.create_task(c.complete(p, adapter=a, max_tokens=24)) for p, a in jobs]
            busy = False
            for _ in range(500):  # kill a worker once both have work in flight
                st = await c.status()
                busy = len(st.workers) == 2 and all(w.running > 0 for w in st.workers)
                if busy:
                    break
                await asyncio.sleep(0.01)
            assert busy, "the load never reached both workers: the test would show nothing"
            cluster.workers[0].popen.kill()
            outs = await asyncio.wait_for(asyncio.gather(*calls), timeout=120)
            st = await c.status()
    for (prompt, adapter), (_, ids, _), ref in zip(jobs, outs, refs):
        assert ids == ref, f"adapter={adapter}: one clean stream, no text lost or repeated"
    assert sum(w.connected for w in st.workers) == 1


async def test_sigterm_lets_streams_in_flight_finish(tiny_assets):
    with Cluster(spec(tiny_assets, 1, "fifo")) as cluster:
        async with ChameleonClient(cluster.address) as c:
            stream = c.generate("Once upon a time,", max_tokens=48)
            first = await stream.__anext__()
            cluster.scheduler.popen.send_signal(signal.SIGTERM)
            rest = [chunk async for chunk in stream]
        assert rest and rest[-1].finish_reason == "length"
        assert len(first.token_ids) + sum(len(ch.token_ids) for ch in rest) == 48
        assert cluster.scheduler.popen.wait(timeout=30) == 0
