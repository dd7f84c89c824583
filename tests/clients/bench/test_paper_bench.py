import json

from clients.cli import build_parser


def test_bench_paper_cli_writes_the_issue_schema_a_report_and_plots(tmp_path, capsys):
    out, js = tmp_path / "out", tmp_path / "paper.json"
    args = build_parser().parse_args([
        "bench", "paper", "--quick", "--seeds", "1", "--policies", "slora,chameleon", "--rps", "6,9",
        "--duration-s", "60", "--warmup-s", "10", "--adapter-counts", "10", "--jobs", "1", "--json", str(js), "--out", str(out)])
    assert args.func(args) == 0
    data = json.loads(js.read_text())
    assert set(data) == {"rows", "throughput_rps"}
    assert len(data["rows"]) == 4
    for row in data["rows"]:
        assert set(row) == {"policy", "rps", "seed", "p50_ttft_ms", "p99_ttft_ms", "p99_tbt_ms", "hit_rate"}
        assert isinstance(row["policy"], str) and isinstance(row["seed"], int)
        assert all(isinstance(row[k], float) for k in ("rps", "p50_ttft_ms", "p99_ttft_ms", "p99_tbt_ms",
                                                         "hit_rate"))
    assert set(data["throughput_rps"]) == {"slora", "chameleon"}
    assert all(isinstance(v, float) for v in data["throughput_rps"].values())
    for name in ("report.md", "details.json", "p99_ttft_vs_rps.png", "ttft_cdf_high_load.png",
                 "hit_rate_vs_adapters.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "p99_ttft_vs_rps.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "SIMULATED" in report and "chameleon bench paper" in report
    printed = capsys.readouterr().out
    assert "SIMULATED" in printed and "throughput at SLO" in printed


def test_bench_paper_rejects_unknown_policies(capsys):
    args = build_parser().parse_args(["bench", "paper", "--quick", "--policies", "nope"])
    assert args.func(args) == 2
    assert "unknown policies" in capsys.readouterr().err
