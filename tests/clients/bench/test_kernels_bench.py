"""`chameleon bench kernels --quick` runs and writes the documented JSON."""
from __future__ import annotations

import json


from clients.cli import main


def test_quick_bench_writes_the_documented_cases(tmp_path, capsys):
    path = tmp_path / "k.json"
    try:
        main(["bench", "kernels", "--quick", "--reps", "1", "--device", "cpu", "--json", str(path)])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "the Triton kernels are not run" in out and "live on CPU" in out
    cases = json.loads(path.read_text())["cases"]
    assert {c["backend"] for c in cases} == {"torch", "reference"}
    assert {c["phase"] for c in cases} == {"decode", "prefill"}
    for c in cases:
        assert set(c) >= {"phase", "tokens", "adapters", "backend", "ms", "gbps"}
        assert c["ms"] > 0 and c["gbps"] > 0 and c["adapters"] <= c["tokens"]
