import statistics
from collections import Counter

import pytest

from sim.workload import (AZURE_CONV_MEDIAN_INPUT, AZURE_CONV_MEDIAN_OUTPUT, Workload, WorkloadConfig,
                          make_adapters)


def test_same_seed_same_workload_and_jsonl_round_trip(tmp_path):
    cfg = WorkloadConfig(rps=5.0, duration_s=120.0, seed=4)
    a, b = Workload.generate(cfg), Workload.generate(cfg)
    assert a.requests == b.requests and len(a.requests) > 400
    assert Workload.generate(cfg, seed=5).requests != a.requests
    p = tmp_path / "w.jsonl"
    a.save_jsonl(p)
    c = Workload.load_jsonl(p)
    assert c.config == a.config and c.adapters == a.adapters and c.requests == a.requests


def test_poisson_rate_and_gamma_burstiness():
    pois = Workload.generate(WorkloadConfig(rps=10.0, duration_s=600.0)).requests
    assert abs(len(pois) / 600.0 - 10.0) < 0.5
    def cv(reqs):
        gaps = [b.arrival_s - a.arrival_s for a, b in zip(reqs, reqs[1:])]
        return statistics.pstdev(gaps) / statistics.mean(gaps)
    assert 0.9 < cv(pois) < 1.1
    bursty = Workload.generate(WorkloadConfig(rps=10.0, duration_s=600.0, arrival="gamma", cv=3.0)).requests
    assert 2.5 < cv(bursty) < 3.5
    assert abs(len(bursty) / 600.0 - 10.0) < 2.0


@pytest.mark.parametrize("n", [10, 100, 150])
def test_adapters_spread_evenly_over_the_ranks(n):
    ads = make_adapters(WorkloadConfig(num_adapters=n))
    per = Counter(a.rank for a in ads)
    assert len(ads) == n and set(per) == {8, 16, 32, 64, 128}
    assert max(per.values()) - min(per.values()) <= 1


def test_rank_popularity_uniform_or_power_law_and_power_law_within_a_rank():
    uni = Workload.generate(WorkloadConfig(rps=20.0, duration_s=300.0)).requests
    per_rank = Counter(r.rank for r in uni)
    assert max(per_rank.values()) < 1.15 * min(per_rank.values())
    r8 = Counter(r.adapter_id for r in uni if r.rank == 8)
    assert r8["r8-000"] > 5 * r8["r8-019"]
    flat = Workload.generate(WorkloadConfig(rps=20.0, duration_s=300.0, adapter_exponent=0.0)).requests
    f8 = Counter(r.adapter_id for r in flat if r.rank == 8)
    assert f8["r8-000"] < 1.5 * f8["r8-019"]
    pl = Counter(r.rank for r in Workload.generate(
        WorkloadConfig(rps=20.0, duration_s=300.0, rank_popularity="power-law")).requests)
    assert pl[8] > 3 * pl[128]


def test_lengths_follow_the_scaled_azure_conversation_fit_and_max_tokens_is_separate():
    cfg = WorkloadConfig(rps=20.0, duration_s=600.0)
    reqs = Workload.generate(cfg).requests
    med_in = statistics.median(r.input_tokens for r in reqs)
    med_out = statistics.median(r.output_tokens for r in reqs)
    assert abs(med_in - AZURE_CONV_MEDIAN_INPUT * cfg.length_scale) < 10
    assert abs(med_out - AZURE_CONV_MEDIAN_OUTPUT * cfg.length_scale) < 4
    assert all(r.max_tokens == cfg.client_max_tokens == 410 for r in reqs)
    assert all(1 <= r.output_tokens <= r.max_tokens for r in reqs)
    assert statistics.mean(r.output_tokens for r in reqs) < 0.2 * cfg.client_max_tokens


def test_bad_config_is_rejected():
    for bad in (dict(rps=0), dict(arrival="weibull"), dict(num_adapters=3), dict(length_scale=2.0),
                dict(rank_popularity="zipf"), dict(cv=0)):
        with pytest.raises(ValueError):
            WorkloadConfig(**bad)
