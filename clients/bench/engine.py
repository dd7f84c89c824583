"""Tokens/s against Hugging Face transformers + PEFT, in one run (`chameleon bench engine`).

Three systems on the same machine, the same prompts and the same adapters (SmolLM2-135M and
16 adapters of ranks 8/16/32/64 on q/k/v/o, built by clients/assets): `hf_peft` (batched
`generate`; a mixed batch goes in with `adapter_names`), `engine` (this project's Engine
driven in-process) and `served` (the three services as real processes, driven over gRPC).
Each case is a batch of 1/4/16/32 concurrent requests with 16 distinct adapters (request i
uses adapter i mod 16), one shared adapter, or none, and every request generates exactly
`--tokens` tokens (min_tokens, HF's min_new_tokens). tok/s counts generated tokens over the
batch's wall time (prefill included); TBT is every gap between one request's successive
tokens. Adapters are loaded before the timing. The step breakdown (attention, base linear
layers, LoRA, sampling, other) comes from torch.profiler over one extra run of the batch-16
distinct-adapter case (PROFILE_TOKENS new tokens, the prefill step included); times are per
generation step and include the profiler's overhead.
The systems run interleaved, case by case (`--repeat` N reports the median run), so that
the load of a shared machine hits them alike. Without transformers/peft (dev-only) the HF
side is skipped and the output says so.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from clients.loadgen import percentile
from gpu_worker.core.profiling import SCOPES

BATCHES = (1, 4, 16, 32)
KINDS = ("distinct", "shared", "none")
SYSTEMS = ("hf_peft", "engine", "served")
QUICK = {"batches": (16,), "kinds": ("distinct", "none")}
PROFILE_TOKENS = 8   # the profiled run is short: the profiler records every op of every step
PROMPTS = [
    "Write a haiku about autumn leaves.", "Explain what a hash table is.",
    "Translate 'good morning' into French.", "List three uses of copper.",
    "What is the boiling point of water?", "Give me a tip for clean Python code.",
    "Summarize Romeo and Juliet.", "Write a SQL query that counts users.",
    "Why is the sky blue?", "Suggest a name for a robot.", "How do bees make honey?",
    "Describe a rainy day in Paris.", "What is a prime number?", "Name three planets.",
    "How does a bicycle stay upright?", "Tell me a fact about owls.",
]


@dataclass
class Case:
    system: str
    batch: int
    adapters: str
    tok_s: float
    tbt_p99_ms: float
    wall_s: float
    tokens: int
    runs: list[float] = field(default_factory=list)   # tok/s of every repeat


@dataclass
class Breakdown:
    system: str
    batch: int
    adapters: str
    steps: int
    step_ms: float                     # profiled wall time per generation step
    parts_ms: dict[str, float] = field(default_factory=dict)   # SCOPES + "other"


def workload(batch: int, kind: str, names: list[str]) -> list[tuple[str, str | None]]:
    """(prompt, adapter) of each request of a case."""
    pick = {"distinct": lambda i: names[i % len(names)], "shared": lambda i: names[0],
            "none": lambda i: None}[kind]
    return [(PROMPTS[i % len(PROMPTS)], pick(i)) for i in range(batch)]


def tbt_gaps(stamps: dict[str, list[float]]) -> list[float]:
    return [b - a for ts in stamps.values() for a, b in zip(ts, ts[1:])]


def breakdown(prof, steps: int, wall_s: float) -> tuple[float, dict[str, float]]:
    """Per-step milliseconds of each scope (an op counts in its innermost scope) and the rest.
    One pass from the roots down, carrying the enclosing scope (no walk up per event)."""
    us: dict[str, float] = defaultdict(float)
    stack = [(ev, None) for ev in prof.events() if ev.cpu_parent is None]
    while stack:
        ev, name = stack.pop()
        if ev.name in SCOPES:
            name = ev.name
        if name is not None:
            us[name] += ev.self_cpu_time_total
        stack.extend((c, name) for c in ev.cpu_children)
    step_ms = wall_s * 1e3 / max(1, steps)
    parts = {k: us[k] / 1e3 / max(1, steps) for k in SCOPES}
    parts["other"] = max(0.0, step_ms - sum(parts.values()))
    return step_ms, parts


def _case(system: str, batch: int, kind: str, wall: float, tokens: int, gaps: list[float]) -> Case:
    return Case(system, batch, kind, tokens / wall if wall > 0 else 0.0,
                percentile(gaps, 99) * 1e3, wall, tokens)


def run_engine(parts, batch: int, kind: str, tokens: int, profile: bool = False):
    """One batch through an in-process Engine; (Case, Breakdown | None)."""
    from gpu_worker.core.sequence import SamplingSpec, Sequence
    from gpu_worker.core.unified_pool import stage_adapter

    eng, tok, adapters = parts
    jobs = workload(batch, kind, sorted(adapters))

    def go(n_tokens: int, tag: str):
        seqs = [Sequence(f"{tag}{i}", tok.encode(p, add_special_tokens=False).ids,
                         SamplingSpec(max_tokens=n_tokens, min_tokens=n_tokens), adapter_id=a)
                for i, (p, a) in enumerate(jobs)]
        stamps: dict[str, list[float]] = defaultdict(list)
        steps, t0 = 0, time.perf_counter()
        for s in seqs:
            for aid in eng.add(s):
                eng.install(stage_adapter(adapters[aid], eng.model.config))
        while eng.has_work():
            events = eng.step()
            steps += 1
            now = time.perf_counter()
            for ev in events:
                if ev.token_ids:
                    stamps[ev.seq.request_id].append(now)
        return time.perf_counter() - t0, stamps, steps, sum(len(s.output_ids) for s in seqs)

    go(2, "warm")   # adapters resident, the same shapes once
    wall, stamps, steps, n = go(tokens, "run")
    case = _case("engine", batch, kind, wall, n, tbt_gaps(stamps))
    if not profile:
        return case, None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        pwall, _, psteps, _ = go(min(tokens, PROFILE_TOKENS), "prof")
    step_ms, p = breakdown(prof, psteps, pwall)
    return case, Breakdown("engine", batch, kind, psteps, step_ms, p)


def engine_parts(model_dir: Path, adapters_dir: Path, max_running: int):
    from tokenizers import Tokenizer

    from gpu_worker.core import unified_pool
    from gpu_worker.core.engine import Engine, EngineConfig
    from gpu_worker.core.lora import LoraAdapter
    from gpu_worker.core.model import LlamaModel
    from gpu_worker.main import default_step_tokens

    model = LlamaModel.load(model_dir)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    pages = (512 << 20) // unified_pool.page_bytes(model.config, 16, model.dtype)  # the worker's default
    ctx = min(2048, model.config.max_position_embeddings)
    eng = Engine(model, tok, EngineConfig(block_size=16, num_blocks=int(pages), max_running=max_running,
                                          max_step_tokens=default_step_tokens("cpu", max_running),
                                          max_context=ctx))
    adapters = {p.name: LoraAdapter.from_peft_dir(p, model.config)
                for p in sorted(adapters_dir.iterdir()) if p.is_dir()}
    return eng, tok, adapters


def run_hf(hf, batch: int, kind: str, tokens: int, profile: bool = False):
    jobs = workload(batch, kind, hf.names)
    prompts, adapters = [p for p, _ in jobs], [a for _, a in jobs]
    hf.generate(prompts, adapters, 2)  # warm-up (and PEFT's adapter loading)
    wall, steps, n = hf.generate(prompts, adapters, tokens)
    gaps = [b - a for a, b in zip(steps[1:], steps[2:])] * batch  # every request gets each step's token
    case = _case("hf_peft", batch, kind, wall, n, gaps)
    if not profile:
        return case, None
    handles = hf.label_modules()
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            pwall, psteps, _ = hf.generate(prompts, adapters, min(tokens, PROFILE_TOKENS))
    finally:
        for h in handles:
            h.remove()
    step_ms, p = breakdown(prof, len(psteps) - 1, pwall)
    return case, Breakdown("hf_peft", batch, kind, len(psteps) - 1, step_ms, p)


class Served:
    """The three services as real processes, kept up for the whole run; one case at a time."""

    def __init__(self, model_dir: Path, adapters_dir: Path, max_running: int, threads: int | None):
        from clients.launcher import Cluster, ClusterSpec

        env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
        self.cluster = Cluster(ClusterSpec(model=model_dir, adapters=adapters_dir, env=env,
                                           worker_args=["--max-running", str(max_running)]))

    def __enter__(self) -> "Served":
        self.cluster.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.cluster.__exit__(*exc)

    def run(self, batch: int, kind: str, names: list[str], tokens: int) -> Case:
        return asyncio.run(self._run(batch, kind, names, tokens))

    async def _run(self, batch: int, kind: str, names: list[str], tokens: int) -> Case:
        from clients.loadgen import LoadRequest, run_load

        reqs = [LoadRequest(p, a, tokens, min_tokens=tokens) for p, a in workload(batch, kind, names)]
        warm = [LoadRequest(r.prompt, r.adapter, 2, min_tokens=2) for r in reqs]
        address = self.cluster.address
        await run_load(address, warm, concurrency=len(warm))
        results, wall = await run_load(address, reqs, concurrency=len(reqs))
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"served case batch={batch} {kind}: {errors[0]}")
        return _case("served", batch, kind, wall, sum(r.tokens for r in results),
                     [g for r in results for g in r.tbt_s])


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--assets", type=Path, default=Path(".assets"),
                    help="where the SmolLM2 model and the bench adapters are (built on first use)")
    ap.add_argument("--model", type=Path, help="another Llama folder (with --adapters)")
    ap.add_argument("--adapters", type=Path, help="a folder of PEFT adapters (with --model)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--batches", type=int, nargs="+", help=f"batch sizes (default {BATCHES})")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, help="adapter mixes (default: all)")
    ap.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    ap.add_argument("--quick", action="store_true",
                    help=f"batch {QUICK['batches'][0]} only, distinct adapters and none")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of every case (the systems interleaved); the median is reported")
    ap.add_argument("--threads", type=int,
                    help="torch threads for every system (the worker process too); on a shared "
                         "machine 1 keeps other processes' load from stalling OpenMP barriers")
    ap.add_argument("--no-profile", action="store_true", help="skip the step breakdown")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")


def _ratio(cases: list[Case], a: tuple[str, str], b: tuple[str, str], batch: int) -> float | None:
    by = {(c.system, c.adapters): c.tok_s for c in cases if c.batch == batch}
    return by[a] / by[b] if a in by and b in by and by[b] > 0 else None


RATIOS = (  # (label, numerator, denominator, the acceptance bar)
    ("served / in-process, distinct adapters", ("served", "distinct"), ("engine", "distinct"), 0.9),
    ("served / HF+PEFT, distinct adapters", ("served", "distinct"), ("hf_peft", "distinct"), 1.5),
    ("engine distinct adapters / engine base", ("engine", "distinct"), ("engine", "none"), 0.8),
    ("engine base / HF base", ("engine", "none"), ("hf_peft", "none"), 1.0),
)


def _median_case(runs: list[Case]) -> Case:
    """The run of median tok/s (an odd count) or the lower middle one; TBT over all runs."""
    ordered = sorted(runs, key=lambda c: c.tok_s)
    mid = ordered[(len(ordered) - 1) // 2]
    gaps_p99 = max(c.tbt_p99_ms for c in runs) if len(runs) > 1 else mid.tbt_p99_ms
    return Case(mid.system, mid.batch, mid.adapters, mid.tok_s, gaps_p99, mid.wall_s, mid.tokens,
                runs=[c.tok_s for c in runs])


def run(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from clients.bench import engine_hf

    if args.tokens <= 0 or args.repeat <= 0:
        raise SystemExit("--tokens and --repeat must be positive")
    if (args.model is None) != (args.adapters is None):
        raise SystemExit("--model and --adapters go together")
    if args.threads is not None:
        if args.threads <= 0:
            raise SystemExit("--threads must be positive")
        torch.set_num_threads(args.threads)
    if args.model is None:
        from clients.assets.demo import prepare_bench
        a = prepare_bench(args.assets, progress=lambda m: print(f"[assets] {m}", flush=True))
        model_dir, adapters_dir = Path(a["model"]), Path(a["adapters"])
    else:
        model_dir, adapters_dir = args.model, args.adapters
    names = sorted(p.name for p in adapters_dir.iterdir() if p.is_dir())[:16]
    batches = tuple(args.batches or (QUICK["batches"] if args.quick else BATCHES))
    kinds = tuple(args.kinds or (QUICK["kinds"] if args.quick else KINDS))
    grid = [(b, k) for b in batches for k in kinds]
    # the breakdown's case (and the ratios' batch): batch 16 with distinct adapters if run
    mixed = [c for c in grid if c[1] == "distinct"]
    prof_case = (16, "distinct") if (16, "distinct") in grid else max(mixed or grid)
    systems = [s for s in SYSTEMS if s in args.systems]
    notes = []
    why = engine_hf.available()
    if "hf_peft" in systems and why:
        systems.remove("hf_peft")
        notes.append(f"HF transformers + PEFT not run: {why}; our side only")
        print(f"[bench] {notes[-1]}")
    max_running = max(32, max(batches))
    print(f"[bench] {model_dir.name}, {len(names)} adapters; systems {', '.join(systems)}; "
          f"{len(grid)} cases x {args.repeat} run(s), the systems interleaved", flush=True)
    hf = engine_hf.HfPeft(model_dir, adapters_dir, names) if "hf_peft" in systems else None
    ep = engine_parts(model_dir, adapters_dir, max_running) if "engine" in systems else None
    served = (Served(model_dir, adapters_dir, max_running, args.threads) if "served" in systems
              else nullcontext())
    runs: dict[tuple[str, int, str], list[Case]] = defaultdict(list)
    parts: list[Breakdown] = []
    with served:
        for rep in range(args.repeat):
            for b, k in grid:
                order = systems[rep % len(systems):] + systems[:rep % len(systems)]
                for system in order:
                    if system == "hf_peft":
                        c, _ = run_hf(hf, b, k, args.tokens)
                    elif system == "engine":
                        c, _ = run_engine(ep, b, k, args.tokens)
                    else:
                        c = served.run(b, k, names, args.tokens)
                    runs[(system, b, k)].append(c)
                    print(f"  run {rep + 1} {system:<8} batch {b:>2} {k:<8} {c.tok_s:8.1f} tok/s, "
                          f"P99 TBT {c.tbt_p99_ms:6.1f} ms", flush=True)
        if not args.no_profile:
            b, k = prof_case
            if hf is not None:
                parts.append(run_hf(hf, b, k, args.tokens, profile=True)[1])
            if ep is not None:
                parts.append(run_engine(ep, b, k, args.tokens, profile=True)[1])
    cases = [_median_case(r) for r in runs.values()]
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
               f"threads, torch {torch.__version__}")
    print_report(cases, parts, machine, model_dir.name, args.tokens, prof_case[0])
    if args.json:
        ratios = {label: _ratio(cases, a, b, prof_case[0]) for label, a, b, _ in RATIOS}
        args.json.write_text(json.dumps({
            "label": "live on CPU" if not torch.cuda.is_available() else "GPU",
            "machine": machine, "model": model_dir.name, "tokens": args.tokens,
            "repeat": args.repeat, "notes": notes,
            "cases": [asdict(c) for c in cases], "breakdown": [asdict(p) for p in parts],
            "ratios_at_batch": prof_case[0], "ratios": ratios}, indent=2))
    return 0


def print_report(cases: list[Case], parts: list[Breakdown], machine: str, model: str, tokens: int,
                 ratio_batch: int) -> None:
    label = "live on CPU" if not torch.cuda.is_available() else "GPU"
    print(f"\n{label}: {model}, {tokens} new tokens per request; {machine}")
    print(f"{'system':<8} {'batch':>5} {'adapters':<9} {'tok/s':>8} {'P99 TBT ms':>11} {'wall s':>7}")
    for c in sorted(cases, key=lambda c: (c.batch, KINDS.index(c.adapters), SYSTEMS.index(c.system))):
        print(f"{c.system:<8} {c.batch:>5} {c.adapters:<9} {c.tok_s:8.1f} {c.tbt_p99_ms:11.1f} "
              f"{c.wall_s:7.2f}")
    if parts:
        cols = list(SCOPES) + ["other"]
        print("\nstep breakdown, ms per generation step (torch.profiler, its overhead included):")
        print(f"{'system':<8} {'case':<12} {'step':>7} " + " ".join(f"{c:>11}" for c in cols))
        for p in parts:
            print(f"{p.system:<8} {f'{p.batch} {p.adapters}':<12} {p.step_ms:7.1f} "
                  + " ".join(f"{p.parts_ms[c]:11.1f}" for c in cols))
    print(f"\nat batch {ratio_batch}:")
    for text, a, b, bar in RATIOS:
        r = _ratio(cases, a, b, ratio_batch)
        if r is not None:
            print(f"  {text:<42} {r:5.2f}x  (target >= {bar}x: {'met' if r >= bar else 'NOT met'})")
