"""The paper's evaluation on the discrete-event simulator (`chameleon bench paper`). SIMULATED.

Every policy of sim/policies.py over an RPS sweep of the paper's workload (100
adapters, ranks 8-128, uniform rank popularity, power law within a rank, Poisson
arrivals, Azure-conversation lengths scaled by 0.2) on the `a40-llama7b` cost model,
several seeds per point. Each run lasts several T_refresh (300 s) and the first
`warmup_s` is left out of every figure. Printed, saved as JSON (--json; the schema of
issue #8), a Markdown report and PNG plots (--out). Runs go to a process pool.

    chameleon bench paper --quick                 # 2 seeds, 4 loads, 240 s runs
    chameleon bench paper --seeds 3 --out paper/  # the full sweep (about an hour of CPU)

--quick measured here (2026-12-04, the 2-core machine otherwise idle): 47 s user + 0.4 s
system CPU over two processes, 25 s wall.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sim.des import simulate
from sim.engine import ADAPTER_LOADS
from sim.metrics import SLO_TBT_S, SLO_TTFT_S, summarize, throughput_at_slo
from sim.policies import POLICY_NAMES
from sim.workload import Workload, WorkloadConfig
from clients.bench._io import write_json

# Student t, two-sided 95%, by degrees of freedom (n - 1)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
ROW_KEYS = ("policy", "rps", "seed", "p50_ttft_ms", "p99_ttft_ms", "p99_tbt_ms", "hit_rate")


@dataclass(frozen=True)
class Sweep:
    rps: tuple[float, ...]
    duration_s: float
    warmup_s: float
    seeds: int
    policies: tuple[str, ...] = POLICY_NAMES
    profile: str = "a40-llama7b"
    num_adapters: int = 100
    adapter_counts: tuple[int, ...] = (10, 25, 50, 100, 150)   # hit rate vs adapters
    adapter_rps: float = 8.0
    adapter_duration_s: float = 600.0
    adapter_policies: tuple[str, ...] = ("slora", "vllm-lru", "chameleon")
    # how an adapter copy meets compute (sim/engine.py): "blocking" is S-LoRA's engine, which
    # every system of the paper's evaluation runs on (Chameleon is built on S-LoRA)
    adapter_load: str = "blocking"

    def __post_init__(self) -> None:
        if self.adapter_load not in ADAPTER_LOADS:
            raise ValueError(f"adapter_load must be one of {', '.join(ADAPTER_LOADS)}")
        if self.seeds < 1 or not self.rps or self.duration_s <= self.warmup_s or self.warmup_s < 0:
            raise ValueError(f"need seeds >= 1, some RPS and duration > warm-up >= 0: {self}")


FULL = Sweep(rps=(4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 10.5, 11.0, 11.5, 12.0, 13.0), duration_s=1500.0,
             warmup_s=300.0, seeds=3)
QUICK = Sweep(rps=(5.0, 7.0, 9.0, 11.0), duration_s=240.0, warmup_s=60.0, seeds=2,
              adapter_counts=(25, 100, 150), adapter_duration_s=120.0,
              adapter_policies=("slora", "chameleon"))


def _workload(sw: Sweep, rps: float, seed: int, num_adapters: int, duration_s: float) -> Workload:
    return Workload.generate(WorkloadConfig(rps=rps, duration_s=duration_s, num_adapters=num_adapters,
                                            seed=seed))


def _run_one(task: tuple) -> dict:
    sw, policy, rps, seed, num_adapters, duration_s, keep_ttft = task
    wl = _workload(sw, rps, seed, num_adapters, duration_s)
    warm = sw.warmup_s if duration_s == sw.duration_s else min(sw.warmup_s, duration_s / 4)
    res = simulate(wl, sw.profile, policy, seed=seed, warmup_s=warm,
                   worker={"adapter_load": sw.adapter_load})
    s = summarize(res)
    s.update(rps=rps, num_adapters=num_adapters, wall_s=res.wall_s)
    if keep_ttft:
        s["ttft_ms"] = sorted(r.ttft_s * 1000.0 for r in res.records
                              if r.ttft_s is not None and warm <= r.arrival_s <= duration_s)
    return s


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95% t-interval (0 for one value)."""
    xs = [v for v in values if not math.isnan(v)]
    if not xs:
        return math.nan, math.nan
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, 0.0
    t = _T95.get(len(xs) - 1, 1.96)
    return m, t * statistics.stdev(xs) / math.sqrt(len(xs))


