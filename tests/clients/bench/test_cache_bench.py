import json
from collections import Counter

import pytest

from clients.bench.cache import run_cache_bench
from clients.bench.cache_sim import RANKS, EngineConfig, TraceConfig, make_trace, simulate
from gpu_worker.core.memory import POLICY_NAMES


@pytest.fixture(scope="module")
def quick():
    return run_cache_bench(quick=True, seed=0)


def test_quick_run_reports_every_policy_with_sane_values(quick):
    assert quick["label"] == "simulated"
    assert set(quick["policies"]) == set(POLICY_NAMES)
    n = quick["trace"]["num_requests"]
    biggest = max(RANKS) * 2 * 2**20  # a rank-128 q/k/v/o adapter on Llama-7B, fp16
    for name, p in quick["policies"].items():
        assert 0.0 <= p["hit_rate"] <= 1.0, name
        assert p["hits"] + p["misses"] == n
        assert isinstance(p["bytes_loaded"], int) and 0 < p["bytes_loaded"] <= p["loads"] * biggest
        assert 0.0 <= p["critical_load_ms_p50"] <= p["critical_load_ms_p99"]
        assert p["ttft_s_p50"] <= p["ttft_s_p99"]
    json.dumps(quick)  # JSON-ready


def test_idle_memory_caching_loads_fewer_bytes_than_the_baselines(quick):
    pol = quick["policies"]
    assert pol["chameleon"]["bytes_loaded"] < pol["slora"]["bytes_loaded"]
    assert pol["chameleon"]["bytes_loaded"] < pol["lru"]["bytes_loaded"]
    assert pol["chameleon"]["hit_rate"] > pol["slora"]["hit_rate"]


def test_the_workload_leaves_between_a_third_and_two_thirds_of_the_adapters_room(quick):
    idle = quick["policies"]["slora"]["idle_memory_vs_all_adapters"]
    assert 1 / 3 <= idle <= 2 / 3


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_small_simulation_keeps_cache_invariants_every_step(policy):
    trace = make_trace(TraceConfig(num_requests=60, rate_rps=3.0, seed=3))
    r = simulate(policy, trace, EngineConfig(num_pages=300, check_invariants=True))
    assert r.hits + r.misses == 60 and len(r.ttfts_s) == 60
    assert all(w >= 0 for w in r.load_waits_s) and all(t > 0 for t in r.ttfts_s)
    assert trace[0].started is None  # the caller's trace is not mutated


def test_trace_popularity_is_uniform_over_ranks_and_skewed_within_a_rank():
    trace = make_trace(TraceConfig(num_requests=4000, seed=1))
    per_rank = Counter(r.adapter.rank for r in trace)
    assert set(per_rank) == set(RANKS)
    assert max(per_rank.values()) < 1.2 * min(per_rank.values())
    rank8 = Counter(r.adapter.adapter_id for r in trace if r.adapter.rank == 8)
    assert rank8["r8-00"] > 3 * rank8["r8-09"]
    again = make_trace(TraceConfig(num_requests=4000, seed=1))
    assert [(r.arrival, r.adapter.adapter_id, r.input_len) for r in again] == \
        [(r.arrival, r.adapter.adapter_id, r.input_len) for r in trace]


def test_cli_subcommand_writes_json(tmp_path, capsys):
    from clients.cli import build_parser

    out = tmp_path / "cache.json"
    args = build_parser().parse_args(["bench", "cache", "--quick", "--json", str(out)])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert data["label"] == "simulated" and set(data["policies"]) == set(POLICY_NAMES)
    assert "SIMULATED" in capsys.readouterr().out
