"""Whole-policy behaviour on the discrete-event simulator (sim/des.py), virtual clock.

The simulator runs the real scheduler policies through the service's RequestBook and
the real worker memory/planner on the a40-llama7b cost model. Every number here is
simulated time; runs are deterministic, so each test computes its baseline in the
same run instead of trusting a stored figure. Scheduler policies are compared on the
same worker cache (the idle-memory cache), so only scheduling differs.
"""
from __future__ import annotations

import statistics

import pytest

from sim.cost_model import CostModel
from sim.des import SimResult, simulate
from sim.metrics import percentile
from sim.policies import PolicySpec
from sim.workload import AdapterSpec, Request, Workload, WorkloadConfig

A40 = CostModel.from_profile("a40-llama7b")


def on_cache(scheduler: str, cache: str = "chameleon") -> PolicySpec:
    return PolicySpec(f"{scheduler}+{cache}", scheduler, cache)


def workload(reqs: list[tuple], duration_s: float | None = None) -> Workload:
    """reqs: (id, arrival, adapter, rank, input, output, max_tokens)."""
    adapters = sorted({(a, r) for _, _, a, r, *_ in reqs})
    requests = [Request(i, t, a, r, n, m, o) for i, t, a, r, n, o, m in reqs]
    end = duration_s or max(t for _, t, *_ in reqs) + 1.0
    return Workload(WorkloadConfig(rps=len(reqs) / end, duration_s=end),
                    [AdapterSpec(a, r) for a, r in adapters], sorted(requests, key=lambda q: q.arrival_s))


def run(scheduler: str, wl: Workload, pool_pages: int = 0, **kw) -> SimResult:
    return simulate(wl, A40, on_cache(scheduler), seed=0, warmup_s=0.0,
                    worker={"pool_pages": pool_pages} if pool_pages else None, **kw)


def ttft(res: SimResult, prefix: str) -> list[float]:
    return [r.ttft_s for r in res.records if r.request_id.startswith(prefix)]


# -- head-of-line blocking -------------------------------------------------------------------
def hol_trace() -> Workload:
    """A minute of mixed traffic (so the predictor and the queues have history), then a
    burst of 24 long requests on rank-128 adapters followed 0.5 s later by 24 short
    requests on rank-8 adapters, on a pool of 1,024 pages (16,384 KV tokens)."""
    out, t = [], 0.0
    for n in range(60):
        t += 0.5
        if n % 2:
            out.append((f"w{n}", t, f"big{n % 4}", 128, 900, 400, 512))
        else:
            out.append((f"w{n}", t, f"small{n % 4}", 8, 40, 16, 32))
    t += 30.0
    out += [(f"L{n}", t + 0.01 * n, f"big{n % 4}", 128, 900, 400, 512) for n in range(24)]
    out += [(f"S{n}", t + 0.5 + 0.01 * n, f"small{n % 4}", 8, 40, 16, 32) for n in range(24)]
    return workload(out)


def test_short_requests_are_not_stuck_behind_a_burst_of_long_ones():
    wl = hol_trace()
    median = {}
    for name in ("fifo", "chameleon"):
        res = run(name, wl, pool_pages=1024)
        assert res.unfinished == 0
        median[name] = statistics.median(ttft(res, "S"))
    # FIFO: the shorts wait for every long request ahead of them to get memory and start;
    # Chameleon starts them as soon as the first long ones end (measured: 16.2 s vs 29.5 s;
    # the pool is full of running long requests until then, so nothing can start earlier)
    assert median["chameleon"] <= median["fifo"] / 1.5, median


# -- starvation ------------------------------------------------------------------------------
STARVATION_BOUND_S = 30.0


def starvation_trace() -> Workload:
    """Two minutes of small requests (15 per second, rank 8, 64 + 32 tokens) on a pool of
    256 pages (4,096 KV tokens), and four large ones (rank 128, 1,500 prompt + 300 output
    tokens) arriving during it."""
    out, t, n = [], 0.0, 0
    while t < 120.0:
        out.append((f"s{n}", t, f"small{n % 4}", 8, 64, 32, 64))
        n += 1
        t += 1 / 15
    out += [(f"L{i}", 10.0 + 10 * i, f"big{i}", 128, 1500, 300, 500) for i in range(4)]
    return workload(out)


def test_large_requests_finish_within_a_bound_under_sustained_small_load():
    wl = starvation_trace()
    res = run("chameleon", wl, pool_pages=256)
    assert res.unfinished == 0
    finish = {r.request_id: r.finish_s - r.arrival_s for r in res.records}
    assert max(finish[f"L{i}"] for i in range(4)) <= STARVATION_BOUND_S


# -- the overload tail -----------------------------------------------------------------------
def test_p99_ttft_under_overload_is_not_worse_than_fifo_on_the_same_cache():
    """The paper workload at 13 RPS on one a40-llama7b worker: past its capacity (~11.5
    RPS, compute-bound), so the queue grows for the whole run. Chameleon's priority to
    small queues used to leave the large queues the whole backlog (P99 TTFT ~3x FIFO's);
    the bounded wait (ChameleonConfig.max_wait_s) caps how long any head waits behind
    quota. Baseline computed here, in the same run, over three seeds."""
    for seed in (0, 1, 2):
        wl = Workload.generate(WorkloadConfig(rps=13.0, duration_s=240.0, seed=seed))
        p99 = {}
        for name in ("fifo", "chameleon"):
            res = simulate(wl, A40, on_cache(name), seed=seed, warmup_s=40.0)
            p99[name] = percentile([r.ttft_s for r in res.records if r.ttft_s is not None
                                    and r.arrival_s >= 40.0], 99)
        assert p99["chameleon"] <= 1.05 * p99["fifo"], (seed, p99)


# -- squashes --------------------------------------------------------------------------------
@pytest.mark.parametrize("pool_pages, rps", [(1024, 6.0), (512, 3.0)])
def test_squash_rate_on_the_paper_workload_is_at_most_5_percent(pool_pages, rps):
    """On small pools adapters compete with KV pages, so heads get memory-blocked and bypassed."""
    wl = Workload.generate(WorkloadConfig(rps=rps, duration_s=120.0, seed=0))
    res = run("chameleon", wl, pool_pages=pool_pages)
    assert res.unfinished == 0
    squashed = sum(1 for r in res.records if r.squashed)
    assert squashed <= res.policy_metrics["squashes"]
    assert squashed <= 0.05 * len(res.records)


# -- worker loss -----------------------------------------------------------------------------
def test_a_lost_worker_gets_no_new_work_and_its_requests_finish_elsewhere():
    wl = Workload.generate(WorkloadConfig(rps=6.0, duration_s=50.0, seed=2))
    res = run("chameleon", wl, num_workers=2, disconnect=(0, 20.0))
    assert res.unfinished == 0
    assert res.admissions > len(wl.requests)            # w0's running requests ran again on w1
    late = [r for r in res.records if r.arrival_s > 20.0]
    assert late and all(r.worker == "w1" for r in late)
    assert any(r.worker == "w0" for r in res.records)
