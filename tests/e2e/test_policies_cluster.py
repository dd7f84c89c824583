"""Every scheduler and cache policy through the real services gives the same tokens.

Policies decide when a request runs and where its adapter lives, never what it
generates: each combination must reproduce transformers + PEFT greedy output,
with a pool small enough that adapters are evicted and loaded again.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.client import ChameleonClient
from clients.launcher import Cluster, ClusterSpec
from tests.e2e.hf_reference import hf_greedy

pytestmark = pytest.mark.e2e

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,", "Water boils at"]
COMBINATIONS = [
    ("fifo", ["--cache-policy", "slora"]),
    ("sjf", ["--cache-policy", "lru", "--lru-slots", "2", "--lru-max-rank", "32"]),
    ("static-mlq", ["--cache-policy", "chameleon-lru"]),
    ("chameleon", ["--cache-policy", "chameleon-fairshare", "--predictive-prefetch"]),
    ("chameleon", ["--cache-policy", "chameleon"]),
]


@pytest.fixture(scope="module")
def jobs_and_refs(tiny_assets):
    adapters = sorted(p.name for p in Path(tiny_assets["adapters"]).iterdir() if p.is_dir())
    jobs = [(PROMPTS[i % len(PROMPTS)], adapters[(3 * i) % len(adapters)] if i % 4 else None)
            for i in range(12)]
    model = Path(tiny_assets["model"])
    refs = [hf_greedy(model, Path(tiny_assets["adapters"]) / a if a else None, p, 8) for p, a in jobs]
    return jobs, refs


@pytest.mark.parametrize("sched,worker_args", COMBINATIONS,
                         ids=[f"{s}+{w[1]}" for s, w in COMBINATIONS])
async def test_policy_combination_matches_transformers_peft(tiny_assets, jobs_and_refs, sched,
                                                            worker_args):
    jobs, refs = jobs_and_refs
    spec = ClusterSpec(model=Path(tiny_assets["model"]), adapters=Path(tiny_assets["adapters"]),
                       policy=sched, worker_args=["--max-running", "6", "--block-size", "4",
                                                  "--pool-memory-bytes", str(3 << 20), *worker_args])
    with Cluster(spec) as cluster:
        async with ChameleonClient(cluster.address) as c:
            outs = await asyncio.gather(*(c.complete(p, adapter=a, max_tokens=8) for p, a in jobs))
            for _ in range(50):  # the worker reports its cache state every 0.25 s
                status = await c.status()
                if sum(w.cache_misses for w in status.workers) > 0:
                    break
                await asyncio.sleep(0.1)
    for (prompt, adapter), (_, ids, _), ref in zip(jobs, outs, refs):
        assert ids == ref, f"{sched} {worker_args}: adapter={adapter} prompt={prompt!r}"
    assert status.policy == sched and status.completed >= len(jobs)
    assert sum(w.cache_misses for w in status.workers) > 0  # adapters really were loaded