def run_sweep(sw: Sweep, jobs: int | None = None, progress=None) -> dict:
    """Every (policy, RPS, seed) of the sweep plus the hit-rate-vs-adapters runs."""
    top = max(sw.rps)
    tasks = [(sw, p, rps, seed, sw.num_adapters, sw.duration_s, True)
             for rps in sw.rps for p in sw.policies for seed in range(sw.seeds)]
    tasks += [(sw, p, sw.adapter_rps, seed, n, sw.adapter_duration_s, False)
              for n in sw.adapter_counts for p in sw.adapter_policies for seed in range(sw.seeds)]
    jobs = jobs or max(1, min(len(tasks), os.cpu_count() or 1))
    started = time.perf_counter()
    out: list[dict] = []
    if jobs == 1:
        for t in tasks:
            out.append(_run_one(t))
            if progress:
                progress(len(out), len(tasks))
    else:
        with ProcessPoolExecutor(jobs) as ex:
            for s in ex.map(_run_one, tasks, chunksize=1):
                out.append(s)
                if progress:
                    progress(len(out), len(tasks))
    n_sweep = len(sw.rps) * len(sw.policies) * sw.seeds
    return analyse(sw, out[:n_sweep], out[n_sweep:], time.perf_counter() - started, top)


def analyse(sw: Sweep, runs: list[dict], adapter_runs: list[dict], wall_s: float, top: float) -> dict:
    rows = [{k: r[k] for k in ROW_KEYS} for r in runs]
    by = {(r["policy"], r["rps"], r["seed"]): r for r in runs}
    points = []
    for p in sw.policies:
        for rps in sw.rps:
            rs = [by[(p, rps, s)] for s in range(sw.seeds)]
            pt = {"policy": p, "rps": rps}
            for k in ("p50_ttft_ms", "p99_ttft_ms", "p99_tbt_ms", "hit_rate", "miss_cost_ms",
                      "squash_rate", "throughput_rps"):
                pt[k], pt[k + "_ci"] = interval([r[k] for r in rs])
            pt["slo_met_seeds"] = sum(1 for r in rs if r["slo_met"])
            pt["unfinished"] = sum(r["unfinished"] for r in rs)
            classes = sorted({c for r in rs for c in r["queue_share_by_rank"]}, key=int)
            pt["queue_share_by_rank"] = {c: interval([r["queue_share_by_rank"].get(c, math.nan)
                                                       for r in rs])[0] for c in classes}
            points.append(pt)
    thr_seed = {p: [throughput_at_slo([{"rps": rps, "slo_met": by[(p, rps, s)]["slo_met"]}
                                       for rps in sw.rps]) for s in range(sw.seeds)]
                for p in sw.policies}
    throughput = {p: interval(v) for p, v in thr_seed.items()}
    result = {"rows": rows, "throughput_rps": {p: throughput[p][0] for p in sw.policies}}
    details = {"label": "simulated", "sweep": asdict(sw), "points": points,
               "throughput_ci": {p: throughput[p][1] for p in sw.policies},
               "throughput_by_seed": thr_seed, "wall_s": wall_s,
               "slo": {"ttft_s": SLO_TTFT_S, "tbt_s": SLO_TBT_S},
               "adapters": _adapter_points(sw, adapter_runs),
               "comparison": _comparison(sw, by, thr_seed)}
    cdf_rps = details["comparison"].get("slora_miss_rps") or top
    details["cdf"] = {"rps": cdf_rps, "seed": 0,
                      "ttft_ms": {p: by[(p, cdf_rps, 0)]["ttft_ms"] for p in sw.policies}}
    return {"result": result, "details": details}


def _adapter_points(sw: Sweep, runs: list[dict]) -> list[dict]:
    out = []
    for n in sw.adapter_counts:
        for p in sw.adapter_policies:
            rs = [r for r in runs if r["num_adapters"] == n and r["policy"] == p]
            m, ci = interval([r["hit_rate"] for r in rs])
            p99, p99ci = interval([r["p99_ttft_ms"] for r in rs])
            out.append({"policy": p, "num_adapters": n, "rps": sw.adapter_rps, "hit_rate": m,
                        "hit_rate_ci": ci, "p99_ttft_ms": p99, "p99_ttft_ms_ci": p99ci,
                        "slo_met_seeds": sum(1 for r in rs if r["slo_met"])})
    return out


def _ratios(by, sw: Sweep, a: str, b: str, rps: float, key: str) -> tuple[float, float]:
    """Mean (and CI) over seeds of 1 - a/b for metric `key` at `rps`."""
    return interval([1.0 - by[(a, rps, s)][key] / by[(b, rps, s)][key] for s in range(sw.seeds)
                     if by[(b, rps, s)][key] > 0])


