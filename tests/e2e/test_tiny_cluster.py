"""The whole system on the tiny random Llama: real processes, real gRPC."""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import grpc
import pytest

from clients.client import ChameleonClient, ChameleonError
from clients.launcher import Cluster, ClusterSpec
from tests.e2e.hf_reference import hf_greedy

pytestmark = pytest.mark.e2e

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "Rust and Python differ in", "List: apples, pears,", "Hello! How are you today?",
           "SELECT name FROM users WHERE", "Water boils at", "1, 2, 3, 4,", "The quick brown fox"]


@pytest.fixture(scope="module")
def cluster(tiny_assets, tmp_path_factory):
    adapters = tmp_path_factory.mktemp("adapters")
    for src in (Path(tiny_assets["adapters"]), Path(tiny_assets["bad_adapters"])):
        for d in src.iterdir():
            if d.is_dir():
                # copies: the store refuses symlinks that lead out of its folder
                shutil.copytree(d, adapters / d.name)
    spec = ClusterSpec(model=Path(tiny_assets["model"]), adapters=adapters,
                       worker_args=["--max-running", "16", "--block-size", "4",
                                    "--pool-memory-bytes", str(4 << 20)])
    with Cluster(spec) as c:
        yield c


def good_adapters(tiny_assets) -> list[str]:
    return sorted(p.name for p in Path(tiny_assets["adapters"]).iterdir() if p.is_dir())


async def test_concurrent_greedy_matches_transformers_peft(cluster, tiny_assets):
    adapters = good_adapters(tiny_assets)
    assert len(adapters) >= 4
    jobs = [(PROMPTS[i % len(PROMPTS)], adapters[i % len(adapters)]) for i in range(len(adapters) + 2)]
    jobs += [(PROMPTS[3], None), (PROMPTS[7], None)]
    async with ChameleonClient(cluster.address) as c:
        outs = await asyncio.gather(*(c.complete(p, adapter=a, max_tokens=16) for p, a in jobs))
    model = Path(tiny_assets["model"])
    for (prompt, adapter), (text, ids, finish) in zip(jobs, outs):
        ref = hf_greedy(model, Path(tiny_assets["adapters"]) / adapter if adapter else None, prompt, 16)
        assert ids == ref, f"adapter={adapter} prompt={prompt!r}"
        assert finish == ("length" if len(ref) == 16 else "eos")


async def expect_status(coro, code: grpc.StatusCode, *needles: str) -> str:
    with pytest.raises(ChameleonError) as ei:
        await coro
    assert ei.value.code == code, ei.value
    for n in needles:
        assert n in ei.value.message, ei.value.message
    return ei.value.message


async def test_bad_input_gets_clear_statuses_and_service_keeps_serving(cluster, tiny_assets):
    bad = next(p.name for p in Path(tiny_assets["bad_adapters"]).iterdir() if p.is_dir())
    async with ChameleonClient(cluster.address) as c:
        await expect_status(c.complete("hi", adapter="no-such-adapter", max_tokens=4),
                            grpc.StatusCode.NOT_FOUND, "no-such-adapter")
        await expect_status(c.complete("word " * 400, max_tokens=4),
                            grpc.StatusCode.INVALID_ARGUMENT, "context")
        msg = await expect_status(c.complete("hi", adapter=bad, max_tokens=4),
                                  grpc.StatusCode.FAILED_PRECONDITION, bad)
        assert "lora_" in msg and "shape" in msg.lower()
        await expect_status(c.complete("", max_tokens=4), grpc.StatusCode.INVALID_ARGUMENT, "prompt")
        await expect_status(c.complete("hi", max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens")
        await expect_status(c.complete("hi", max_tokens=-3), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens")
        for top_p in (0.0, 1.5, -0.1):
            await expect_status(c.complete("hi", max_tokens=4, top_p=top_p),
                                grpc.StatusCode.INVALID_ARGUMENT, "top_p")
        await expect_status(c.complete("hi", adapter="../../etc", max_tokens=4),
                            grpc.StatusCode.INVALID_ARGUMENT, "adapter id")
        text, ids, finish = await c.complete("The capital of France is", max_tokens=5)
        assert len(ids) in range(1, 6) and finish in ("length", "eos")


async def test_sampling_is_reproducible_with_a_seed_and_stop_strings_cut(cluster, tiny_assets):
    adapter = good_adapters(tiny_assets)[0]
    async with ChameleonClient(cluster.address) as c:
        a = await c.complete("Once upon a time", adapter=adapter, max_tokens=12, temperature=0.9,
                             top_p=0.9, seed=1234)
        b = await c.complete("Once upon a time", adapter=adapter, max_tokens=12, temperature=0.9,
                             top_p=0.9, seed=1234)
        assert a == b
        full, _, _ = await c.complete("Hello! How are you today?", max_tokens=12)
        assert len(full) > 3
        stop = full[2:4]
        cut, _, finish = await c.complete("Hello! How are you today?", max_tokens=12, stop=[stop])
        assert finish == "stop" and stop not in cut and full.startswith(cut)


async def test_client_cancellation_frees_the_worker(cluster):
    async with ChameleonClient(cluster.address) as c:
        got = 0
        async for chunk in c.generate("Once upon a time", max_tokens=200):
            got += len(chunk.token_ids)
            if got >= 2:
                break  # leaving the loop cancels the call
        with pytest.raises(ChameleonError) as ei:  # a deadline that passes also cancels
            async for _ in c.generate("Once upon a time", max_tokens=200, timeout=0.3):
                await asyncio.sleep(0.2)
        assert ei.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 10
        while True:
            s = await c.status()
            if s.running == 0 and all(w.running == 0 for w in s.workers):
                break
            assert time.monotonic() < deadline, s
            await asyncio.sleep(0.1)


async def test_list_adapters_and_timings(cluster, tiny_assets):
    async with ChameleonClient(cluster.address) as c:
        ads = {a.adapter_id: a for a in await c.list_adapters()}
        assert set(good_adapters(tiny_assets)) <= set(ads)
        assert all(ads[a].valid for a in good_adapters(tiny_assets))
        chunks = [ch async for ch in c.generate("Water boils at", adapter=good_adapters(tiny_assets)[-1],
                                                max_tokens=4)]
    first, last = chunks[0], chunks[-1]
    assert first.timings["ttft_ms"] > 0
    assert last.finish_reason and last.timings["total_ms"] >= last.timings["ttft_ms"]
    assert last.timings["ttft_ms"] >= last.timings["queue_ms"]


async def test_min_tokens_and_ignore_eos_force_the_length(cluster):
    async with ChameleonClient(cluster.address) as c:
        await expect_status(c.complete("hi", max_tokens=4, min_tokens=5),
                            grpc.StatusCode.INVALID_ARGUMENT, "min_tokens")
        await expect_status(c.complete("hi", max_tokens=4, min_tokens=-1),
                            grpc.StatusCode.INVALID_ARGUMENT, "min_tokens")
        for kw in ({"min_tokens": 40}, {"ignore_eos": True}):
            text, ids, finish = await c.complete("Water boils at", max_tokens=40, **kw)
            assert (len(ids), finish) == (40, "length"), kw
