"""Load generator: sends many generation requests and measures what clients see.

TTFT is measured from sending the request to the first streamed token; TBT is
every gap between later streamed tokens. Arrivals are open-loop Poisson at a
given rate (rate-capped with asyncio-throttle) or closed-loop at a fixed
concurrency.
"""
from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from asyncio_throttle import Throttler

from clients.client import ChameleonClient, ChameleonError


@dataclass
class LoadRequest:
    prompt: str
    adapter: str | None
    max_tokens: int
    min_tokens: int = 0   # EOS cannot end it earlier (benchmarks force the output length)


@dataclass
class LoadResult:
    request: LoadRequest
    ttft_s: float | None = None
    tbt_s: list[float] = field(default_factory=list)
    tokens: int = 0
    total_s: float = 0.0
    error: str | None = None
    server_timings: dict[str, float] = field(default_factory=dict)
    trace_id: str = ""          # the request's trace (hex), to look up in Jaeger


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def _one(client: ChameleonClient, req: LoadRequest, timeout: float) -> LoadResult:
    res = LoadResult(req)
    t0 = last = time.perf_counter()
    try:
        async for c in client.generate(req.prompt, adapter=req.adapter, max_tokens=req.max_tokens,
                                       min_tokens=req.min_tokens, timeout=timeout):
            now = time.perf_counter()
            if c.token_ids:
                if res.ttft_s is None:
                    res.ttft_s = now - t0
                else:
                    res.tbt_s.append(now - last)
                last = now
                res.tokens += len(c.token_ids)
            if c.timings:
                res.server_timings = c.timings
            if c.trace_id:
                res.trace_id = c.trace_id
    except ChameleonError as e:
        res.error = str(e)
    res.total_s = time.perf_counter() - t0
    return res


async def run_load(address: str, requests: list[LoadRequest], *, rps: float | None = None,
                   concurrency: int = 32, seed: int = 0, timeout: float = 600.0,
                   on_done: Callable[[LoadResult], None] | None = None) -> tuple[list[LoadResult], float]:
    """Returns (results in request order, wall seconds)."""
    rng = random.Random(seed)
    sem = asyncio.Semaphore(concurrency)
    throttler = Throttler(rate_limit=max(1, int(rps)), period=1.0) if rps else None

    async with ChameleonClient(address) as client:
        async def task(req: LoadRequest) -> LoadResult:
            async with sem:
                r = await _one(client, req, timeout)
            if on_done:
                on_done(r)
            return r

        t0 = time.perf_counter()
        tasks = []
        for req in requests:
            if rps:
                async with throttler:
                    await asyncio.sleep(rng.expovariate(rps))
            tasks.append(asyncio.create_task(task(req)))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - t0


def summarize(results: list[LoadResult], wall_s: float) -> dict[str, float]:
    ok = [r for r in results if r.error is None]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tbt = [g for r in ok for g in r.tbt_s]
    tokens = sum(r.tokens for r in ok)
    return {
        "requests": len(results), "errors": len(results) - len(ok),
        "ttft_p50_ms": percentile(ttft, 50) * 1e3, "ttft_p99_ms": percentile(ttft, 99) * 1e3,
        "tbt_p99_ms": percentile(tbt, 99) * 1e3, "output_tokens": tokens,
        "output_tok_per_s": tokens / wall_s if wall_s > 0 else 0.0, "wall_s": wall_s,
        "mean_queue_ms": statistics.fmean([r.server_timings.get("queue_ms", 0) for r in ok]) if ok else 0.0,
    }
