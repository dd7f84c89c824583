"""`chameleon bench live --device sim:...`: a workload trace through the real store, worker and
scheduler processes, the worker modelling an A40 running Llama-7B (--sim-profile)."""
from __future__ import annotations

import pytest

from clients.bench.live import run_live
from sim.cost_model import CostModel
from sim.workload import Workload, WorkloadConfig

pytestmark = pytest.mark.e2e


def test_a_short_trace_runs_through_the_services_at_the_modelled_pace(tmp_path):
    cost = CostModel.from_profile("a40-llama7b")
    wl = Workload.generate(WorkloadConfig(rps=3.0, duration_s=8.0, num_adapters=20, seed=3))
    out = run_live("sim:a40-llama7b", "chameleon", wl, warmup_s=0.0, workdir=tmp_path,
                   progress=lambda m: None)
    assert out["label"] == "live-sim"
    recs = {r["request_id"]: r for r in out["records"]}
    assert len(recs) == len(wl.requests) >= 15
    for req in wl.requests:
        r = recs[req.request_id]
        assert r["error"] is None and r["finish_s"] is not None
        # the modelled model ends with EOS as the trace's N-th token: N - 1 visible tokens
        assert r["tokens"] == req.output_tokens - 1
        assert len(r["gaps_s"]) == req.output_tokens - 1
        ttft = r["first_token_s"] - r["arrival_s"]
        # no request can beat its own modelled prefill step
        assert ttft >= cost.prefill_s(req.input_tokens, req.rank) * 0.999
    first = wl.requests[0]                     # alone on a cold worker: copy + prefill
    r = recs[first.request_id]
    alone = cost.single_request_ttft_s(first.input_tokens, first.rank)
    assert alone * 0.999 <= r["first_token_s"] - r["arrival_s"] <= 3 * alone + 0.3
    assert r["adapter_load_ms"] >= cost.copy_s(cost.adapter_bytes(first.rank)) * 1000 * 0.999
    s = out["summary"]
    assert s["requests"] == len(wl.requests) and s["unfinished"] == 0 and s["errors"] == 0
    assert 0.0 < s["hit_rate"] < 1.0           # 20 adapters, ~24 requests: some hit, some miss
    assert s["p50_ttft_ms"] <= s["p99_ttft_ms"]
