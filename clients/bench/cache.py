"""Adapter cache policies compared on one simulated trace (`chameleon bench cache`).

Replays the same trace (cache_sim.py: Poisson arrivals, power-law adapter
popularity over 100 adapters of ranks 8-128, chat-like lengths, PCIe-bound
adapter loads) through a simulated engine once per cache policy, using the
real AdapterCache, and reports hit rate, bytes loaded over PCIe and the adapter
load time on requests' critical path. Every number is SIMULATED, not measured
on a GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gpu_worker.core.memory import POLICY_NAMES

from .cache_sim import PAGE_BYTES, EngineConfig, PolicyResult, TraceConfig, make_trace, simulate

QUICK_REQUESTS = 600
FULL_REQUESTS = 3000
RATE_RPS = 6.5
POOL_PAGES = 2000


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    k = max(0, min(len(xs) - 1, -(-len(xs) * q // 100) - 1))
    return xs[int(k)]


def _summary(r: PolicyResult) -> dict:
    lookups = r.hits + r.misses
    return {
        "hit_rate": r.hits / lookups if lookups else 0.0,
        "hits": r.hits,
        "misses": r.misses,
        "loads": r.loads,
        "evictions": r.evictions,
        "bytes_loaded": r.bytes_loaded,
        "critical_load_ms_p50": _percentile(r.load_waits_s, 50) * 1000.0,
        "critical_load_ms_p99": _percentile(r.load_waits_s, 99) * 1000.0,
        "critical_load_ms_mean": sum(r.load_waits_s) / len(r.load_waits_s) * 1000.0,
        "ttft_s_p50": _percentile(r.ttfts_s, 50),
        "ttft_s_p99": _percentile(r.ttfts_s, 99),
        "idle_memory_vs_all_adapters": r.idle_fraction_mean,
        "simulated_seconds": r.sim_seconds,
    }


def run_cache_bench(quick: bool, seed: int = 0) -> dict:
    """Simulate every policy on one trace; a JSON-ready dict labelled 'simulated'."""
    trace_cfg = TraceConfig(num_requests=QUICK_REQUESTS if quick else FULL_REQUESTS,
                            rate_rps=RATE_RPS, seed=seed)
    eng = EngineConfig(num_pages=POOL_PAGES)
    trace = make_trace(trace_cfg)
    started = time.perf_counter()
    policies = {name: _summary(simulate(name, trace, eng)) for name in POLICY_NAMES}
    all_adapter_pages = sum({r.adapter.adapter_id: r.adapter.pages for r in trace}.values())
    return {
        "label": "simulated",
        "quick": quick,
        "seed": seed,
        "policies": policies,
        "trace": {**trace_cfg.__dict__, "distinct_adapters": len({r.adapter.adapter_id for r in trace})},
        "engine": {**eng.__dict__, "page_bytes": PAGE_BYTES, "all_adapters_pages": all_adapter_pages},
        "wall_seconds": time.perf_counter() - started,
    }


def format_table(result: dict) -> str:
    eng = result["engine"]
    lines = [
        f"SIMULATED adapter cache comparison ({result['trace']['num_requests']} requests, "
        f"{result['trace']['rate_rps']} RPS, pool {eng['num_pages']} pages x "
        f"{eng['page_bytes'] / 2**20:.0f} MiB, PCIe {eng['pcie_gb_per_s']} GB/s, seed {result['seed']})",
        f"{'policy':<21}{'hit rate':>9}{'GB loaded':>11}{'loads':>7}{'evict':>7}"
        f"{'crit load p50':>15}{'p99 (ms)':>10}{'TTFT p50':>10}{'p99 (s)':>9}{'idle mem':>10}",
    ]
    for name, p in result["policies"].items():
        lines.append(
            f"{name:<21}{p['hit_rate']:>9.3f}{p['bytes_loaded'] / 1e9:>11.2f}{p['loads']:>7}"
            f"{p['evictions']:>7}{p['critical_load_ms_p50']:>15.1f}{p['critical_load_ms_p99']:>10.1f}"
            f"{p['ttft_s_p50']:>10.2f}{p['ttft_s_p99']:>9.2f}{p['idle_memory_vs_all_adapters']:>10.2f}")
    lines.append("idle mem = time-averaged (free + idle cached adapter pages) / pages of all adapters; "
                 "lru counts its unused slot pages too")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS} requests instead of "
                        f"{FULL_REQUESTS} (a few seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")


def run(args: argparse.Namespace) -> int:
    result = run_cache_bench(args.quick, args.seed)
    print(format_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
