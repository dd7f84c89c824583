"""Scheduler cost per round, measured live on this CPU (`chameleon bench sched`).

Times `ChameleonPolicy.schedule()` rounds with 100 / 1,000 / 10,000 requests queued
on one worker of 16,384 KV tokens and 64 slots. The policy tracks the requests it
admitted as running; between rounds (outside the timing) the two oldest of them
finish and every admitted request is replaced by a new arrival, so the queue length
stays put and each round admits into the room the finished ones left. `--compare`
also replays one trace through every scheduler policy in the discrete-event
simulator (sim/des.py, the a40-llama7b cost model, every policy on the same worker
cache) and prints TTFT percentiles: those numbers are SIMULATED, not measured on a GPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import deque
from pathlib import Path

from scheduler_svc.core.policies import POLICY_NAMES, make_policy
from scheduler_svc.core.types import PendingRequest, WorkerView
from sim.cost_model import CostModel
from sim.des import VirtualClock, simulate
from sim.policies import PolicySpec
from sim.workload import Request, Workload, WorkloadConfig
from clients.bench._io import write_json

PROFILE = "a40-llama7b"
TOTAL_TOKENS, MAX_RUNNING, BLOCK_TOKENS = 16384, 64, 16

QUEUE_SIZES = (100, 1000, 10000)
FINISHED_PER_ROUND = 2
WARMUP_REQUESTS = 400
COMPLEXITY = ("O(W + K + A + bypass_scan) per round for W workers, K <= 4 queues and A admitted "
              "requests, plus O(R log R) over the R running requests of a worker whose queue head "
              "is memory-blocked; independent of the number queued. Once per T_refresh (300 s) one "
              "round also re-clusters: K-means and silhouettes over the S <= 2000 recent samples "
              "(O(S log S + S k_max)) and re-bucketing of the Q queued requests (O(Q log Q)).")


def _pending(t: Request, now: float, cost: CostModel) -> PendingRequest:
    return PendingRequest(t.request_id, t.adapter_id, t.input_tokens, t.max_tokens,
                          adapter_bytes=cost.adapter_bytes(t.rank), adapter_rank=t.rank, arrival=now)


def _view(cost: CostModel, running: deque[PendingRequest], cached: set[str]) -> WorkerView:
    reserved = sum(r.reserved_tokens for r in running)
    free_tokens = TOTAL_TOKENS - reserved
    page_bytes = cost.page_bytes(BLOCK_TOKENS)
    return WorkerView("w0", TOTAL_TOKENS, free_tokens, running=len(running),
                      max_running=MAX_RUNNING, cached_adapters=cached,
                      free_bytes=max(0, free_tokens) // BLOCK_TOKENS * page_bytes,
                      block_tokens=BLOCK_TOKENS, page_bytes=page_bytes)


def measure_round_us(queued: int, rounds: int, seed: int = 0) -> dict[str, float]:
    """With `queued` requests waiting: the median microseconds of one schedule() round,
    the mean number admitted and running per round, and the microseconds of the one
    round that re-clusters the queues (T_refresh passed) right after the timed rounds."""
    cost = CostModel.from_profile(PROFILE)
    need = WARMUP_REQUESTS + queued + rounds * MAX_RUNNING
    wl = Workload.generate(WorkloadConfig(rps=100.0, duration_s=need / 90.0, seed=seed))
    trace = wl.requests
    if len(trace) < need:
        raise RuntimeError(f"the trace has {len(trace)} requests, {need} needed")
    cached = {t.adapter_id for t in trace if t.adapter_id}
    real_output = {t.request_id: t.output_tokens for t in trace}
    clock = VirtualClock()
    policy = make_policy("chameleon", clock)
    feed = iter(trace)
    running: deque[PendingRequest] = deque()
    # Warm up the predictor and the queues: requests that finish with their real length.
    for t in [next(feed) for _ in range(WARMUP_REQUESTS)]:
        clock.now += 0.05
        policy.enqueue(_pending(t, clock.now, cost))
        for adm in policy.schedule([_view(cost, running, cached)]):
            policy.on_finish(adm.request, t.output_tokens)
    if policy.queued():
        raise RuntimeError(f"warm-up left {policy.queued()} requests queued")
    for _ in range(queued):
        clock.now += 0.001
        policy.enqueue(_pending(next(feed), clock.now, cost))
    samples, admitted, busy = [], 0, 0
    for _ in range(rounds):
        clock.now += 0.03
        for _ in range(min(FINISHED_PER_ROUND, len(running))):
            done = running.popleft()
            policy.on_finish(done, real_output[done.request_id])
        views = [_view(cost, running, cached)]
        start = time.perf_counter()
        adms = policy.schedule(views)
        samples.append(time.perf_counter() - start)
        admitted += len(adms)
        for adm in adms:
            running.append(adm.request)
            policy.enqueue(_pending(next(feed), clock.now, cost))
        busy += len(running)
    if policy.queued() != queued:
        raise RuntimeError(f"queue drifted to {policy.queued()} from {queued}")
    clock.now += policy.config.refresh_s
    refreshes = policy.refreshes
    start = time.perf_counter()
    policy.schedule([_view(cost, running, cached)])
    refresh_us = (time.perf_counter() - start) * 1e6
    if policy.refreshes != refreshes + 1:
        raise RuntimeError("the refresh round did not re-cluster the queues")
    return {"round_us": statistics.median(samples) * 1e6, "admitted_per_round": admitted / rounds,
            "running_per_round": busy / rounds, "refresh_round_us": refresh_us}


def _pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, -(-len(xs) * q // 100) - 1))]


def simulated_ttft(duration_s: float = 300.0, rate_rps: float = 11.0, seed: int = 0) -> dict:
    """Every scheduler policy on one simulated trace and a40-llama7b worker, all on the
    idle-memory cache: SIMULATED TTFT, not measured."""
    wl = Workload.generate(WorkloadConfig(rps=rate_rps, duration_s=duration_s, seed=seed))
    out = {}
    for name in POLICY_NAMES:
        res = simulate(wl, PROFILE, PolicySpec(f"{name}+chameleon", name, "chameleon"), seed=seed,
                       warmup_s=0.0)
        done = [r for r in res.records if r.ttft_s is not None]
        ttft = [r.ttft_s for r in done]
        small = [r.ttft_s for r in done if r.rank == min(x.rank for x in done)]
        large = [r.ttft_s for r in done if r.rank == max(x.rank for x in done)]
        squashes = sum(r.squashed for r in res.records)
        out[name] = {"ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
                     "smallest_rank_ttft_p50_s": _pct(small, 50),
                     "largest_rank_ttft_p99_s": _pct(large, 99),
                     "squashes": squashes, "squash_rate": squashes / max(1, res.admissions)}
    return {"label": "simulated", "requests": len(wl.requests), "rate_rps": rate_rps, "seed": seed,
            "policies": out}


def run_sched_bench(sizes: tuple[int, ...] = QUEUE_SIZES, rounds: int = 200,
                    compare: bool = False) -> dict:
    """Round cost for each queue size; a JSON-ready dict labelled 'live on CPU'."""
    keys = ("round_us", "admitted_per_round", "running_per_round", "refresh_round_us")
    result: dict = {"label": "live on CPU", **{k: {} for k in keys}, "rounds": rounds,
                    "complexity": COMPLEXITY}
    for n in sizes:
        m = measure_round_us(n, rounds)
        for k in keys:
            result[k][str(n)] = m[k]
    if compare:
        result["simulated_ttft"] = simulated_ttft()
    return result


def format_report(result: dict) -> str:
    lines = [f"Chameleon scheduling round, live on CPU (median of {result['rounds']} rounds, one worker):"]
    for n, us in result["round_us"].items():
        lines.append(f"  {int(n):>6} queued: {us:8.1f} us/round ({result['admitted_per_round'][n]:.1f} "
                     f"admitted, {result['running_per_round'][n]:.0f} running); the round that "
                     f"re-clusters (every T_refresh): {result['refresh_round_us'][n] / 1000:.1f} ms")
    lines.append(f"  asymptotic cost: {result['complexity']}")
    sim = result.get("simulated_ttft")
    if sim:
        lines.append(f"SIMULATED TTFT (not measured), {sim['requests']} requests at {sim['rate_rps']} RPS, "
                     f"one simulated {PROFILE} worker, seed {sim['seed']}:")
        lines.append(f"  {'policy':<11} {'p50 s':>8} {'p99 s':>8} {'r8 p50':>8} {'r128 p99':>9} {'squash %':>9}")
        for name, r in sim["policies"].items():
            lines.append(f"  {name:<11} {r['ttft_p50_s']:8.3f} {r['ttft_p99_s']:8.3f} "
                         f"{r['smallest_rank_ttft_p50_s']:8.3f} {r['largest_rank_ttft_p99_s']:9.3f} "
                         f"{100 * r['squash_rate']:9.2f}")
    return "\n".join(lines)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes wants comma-separated integers, got {text!r}") from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"--sizes must be >= 1 each, got {text!r}")
    return sizes


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help="also write the result as JSON here")
    ap.add_argument("--rounds", type=int, default=200, help="rounds timed per queue size")
    ap.add_argument("--sizes", type=_sizes, default=QUEUE_SIZES,
                    help="queued requests per measurement, comma-separated (default 100,1000,10000)")
    ap.add_argument("--compare", "--sim", dest="compare", action="store_true",
                    help="also compare fifo/sjf/static-mlq/chameleon TTFT in the simulator (SIMULATED)")


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        print("--rounds must be >= 1", file=sys.stderr)
        return 2
    result = run_sched_bench(sizes=tuple(args.sizes), rounds=args.rounds, compare=args.compare)
    print(format_report(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
