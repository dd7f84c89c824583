"""Whole-policy behaviour on the simulated workers (sim.py), fake clock, no threads.

Every number here is simulated time; the simulator is deterministic, so each test
computes its baseline in the same run instead of trusting a stored figure.
"""
from __future__ import annotations

import statistics

import pytest

from scheduler_svc.core.policies import make_policy
from scheduler_svc.core.sim import (FakeClock, SimResult, SimWorkerConfig, TraceConfig, TraceRequest,
                                    make_trace, simulate)


def run(name: str, trace: list[TraceRequest], workers: list[SimWorkerConfig], **kw) -> tuple[SimResult, object]:
    clock = FakeClock()
    policy = make_policy(name, clock)
    return simulate(policy, trace, workers, clock, **kw), policy


# -- head-of-line blocking -------------------------------------------------------------------
def hol_trace() -> list[TraceRequest]:
    """A minute of mixed traffic (so the predictor and the queues have history), then a
    burst of 24 long requests on rank-128 adapters followed 0.5 s later by 24 short
    requests on rank-8 adapters."""
    out, t = [], 0.0
    for n in range(60):
        t += 0.5
        if n % 2:
            out.append(TraceRequest(f"w{n}", t, f"big{n % 4}", 128, 900, 400, 512))
        else:
            out.append(TraceRequest(f"w{n}", t, f"small{n % 4}", 8, 40, 16, 32))
    t += 30.0
    out += [TraceRequest(f"L{n}", t + 0.01 * n, f"big{n % 4}", 128, 900, 400, 512) for n in range(24)]
    out += [TraceRequest(f"S{n}", t + 0.5 + 0.01 * n, f"small{n % 4}", 8, 40, 16, 32) for n in range(24)]
    return out


def test_short_requests_are_not_stuck_behind_a_burst_of_long_ones():
    trace = hol_trace()
    shorts = [t.request_id for t in trace if t.request_id.startswith("S")]
    median = {}
    for name in ("fifo", "chameleon"):
        res, _ = run(name, trace, [SimWorkerConfig()])
        assert len(res.finish_s) == len(trace)
        median[name] = statistics.median(res.ttft_s[r] for r in shorts)
    # FIFO: the shorts wait for the long requests ahead of them to get memory and start
    assert median["chameleon"] <= median["fifo"] / 3, median


# -- starvation ------------------------------------------------------------------------------
STARVATION_BOUND_S = 30.0


def starvation_trace() -> list[TraceRequest]:
    """Two minutes of small requests (15 per second, rank 8, 64 + 32 tokens) on a worker of
    4,096 KV tokens, and four large ones (rank 128, 1,500 prompt + 300 output tokens,
    reserving 2,524 tokens) arriving during it. Alone, a large request takes about 9 s
    (300 steps of ~30 ms); the small ones running when it arrives end within ~1 s."""
    out, t, n = [], 0.0, 0
    while t < 120.0:
        out.append(TraceRequest(f"s{n}", t, f"small{n % 4}", 8, 64, 32, 64))
        n += 1
        t += 1 / 15
    out += [TraceRequest(f"L{i}", 10.0 + 10 * i, f"big{i}", 128, 1500, 300, 1024) for i in range(4)]
    return out


def test_large_requests_finish_within_a_bound_under_sustained_small_load():
    trace = starvation_trace()
    large = [t.request_id for t in trace if t.request_id.startswith("L")]
    cfg = [SimWorkerConfig(total_tokens=4096)]
    res, _ = run("chameleon", trace, cfg)
    assert max(res.finish_s[r] for r in large) <= STARVATION_BOUND_S
    # The load does starve large requests under a multi-queue policy without Chameleon's
    # quota sizing and blocker: static-mlq lends the large queue's share to small requests
    # and lets them take the memory back every round, until the small load ends.
    static, _ = run("static-mlq", trace, cfg)
    assert max(static.finish_s[r] for r in large) > 2 * STARVATION_BOUND_S


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, -(-len(xs) * q // 100) - 1))]


@pytest.mark.xfail(strict=True, reason=(
    "known, unsolved: under sustained overload (5 RPS on one simulated worker, arrivals > "
    "capacity) Chameleon's priority to small queues makes the largest adapters' P99 TTFT "
    "about 2x FIFO's; see the report of the overload-starvation investigation"))
def test_large_requests_p99_under_overload_is_not_worse_than_fifo():
    """Bench trace at 5 RPS: fifo and chameleon end within ~3% of each other (same
    throughput), so a tail worse than fifo's means large requests absorb the whole
    overload. Baseline computed here, in the same run."""
    trace = make_trace(TraceConfig(num_requests=1000, rate_rps=5.0, seed=0))
    large = [t.request_id for t in trace if t.adapter_rank == max(x.adapter_rank for x in trace)]
    p99 = {}
    for name in ("fifo", "chameleon"):
        res, _ = run(name, trace, [SimWorkerConfig()])
        p99[name] = _pct([res.ttft_s[r] for r in large], 99)
    assert p99["chameleon"] <= 1.1 * p99["fifo"], p99


# -- squashes --------------------------------------------------------------------------------
@pytest.mark.parametrize("total_tokens, rate_rps", [(16384, 4.0), (4096, 2.0), (8192, 3.0)])
def test_squash_rate_on_the_benchmark_trace_is_at_most_5_percent(total_tokens, rate_rps):
    """The bench's trace (100 adapters, ranks 8-128, Poisson arrivals); on the smaller
    pools adapters compete with KV pages, so heads get memory-blocked and bypassed."""
    trace = make_trace(TraceConfig(num_requests=1000, rate_rps=rate_rps, seed=0))
    res, policy = run("chameleon", trace, [SimWorkerConfig(total_tokens=total_tokens)])
    assert len(res.finish_s) == len(trace)
    assert res.squashes == policy.metrics()["squashes"]
    assert res.squashes <= 0.05 * len(trace)
    if total_tokens == 4096:
        assert policy.metrics()["bypasses"] >= 10    # the squash rule was exercised


# -- worker loss -----------------------------------------------------------------------------
def test_a_disconnected_worker_gets_no_new_work_and_its_requests_finish_elsewhere():
    trace = make_trace(TraceConfig(num_requests=300, rate_rps=6.0, seed=2))
    clock = FakeClock()
    policy = make_policy("chameleon", clock)
    late_on_w0 = []
    schedule = policy.schedule

    def watch(views):
        adms = schedule(views)
        late_on_w0.extend(a.request.request_id for a in adms if a.worker_id == "w0" and clock.now >= 20.0)
        return adms

    policy.schedule = watch
    res = simulate(policy, trace, [SimWorkerConfig(), SimWorkerConfig()], clock, disconnect=(0, 20.0))
    assert late_on_w0 == []
    assert len(res.finish_s) == len(trace)
    assert res.admissions > len(trace)                   # w0's running requests ran again on w1
