"""`chameleon bench engine` on the tiny model: every system runs and the JSON is as documented."""
from __future__ import annotations

import json

from clients.cli import main


def test_engine_bench_json_covers_every_system_with_forced_lengths(tiny_assets, tmp_path, capsys):
    path = tmp_path / "e.json"
    try:
        main(["bench", "engine", "--model", str(tiny_assets["model"]), "--adapters",
              str(tiny_assets["adapters"]), "--batches", "3", "--kinds", "distinct", "none",
              "--tokens", "5", "--json", str(path)])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "live on CPU" in out and "step breakdown" in out
    doc = json.loads(path.read_text())
    cases = doc["cases"]
    assert {(c["system"], c["adapters"]) for c in cases} == {
        (s, k) for s in ("hf_peft", "engine", "served") for k in ("distinct", "none")}
    for c in cases:
        assert c["batch"] == 3 and c["tok_s"] > 0 and c["tbt_p99_ms"] >= 0
        assert c["tokens"] == 3 * 5, c   # min_tokens / min_new_tokens force every token
    parts = {p["system"]: p for p in doc["breakdown"]}
    assert set(parts) == {"hf_peft", "engine"}
    for p in parts.values():
        assert set(p["parts_ms"]) == {"attention", "base_linear", "lora", "sampling", "other"}
        assert p["parts_ms"]["base_linear"] > 0 and p["parts_ms"]["attention"] > 0
    assert parts["engine"]["parts_ms"]["lora"] > 0 and parts["hf_peft"]["parts_ms"]["lora"] > 0
    assert set(doc["ratios"]) and doc["label"] == "live on CPU"
