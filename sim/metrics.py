"""What a simulated run measured, over the requests that arrived after the warm-up.

`summarize(result)` returns (every time in ms, every figure SIMULATED):

  p50_ttft_ms, p99_ttft_ms  time to first token (nearest-rank percentiles); a request that
                            never got a token by the end of the run counts with its wait so
                            far (a lower bound) and is counted in `unfinished`
  p99_tbt_ms                99th percentile over requests of each request's time between
                            tokens (its mean gap between consecutive tokens the client
                            received after the first: time per output token); the paper does
                            not define its TBT statistic, and a per-gap percentile would be
                            set by the ~1% of steps that prefill a long prompt whatever the
                            policy (S-LoRA does not chunk prefills)
  p99_gap_ms                99th percentile of every single gap between tokens (for reference;
                            a squash's re-run shows as one long gap)
  hit_rate                  the paper's cache hit rate: of the requests with an adapter, the
                            share whose adapter was already in GPU memory (loaded) when the
                            request reached its worker
  miss_cost_ms              mean adapter copy time on a missing request's critical path (how
                            long after it could have started its adapter landed)
  squash_rate               requests squashed at least once / requests
  queue_share_by_rank       per adapter rank (the size class), mean of queueing / end-to-end
                            time; queueing = arrival to the start of its first prefill step,
                            minus the adapter copy on its critical path
  throughput_rps            completed requests per second of the measured window
  slo_met                   P99 TTFT <= slo_ttft_s and P99 TBT <= slo_tbt_s, and nothing was
                            left unfinished

`throughput_at_slo(rows)`: the highest RPS whose run met both SLOs (the paper's
throughput), given one summary per RPS.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

SLO_TTFT_S = 5.0
SLO_TBT_S = 0.150


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); nan for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = max(0, min(len(xs) - 1, math.ceil(len(xs) * q / 100.0) - 1))
    return xs[k]


def measured(result) -> list:
    """Records of requests that arrived in [warm-up, end of the workload]."""
    return [r for r in result.records if result.warmup_s <= r.arrival_s <= result.duration_s]


def summarize(result, slo_ttft_s: float = SLO_TTFT_S, slo_tbt_s: float = SLO_TBT_S) -> dict:
    recs = measured(result)
    if not recs:
        raise ValueError("no request arrived after the warm-up")
    end = result.end_s
    ttft = [(r.ttft_s if r.first_token_s is not None else end - r.arrival_s) for r in recs]
    unfinished = sum(1 for r in recs if r.finish_s is None)
    gaps = [g for r in recs for g in r.gaps_s]
    tbt = [sum(r.gaps_s) / len(r.gaps_s) for r in recs if r.gaps_s]
    with_adapter = [r for r in recs if r.adapter_id is not None and r.hit is not None]
    misses = [r for r in with_adapter if not r.hit]
    share: dict[int, list[float]] = defaultdict(list)
    for r in recs:
        if r.finish_s is None or r.started_s is None:
            continue
        e2e = r.finish_s - r.arrival_s
        if e2e > 0:
            q = max(0.0, r.started_s - r.arrival_s - r.adapter_wait_s)
            share[r.rank].append(q / e2e)
    window = max(1e-9, result.duration_s - result.warmup_s)
    p99_ttft = percentile(ttft, 99)
    p99_tbt = percentile(tbt, 99) if tbt else 0.0
    return {
        "policy": result.policy, "profile": result.profile, "seed": result.seed,
        "label": result.label, "requests": len(recs), "unfinished": unfinished,
        "p50_ttft_ms": percentile(ttft, 50) * 1000.0, "p99_ttft_ms": p99_ttft * 1000.0,
        "mean_ttft_ms": sum(ttft) / len(ttft) * 1000.0,
        "p99_tbt_ms": p99_tbt * 1000.0,
        "p99_gap_ms": (percentile(gaps, 99) if gaps else 0.0) * 1000.0,
        "hit_rate": (len(with_adapter) - len(misses)) / len(with_adapter) if with_adapter else 0.0,
        "miss_cost_ms": (sum(r.adapter_wait_s for r in misses) / len(misses) * 1000.0) if misses else 0.0,
        "squash_rate": sum(1 for r in recs if r.squashed) / len(recs),
        "queue_share_by_rank": {str(k): sum(v) / len(v) for k, v in sorted(share.items())},
        "throughput_rps": sum(1 for r in recs if r.finish_s is not None) / window,
        "slo_met": unfinished == 0 and p99_ttft <= slo_ttft_s and p99_tbt <= slo_tbt_s,
    }


def throughput_at_slo(rows: Iterable[dict], rps_key: str = "rps") -> float:
    """The highest RPS at which the run met its SLOs and every lower RPS did too (0: none)."""
    best = 0.0
    for row in sorted(rows, key=lambda r: r[rps_key]):
        if not row["slo_met"]:
            break
        best = row[rps_key]
    return best
