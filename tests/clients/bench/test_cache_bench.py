import json

import pytest

from clients.bench.cache import run_cache_bench
from gpu_worker.core.memory import POLICY_NAMES


@pytest.fixture(scope="module")
def quick():
    return run_cache_bench(quick=True, seed=0)


def test_quick_run_reports_every_policy_with_sane_values(quick):
    assert quick["label"] == "simulated"
    assert set(quick["policies"]) == set(POLICY_NAMES)
    biggest = 128 * 2 * 2**20  # a rank-128 q/k/v/o adapter on Llama-7B, fp16
    for name, p in quick["policies"].items():
        assert 0.0 <= p["hit_rate"] <= 1.0, name
        assert p["unfinished"] == 0, name
        assert isinstance(p["bytes_loaded"], int) and 0 < p["bytes_loaded"] <= p["loads"] * biggest
        assert p["miss_cost_ms"] >= 0 and p["ttft_s_p50"] <= p["ttft_s_p99"]
    json.dumps(quick)  # JSON-ready


def test_idle_memory_caching_loads_fewer_bytes_than_the_baselines(quick):
    pol = quick["policies"]
    assert pol["chameleon"]["bytes_loaded"] < pol["slora"]["bytes_loaded"] / 3
    assert pol["chameleon"]["bytes_loaded"] < pol["lru"]["bytes_loaded"] / 3
    assert pol["chameleon"]["hit_rate"] > pol["slora"]["hit_rate"] + 0.3


def test_cli_subcommand_writes_json(tmp_path, capsys):
    from clients.cli import build_parser

    out = tmp_path / "cache.json"
    args = build_parser().parse_args(["bench", "cache", "--quick", "--pool-pages", "1200",
                                      "--json", str(out)])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert data["label"] == "simulated" and set(data["policies"]) == set(POLICY_NAMES)
    assert data["pool_pages"] == 1200
    assert "SIMULATED" in capsys.readouterr().out
