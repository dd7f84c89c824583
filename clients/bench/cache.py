"""Worker cache policies compared on one simulated trace (`chameleon bench cache`). SIMULATED.

Replays one paper workload (sim/workload.py: Poisson arrivals, 100 adapters of ranks
8-128, power law within a rank, Azure-conversation lengths scaled down) through the
discrete-event simulator (sim/des.py) once per worker cache policy, every one under
the same FIFO scheduler, on the a40-llama7b cost model. Reports the paper's hit rate,
bytes copied over the host-to-device link, the adapter copy time on requests'
critical path and TTFT. `--pool-pages` shrinks the pool so that adapters compete with
KV pages. Every number is SIMULATED, not measured on a GPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gpu_worker.core.memory import POLICY_NAMES
from sim.des import simulate
from sim.metrics import percentile, summarize
from sim.policies import PolicySpec
from sim.workload import Workload, WorkloadConfig
from clients.bench._io import write_json

QUICK_S, FULL_S = 120.0, 600.0
RATE_RPS = 8.0
POOL_PAGES = 2000   # 2,000 pages of 8 MiB: 16 GiB, so adapters and KV compete
PROFILE = "a40-llama7b"


def run_cache_bench(quick: bool, seed: int = 0, pool_pages: int = POOL_PAGES) -> dict:
    """Every worker cache policy on one trace, FIFO scheduling; a dict labelled 'simulated'."""
    duration = QUICK_S if quick else FULL_S
    wl = Workload.generate(WorkloadConfig(rps=RATE_RPS, duration_s=duration, seed=seed))
    started = time.perf_counter()
    policies = {}
    for name in POLICY_NAMES:
        res = simulate(wl, PROFILE, PolicySpec(f"fifo+{name}", "fifo", name), seed=seed,
                       warmup_s=duration / 5, worker={"pool_pages": pool_pages})
        s = summarize(res)
        waits = [r.adapter_wait_s * 1000.0 for r in res.records if r.hit is False]
        policies[name] = {
            "hit_rate": s["hit_rate"], "hits": int(res.cache["hits"]), "misses": int(res.cache["misses"]),
            "loads": int(res.cache["loads"]), "evictions": int(res.cache["evictions"]),
            "bytes_loaded": int(res.cache["bytes_loaded"]), "miss_cost_ms": s["miss_cost_ms"],
            "critical_load_ms_p99": percentile(waits, 99) if waits else 0.0,
            "ttft_s_p50": s["p50_ttft_ms"] / 1000.0, "ttft_s_p99": s["p99_ttft_ms"] / 1000.0,
            "unfinished": res.unfinished}
    return {"label": "simulated", "quick": quick, "seed": seed, "profile": PROFILE,
            "rate_rps": RATE_RPS, "duration_s": duration, "pool_pages": pool_pages,
            "requests": len(wl.requests), "policies": policies,
            "wall_seconds": time.perf_counter() - started}


def format_table(result: dict) -> str:
    lines = [
        f"SIMULATED worker cache comparison ({result['requests']} requests at {result['rate_rps']} RPS, "
        f"{result['profile']}, pool {result['pool_pages']} pages, FIFO scheduling, seed {result['seed']})",
        f"{'policy':<21}{'hit rate':>9}{'GB loaded':>11}{'loads':>7}{'evict':>7}"
        f"{'miss cost ms':>14}{'p99 (ms)':>10}{'TTFT p50':>10}{'p99 (s)':>9}",
    ]
    for name, p in result["policies"].items():
        lines.append(
            f"{name:<21}{p['hit_rate']:>9.3f}{p['bytes_loaded'] / 1e9:>11.2f}{p['loads']:>7}"
            f"{p['evictions']:>7}{p['miss_cost_ms']:>14.1f}{p['critical_load_ms_p99']:>10.1f}"
            f"{p['ttft_s_p50']:>10.2f}{p['ttft_s_p99']:>9.2f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_S:.0f} s of arrivals instead of "
                        f"{FULL_S:.0f} s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-pages", type=int, default=POOL_PAGES)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")


def run(args: argparse.Namespace) -> int:
    result = run_cache_bench(args.quick, args.seed, args.pool_pages)
    print(format_table(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
