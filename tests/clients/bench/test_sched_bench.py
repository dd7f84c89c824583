import json

from clients.bench.sched import QUEUE_SIZES, measure_round_us, simulated_ttft
from clients.cli import build_parser
from scheduler_svc.core.policies import POLICY_NAMES


def test_bench_sched_cli_writes_round_cost_json(tmp_path, capsys):
    out = tmp_path / "sched.json"
    args = build_parser().parse_args(["bench", "sched", "--rounds", "5", "--sizes", "10,50",
                                      "--json", str(out)])
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert result["label"] == "live on CPU"
    assert set(result["round_us"]) == {"10", "50"}
    assert all(isinstance(v, float) and v > 0 for v in result["round_us"].values())
    assert all(v > 0 for v in result["admitted_per_round"].values())   # rounds do admit work
    assert "independent of the number queued" in result["complexity"]
    printed = capsys.readouterr().out
    assert "live on CPU" in printed and "us/round" in printed


def test_default_sizes_are_the_documented_ones():
    args = build_parser().parse_args(["bench", "sched"])
    assert tuple(args.sizes) == QUEUE_SIZES == (100, 1000, 10000)
    assert not args.compare


def test_queue_length_stays_put_while_rounds_are_timed():
    m = measure_round_us(200, rounds=20)     # raises when the queue drifts
    assert m["round_us"] > 0 and m["refresh_round_us"] > 0 and m["running_per_round"] > 0


def test_simulated_comparison_is_labelled_and_covers_every_policy():
    sim = simulated_ttft(duration_s=30.0, rate_rps=4.0)
    assert sim["label"] == "simulated"
    assert set(sim["policies"]) == set(POLICY_NAMES)
    for r in sim["policies"].values():
        assert 0 <= r["ttft_p50_s"] <= r["ttft_p99_s"]
        assert 0 <= r["squash_rate"] <= 1
