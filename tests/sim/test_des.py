"""The discrete-event simulator (sim/des.py) on the real scheduler and worker classes."""
from __future__ import annotations

from dataclasses import replace

import pytest

from sim.cost_model import CostModel
from sim.des import simulate
from sim.metrics import summarize, throughput_at_slo
from sim.policies import POLICY_NAMES
from sim.workload import AdapterSpec, Request, Workload, WorkloadConfig

PAPER_TTFT_MS = {8: 74.0, 16: 78.0, 32: 88.0, 64: 107.0, 128: 144.0}


@pytest.fixture(scope="module")
def a40() -> CostModel:
    return CostModel.from_profile("a40-llama7b")


@pytest.mark.parametrize("adapter_load", ["overlapped", "blocking"])
def test_single_request_ttft_per_rank_matches_the_papers_a40_figures_within_5_percent(a40, adapter_load):
    """One cold request per rank, far apart, through the whole simulator (scheduler round,
    worker admission, adapter copy on the link, prefill step): TTFT = the paper's figure,
    whichever way copies meet compute (a request alone has nothing to overlap)."""
    n = a40.fitted.reference_prompt_tokens
    adapters = [AdapterSpec(f"a{r}", r) for r in PAPER_TTFT_MS]
    reqs = [Request(f"q{i}", 10.0 * i, a.adapter_id, a.rank, n, 410, 3) for i, a in enumerate(adapters)]
    wl = Workload(WorkloadConfig(rps=0.1, duration_s=60.0), adapters, reqs)
    res = simulate(wl, a40, "slora", seed=0, warmup_s=0.0, worker={"adapter_load": adapter_load})
    for rec in res.records:
        paper = PAPER_TTFT_MS[rec.rank]
        assert rec.ttft_s * 1000 == pytest.approx(paper, rel=0.05), (rec.rank, rec.ttft_s)
        assert rec.hit is False and rec.finish_s is not None


def _small(rps: float = 6.0, seed: int = 0, duration_s: float = 120.0) -> Workload:
    return Workload.generate(WorkloadConfig(rps=rps, duration_s=duration_s, num_adapters=50, seed=seed))


def test_same_seed_same_run_and_another_seed_another_run(a40):
    a = simulate(_small(seed=1), a40, "chameleon", seed=1, warmup_s=20)
    b = simulate(_small(seed=1), a40, "chameleon", seed=1, warmup_s=20)
    c = simulate(_small(seed=2), a40, "chameleon", seed=2, warmup_s=20)
    key = lambda res: [(r.request_id, r.first_token_s, r.finish_s, r.hit, r.tokens) for r in res.records]
    assert key(a) == key(b)
    assert summarize(a) == summarize(b)
    assert key(a) != key(c)


def test_nothing_reads_a_requests_true_length_before_it_ends(a40):
    """Make one request's true output longer: every event before its original end is the same."""
    wl = _small(rps=8.0, seed=3, duration_s=60.0)
    base = simulate(wl, a40, "chameleon", seed=3, warmup_s=0)
    victim = next(r for r in wl.requests[50:] if r.output_tokens < 40)
    longer = [replace(r, output_tokens=r.output_tokens + 30) if r is victim else r for r in wl.requests]
    alt = simulate(Workload(wl.config, wl.adapters, longer), a40, "chameleon", seed=3, warmup_s=0)
    t_end = next(r.finish_s for r in base.records if r.request_id == victim.request_id)
    for x, y in zip(base.records, alt.records):
        if x.first_token_s is not None and x.first_token_s < t_end:
            assert x.first_token_s == y.first_token_s, x.request_id
        if x.finish_s is not None and x.finish_s < t_end:
            assert x.finish_s == y.finish_s, x.request_id


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_policy_finishes_every_request(a40, policy):
    res = simulate(_small(rps=9.0, duration_s=60.0), a40, policy, seed=0, warmup_s=10)
    assert res.unfinished == 0
    s = summarize(res)
    assert s["requests"] > 300 and 0 < s["p50_ttft_ms"] <= s["p99_ttft_ms"]
    assert 0.0 <= s["hit_rate"] <= 1.0 and s["squash_rate"] <= 0.05


def test_the_idle_memory_cache_hits_more_than_no_cache(a40):
    wl = _small(rps=6.0, duration_s=90.0)
    hit = {p: summarize(simulate(wl, a40, p, seed=0, warmup_s=20))["hit_rate"]
           for p in ("slora", "chameleon-cache-only")}
    assert hit["chameleon-cache-only"] > hit["slora"] + 0.3, hit


def test_throughput_at_slo_is_the_last_rps_before_the_first_miss():
    rows = [{"rps": 4, "slo_met": True}, {"rps": 6, "slo_met": True}, {"rps": 8, "slo_met": False},
            {"rps": 10, "slo_met": True}]
    assert throughput_at_slo(rows) == 6
    assert throughput_at_slo([{"rps": 4, "slo_met": False}]) == 0.0


def _decoder_and_a_cold_arrival(a40, adapter_load: str):
    """q0 decodes a long answer on a rank-8 adapter; at t=2 s q1 arrives for a cold rank-128
    adapter (a ~74 ms copy). Returns q0's largest gap between tokens and the copy time."""
    adapters = [AdapterSpec("small", 8), AdapterSpec("big", 128)]
    reqs = [Request("q0", 0.0, "small", 8, 64, 400, 400),
            Request("q1", 2.0, "big", 128, 64, 8, 8)]
    wl = Workload(WorkloadConfig(rps=0.1, duration_s=30.0), adapters, reqs)
    res = simulate(wl, a40, "slora", seed=0, warmup_s=0.0, worker={"adapter_load": adapter_load})
    q0 = next(r for r in res.records if r.request_id == "q0")
    assert all(r.finish_s is not None for r in res.records)
    return max(q0.gaps_s), a40.copy_s(a40.adapter_bytes(128))


def test_a_blocking_demand_load_stalls_the_running_batch_for_the_copy(a40):
    """S-LoRA's engine loads a new request's adapter on the compute stream before its
    prefill: the running request's next token waits for the whole copy."""
    gap_overlapped, copy = _decoder_and_a_cold_arrival(a40, "overlapped")
    gap_blocking, _ = _decoder_and_a_cold_arrival(a40, "blocking")
    assert copy > 0.05
    assert gap_blocking - gap_overlapped == pytest.approx(copy, rel=0.25)
    # overlapped: the copy runs beside q0's decode steps; its largest gap is q1's prefill step
    assert gap_overlapped < a40.prefill_s(64, 128) + 2 * a40.decode_s(2, 600)


def test_blocking_mode_is_rejected_when_misspelt():
    from sim.engine import WorkerSpec
    from gpu_worker.core.memory.policy import CacheConfig
    with pytest.raises(ValueError, match="adapter_load"):
        WorkerSpec(CacheConfig("slora"), adapter_load="sync")
