"""Acceptance (issue 8): one medium-load live-sim run (the real store, scheduler and worker
processes, the worker modelling an A40 running Llama-7B) agrees with the discrete-event
simulator on the same trace: P50 and P99 TTFT within 15%.

Medium load: 6 RPS, about half of what the simulator's chameleon sustains on this profile
(it saturates near 11 RPS). The trace is short (40 s of real time, the first 10 s excluded)
to keep `make test` fast. TTFT is the API's (the scheduler's Timings.ttft_ms: arrival at the
scheduler to the first token sent), the span the simulator models.
"""
from __future__ import annotations

import os

import pytest

from clients.bench.live import run_live
from sim.des import simulate
from sim.metrics import summarize
from sim.workload import Workload, WorkloadConfig

pytestmark = [
    pytest.mark.e2e,
    # Opt-in (CHAMELEON_LIVE_ACCEPTANCE=1): live-sim runs in real time, so it holds on a quiet
    # machine (README, "Live-sim against the simulator": seeds 0-3 within 15% at load <= 3) and
    # not on a busy one (15-26% at P50, up to 2.5x at P99 at load ~9: host stalls land in TTFT).
    pytest.mark.skipif(os.environ.get("CHAMELEON_LIVE_ACCEPTANCE") != "1",
                       reason="real-time run, needs a quiet machine; opt in with CHAMELEON_LIVE_ACCEPTANCE=1"),
]

RPS, DURATION_S, WARMUP_S, SEED = 6.0, 40.0, 10.0, 1
TOLERANCE = 0.15


def test_medium_load_live_sim_agrees_with_the_discrete_event_run(tmp_path):
    wl = Workload.generate(WorkloadConfig(rps=RPS, duration_s=DURATION_S, num_adapters=100, seed=SEED))
    des = summarize(simulate(wl, "a40-llama7b", "chameleon", seed=SEED, warmup_s=WARMUP_S))
    live = run_live("sim:a40-llama7b", "chameleon", wl, warmup_s=WARMUP_S, workdir=tmp_path,
                    progress=lambda m: None)["summary"]
    assert live["errors"] == 0 and live["unfinished"] == 0 and live["requests"] == des["requests"]
    ratios = {k: live[k] / des[k] for k in ("p50_ttft_ms", "p99_ttft_ms")}
    report = ", ".join(f"{k}: live-sim {live[k]:.0f} vs simulated {des[k]:.0f} ms" for k in ratios)
    for k, r in ratios.items():
        assert abs(r - 1) <= TOLERANCE, report
