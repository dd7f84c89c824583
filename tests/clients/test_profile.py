"""`chameleon profile` writes a profile in sim/profiles' schema from measurements on this
machine (here: CPU, the tiny model, --quick sizes), and the cost model loads it."""
from __future__ import annotations

import json
from pathlib import Path

from clients.profile import QUICK, measure
from sim.cost_model import CostModel, load_profile


def keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k not in ("lora_target_modules", "single_request_ttft_ms"):
            out |= keys(v, prefix + k + ".")
    return out


def test_a_cpu_profile_has_the_schema_the_measurements_and_loads(tiny_assets, tmp_path):
    prof = measure(Path(tiny_assets["model"]), "cpu",
                   quick=True, progress=lambda m: None)
    ref = load_profile("a40-llama7b")
    # every field of the shipped profiles' model and device sections, and a measured calibration
    for section in ("model", "device"):
        assert keys(ref[section]) <= keys(prof[section]), section
    assert prof["schema"] == ref["schema"] and "chameleon profile --device cpu" in prof["measured_by"]
    m = prof["calibration"]["measurements"]
    assert set(m["prefill_s"]) == {str(n) for n in QUICK["prefill_tokens"]}
    assert [(d["batch"], d["context"]) for d in m["decode_s"]] == [tuple(x) for x in QUICK["decode"]]
    assert set(m["lora_prefill_s"]["by_rank"]) == {str(r) for r in QUICK["ranks"]}
    assert all(t > 0 for t in m["prefill_s"].values())
    cal = prof["calibration"]
    assert cal["achieved_flops"] > 0 and cal["h2d_bytes_per_s"] > 0
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(prof))
    cm = CostModel.from_profile(path)           # the measured path of the cost model
    assert cm.achieved_flops == cal["achieved_flops"] and cm.h2d_bytes_per_s == cal["h2d_bytes_per_s"]
    assert cm.prefill_s(64) > 0 and cm.copy_s(1 << 20) > 0
