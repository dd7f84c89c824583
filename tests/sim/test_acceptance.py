"""Issue #8's acceptance criteria on a reduced `bench paper` sweep (SIMULATED, a40-llama7b,
100 adapters, the paper workload, S-LoRA's engine: a demand adapter copy stalls the GPU),
three seeds, one run per (policy, RPS, seed).

The throughput criterion holds. Two do not, and are strict xfails, so that they fail loudly
the day they start to hold (measured, README "Reproducing the paper"):
- at slora's first SLO miss (7 RPS here, missed on TBT: its demand copies stall decoding)
  chameleon's P99 TTFT is ~39% lower, not 50% (P50 ~36% lower, meeting the 25%): queues are
  short at that load, so what the cache removes is copy time, not queueing;
- near saturation (11 RPS) chameleon's P99 TTFT is 1.05x fifo's on the same cache.
The whole gain comes from the cache: chameleon-sched-only equals slora at every load.
"""
from __future__ import annotations

import pytest

from clients.bench.paper import Sweep, run_sweep

# ~30 s of CPU (27 runs, two processes); the default 300 s timeout is too tight when the
# machine is shared
pytestmark = pytest.mark.timeout(900)

SWEEP = Sweep(rps=(5.0, 6.0, 7.0, 10.0, 11.0), duration_s=240.0, warmup_s=60.0, seeds=3,
              policies=("slora", "chameleon", "chameleon-cache-only"), adapter_counts=())


@pytest.fixture(scope="module")
def sweep() -> dict:
    return run_sweep(SWEEP, jobs=2)


def test_the_sweep_prints_intervals_and_every_run_finishes(sweep):
    d = sweep["details"]
    assert len(sweep["result"]["rows"]) == 5 * 3 * 3
    assert all(pt["unfinished"] == 0 for pt in d["points"])
    assert all(pt["p99_ttft_ms_ci"] >= 0 for pt in d["points"])
    assert set(sweep["result"]["rows"][0]) == {"policy", "rps", "seed", "p50_ttft_ms", "p99_ttft_ms",
                                              "p99_tbt_ms", "hit_rate"}


@pytest.mark.xfail(strict=True, reason="missed by a hair on this simulator: chameleon's P99 TTFT is "
                   "1.054x fifo's on the same cache at 11 RPS (mean over seeds 0-2; within 5% at 5-10 "
                   "RPS): near saturation, size priority for heads younger than the bounded "
                   "wait still lengthens the large requests' tail")
def test_at_no_load_is_chameleons_p99_more_than_5_percent_worse_than_fifo_on_the_same_cache(sweep):
    for rps, (ratio, _ci) in sweep["details"]["comparison"]["chameleon_p99_vs_fifo_same_cache"].items():
        assert ratio <= 1.05, (rps, ratio)


def test_chameleon_throughput_at_slo_is_at_least_1_3x_slora(sweep):
    thr = sweep["result"]["throughput_rps"]
    assert thr["slora"] > 0 and thr["chameleon"] >= 1.3 * thr["slora"], thr


@pytest.mark.xfail(strict=True, reason="not reproduced on this simulator (module docstring): at "
                   "slora's first SLO miss chameleon's P99 TTFT is ~39% lower (P50 ~36%), not 50%")
def test_where_slora_just_misses_its_slo_chameleon_cuts_p99_by_half_and_p50_by_a_quarter(sweep):
    cmp = sweep["details"]["comparison"]
    assert cmp["slora_miss_rps"] is not None
    assert cmp["p99_cut_vs_slora_at_miss"]["chameleon"][0] >= 0.50, cmp
    assert cmp["p50_cut_vs_slora_at_miss"]["chameleon"][0] >= 0.25, cmp