def _comparison(sw: Sweep, by: dict, thr_seed: dict) -> dict:
    """The paper's headline comparisons, where the policies ran."""
    out: dict = {}
    if "slora" not in sw.policies:
        return out
    miss = [rps for rps in sw.rps
            if interval([by[("slora", rps, s)]["p99_ttft_ms"] for s in range(sw.seeds)])[0]
            > SLO_TTFT_S * 1000.0 or not all(by[("slora", rps, s)]["slo_met"] for s in range(sw.seeds))]
    out["slora_miss_rps"] = min(miss) if miss else None
    base = thr_seed["slora"]
    for p in sw.policies:
        if p != "slora":
            out.setdefault("throughput_vs_slora", {})[p] = interval(
                [t / b for t, b in zip(thr_seed[p], base) if b > 0])
    if out["slora_miss_rps"] is not None:
        r = out["slora_miss_rps"]
        for p in sw.policies:
            if p != "slora":
                out.setdefault("p99_cut_vs_slora_at_miss", {})[p] = _ratios(by, sw, p, "slora", r, "p99_ttft_ms")
                out.setdefault("p50_cut_vs_slora_at_miss", {})[p] = _ratios(by, sw, p, "slora", r, "p50_ttft_ms")
    if "chameleon" in sw.policies and "chameleon-cache-only" in sw.policies:
        out["chameleon_p99_vs_fifo_same_cache"] = {
            str(rps): interval([by[("chameleon", rps, s)]["p99_ttft_ms"]
                                / by[("chameleon-cache-only", rps, s)]["p99_ttft_ms"]
                                for s in range(sw.seeds)]) for rps in sw.rps}
    return out


# -- CLI -------------------------------------------------------------------------------------
def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="2 seeds, 4 loads, 240 s runs")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per point (default: 3, quick: 2)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the rows and throughput here")
    ap.add_argument("--out", type=Path, default=None, metavar="DIR",
                    help="write report.md, details.json and the PNG plots here")
    ap.add_argument("--policies", default=None, help="comma-separated subset of: " + ", ".join(POLICY_NAMES))
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: one per CPU)")
    ap.add_argument("--rps", default=None, help="comma-separated loads (default: the sweep's own)")
    ap.add_argument("--duration-s", type=float, default=None, help="seconds of arrivals per run")
    ap.add_argument("--warmup-s", type=float, default=None, help="seconds left out of every figure")
    ap.add_argument("--adapter-load", choices=ADAPTER_LOADS, default=None,
                    help="blocking (default): a demand adapter copy stalls the GPU, as in S-LoRA's "
                         "engine; overlapped: copies run beside compute, as in this project's worker")
    ap.add_argument("--adapter-counts", default=None,
                    help="comma-separated adapter counts for the hit-rate plot (default: the sweep's)")


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    sw = QUICK if args.quick else FULL
    if args.seeds is not None:
        sw = replace(sw, seeds=args.seeds)
    if args.adapter_counts:
        sw = replace(sw, adapter_counts=tuple(int(x) for x in args.adapter_counts.split(",")))
    if args.rps:
        sw = replace(sw, rps=tuple(float(x) for x in args.rps.split(",")))
    if args.duration_s is not None or args.warmup_s is not None:
        sw = replace(sw, duration_s=args.duration_s or sw.duration_s,
                     warmup_s=sw.warmup_s if args.warmup_s is None else args.warmup_s)
    if args.adapter_load:
        sw = replace(sw, adapter_load=args.adapter_load)
    if args.policies:
        names = tuple(p.strip() for p in args.policies.split(",") if p.strip())
        bad = [p for p in names if p not in POLICY_NAMES]
        if bad:
            raise ValueError(f"unknown policies {bad}; choose from {', '.join(POLICY_NAMES)}")
        sw = replace(sw, policies=names, adapter_policies=tuple(p for p in sw.adapter_policies if p in names)
                     or names[:1])
    return sw


def run(args: argparse.Namespace) -> int:
    from .paper_report import format_table, write_outputs

    try:
        sw = sweep_from_args(args)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2

    def progress(done: int, total: int) -> None:
        print(f"\r  {done}/{total} simulated runs", end="" if done < total else "\n", file=sys.stderr, flush=True)

    res = run_sweep(sw, args.jobs, progress)
    print(format_table(res))
    write_json(args.json, res["result"])
    if args.out is not None:
        for p in write_outputs(res, args.out, " ".join(["chameleon", "bench", "paper"] + sys.argv[3:])):
            print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
