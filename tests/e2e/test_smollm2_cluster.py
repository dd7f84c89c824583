"""Token parity on the real SmolLM2-135M through the running services."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.client import ChameleonClient
from clients.launcher import Cluster, ClusterSpec
from tests.e2e.hf_reference import hf_greedy

pytestmark = pytest.mark.e2e

PROMPTS = ["The capital of France is", "Write a haiku about the sea.", "def add(a, b):",
           "Three facts about owls:", "Translate to French: good night", "Why do cats purr?"]


async def test_smollm2_concurrent_greedy_matches_transformers_peft(smollm2_assets):
    adapters = sorted(p.name for p in Path(smollm2_assets["adapters"]).iterdir() if p.is_dir())
    jobs = [(PROMPTS[i % len(PROMPTS)], adapters[i % len(adapters)]) for i in range(8)]
    jobs += [("The capital of France is", None), (PROMPTS[1], None)]
    spec = ClusterSpec(model=Path(smollm2_assets["model"]), adapters=Path(smollm2_assets["adapters"]),
                       worker_args=["--max-running", "16", "--max-context", "512"])
    cluster = await asyncio.to_thread(lambda: Cluster(spec).__enter__())
    try:
        async with ChameleonClient(cluster.address) as c:
            outs = await asyncio.gather(*(c.complete(p, adapter=a, max_tokens=10) for p, a in jobs))
    finally:
        codes = await asyncio.to_thread(cluster.stop)
    assert all(code == 0 for code in codes.values()), codes  # SIGTERM drains and exits cleanly
    model = Path(smollm2_assets["model"])
    for (prompt, adapter), (text, ids, _) in zip(jobs, outs):
        ref = hf_greedy(model, Path(smollm2_assets["adapters"]) / adapter if adapter else None, prompt, 10)
        assert ids == ref, f"adapter={adapter} prompt={prompt!r}: {text!r}"
    base_text = outs[-2][0]
    assert "Paris" in base_text, base_text
