"""`chameleon demo`: the whole system on one machine, with the real SmolLM2-135M.

Prepares the assets once, starts the adapter store, a worker and the scheduler
as separate processes, sends a few hundred requests over many adapters, prints
a latency/throughput table and a base-model completion, then shuts down.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from pathlib import Path

PROMPTS = [
    "Write a haiku about autumn leaves.",
    "Explain what a hash table is in one paragraph.",
    "Translate 'good morning, friends' into French.",
    "List three uses of copper.",
    "What is the boiling point of water at sea level?",
    "Give me a short tip for writing clean Python code.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Write a SQL query that counts rows in a table named users.",
    "Why is the sky blue?",
    "Suggest a name for a friendly robot.",
]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--assets", type=Path, default=Path(".assets"))
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--adapters", type=int, default=24, help="distinct adapters the load uses")
    ap.add_argument("--concurrency", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--sched-policy", "--policy", dest="policy", default="chameleon",
                    help="scheduler admission policy: fifo (S-LoRA), sjf, static-mlq, chameleon")
    ap.add_argument("--cache-policy", default="chameleon",
                    help="worker adapter cache: slora (no caching), lru, chameleon, chameleon-lru, "
                         "chameleon-fairshare")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-step-tokens", type=int, default=0,
                    help="the worker's step token budget (0: its default; chunked prefill)")
    ap.add_argument("--store", choices=["local", "s3"], default="local",
                    help="local: the store serves the adapter folder (default); s3: a SeaweedFS "
                         "started here holds the adapters and the store serves them from it")


def build_load(adapter_ids: list[str], n: int, max_tokens: int, seed: int):
    from clients.loadgen import LoadRequest

    rng = random.Random(seed)
    # a power-law-ish popularity, like the paper's workloads; 1 in 10 requests uses the base model
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(adapter_ids))]
    reqs = []
    for i in range(n):
        adapter = None if i % 10 == 0 else rng.choices(adapter_ids, weights)[0]
        reqs.append(LoadRequest(rng.choice(PROMPTS), adapter, rng.randint(max_tokens // 2, max_tokens)))
    # every chosen adapter appears at least once, so the demo really spans them
    for i, a in enumerate(adapter_ids):
        reqs[1 + i * (n - 1) // len(adapter_ids)].adapter = a
    return reqs


def print_table(s: dict[str, float], label: str) -> None:
    rows = [("requests", f"{s['requests']:.0f} ({s['errors']:.0f} errors)"),
            ("P50 TTFT", f"{s['ttft_p50_ms']:.0f} ms"), ("P99 TTFT", f"{s['ttft_p99_ms']:.0f} ms"),
            ("P99 TBT", f"{s['tbt_p99_ms']:.0f} ms"),
            ("output tokens/s", f"{s['output_tok_per_s']:.1f}"), ("wall time", f"{s['wall_s']:.1f} s")]
    width = max(len(k) for k, _ in rows)
    print(f"\n{label}")
    print("-" * (width + 24))
    for k, v in rows:
        print(f"{k:<{width}}  {v:>20}")
    print("-" * (width + 24))


def run(args: argparse.Namespace) -> int:
    from clients.assets.demo import prepare_demo
    from clients.launcher import ClusterSpec

    t0 = time.perf_counter()
    assets = prepare_demo(args.assets, progress=lambda m: print(f"[assets] {m}", flush=True))
    model, adapters_dir = Path(assets["model"]), Path(assets["adapters"])
    adapter_ids = sorted(p.name for p in adapters_dir.iterdir() if p.is_dir())[: args.adapters]
    print(f"[demo] assets ready in {time.perf_counter() - t0:.1f}s: {model.name}, "
          f"{len(adapter_ids)} of {len(list(adapters_dir.iterdir()))} adapters in the load")
    spec = ClusterSpec(model=model, adapters=adapters_dir, policy=args.policy,
                       worker_args=["--max-running", str(args.concurrency),
                                    "--max-step-tokens", str(args.max_step_tokens),
                                    "--cache-policy", args.cache_policy])
    with contextlib.ExitStack() as stack:
        if args.store == "s3":
            _use_seaweedfs(spec, adapters_dir, stack)
        return _run_cluster(args, spec, adapter_ids)


def _use_seaweedfs(spec, adapters_dir: Path, stack: contextlib.ExitStack) -> None:
    """Starts SeaweedFS, uploads the demo adapters to it and points the store at its bucket."""
    import tempfile

    from clients.assets.upload import upload_adapters
    from clients.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedFS
    from adapter_store.s3_backend import S3Backend, S3Config

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chameleon-weed-")))
    print("[demo] starting SeaweedFS (S3) ...", flush=True)
    sw = stack.enter_context(SeaweedFS(tmp / "data"))
    backend = S3Backend(S3Config(bucket=sw.bucket, endpoint=sw.endpoint, access_key_id=ACCESS_KEY,
                                 secret_access_key=SECRET_KEY))
    names = asyncio.run(upload_adapters(adapters_dir, backend))
    print(f"[demo] {len(names)} adapters uploaded to s3://{sw.bucket} at {sw.endpoint}", flush=True)
    spec.adapters = None
    spec.store_args = sw.store_args()
    spec.env = {**spec.env, **sw.env()}


def _run_cluster(args: argparse.Namespace, spec, adapter_ids: list[str]) -> int:
    from tqdm import tqdm

    from clients.client import ChameleonClient
    from clients.launcher import Cluster
    from clients.loadgen import run_load, summarize

    print("[demo] starting adapter store, worker and scheduler ...", flush=True)
    with Cluster(spec) as cluster:
        print(f"[demo] scheduler at {cluster.address}; logs in {cluster.dir}", flush=True)
        reqs = build_load(adapter_ids, args.requests, args.max_tokens, args.seed)
        bar = tqdm(total=len(reqs), desc="requests", unit="req")
        results, wall = asyncio.run(run_load(cluster.address, reqs, concurrency=args.concurrency,
                                             on_done=lambda r: bar.update(1)))
        bar.close()
        summary = summarize(results, wall)
        print_table(summary, f"live on CPU: {args.policy} scheduler, {args.cache_policy} cache, "
                             f"{args.store} store, "
                             f"{len(set(r.adapter for r in reqs if r.adapter))} "
                             f"adapters, SmolLM2-135M-Instruct")
        from clients.ttft_report import format_slowest

        print("\n" + format_slowest(results, 5))
        errors = [r.error for r in results if r.error]
        if errors:
            print(f"[demo] first error: {errors[0]}")

        async def base_completion() -> str:
            async with ChameleonClient(cluster.address) as c:
                text, _, _ = await c.complete("The capital of France is", max_tokens=12)
                return text

        text = asyncio.run(base_completion())
        print(f"\nbase model: The capital of France is{text}")
        codes = cluster.stop()
    print(f"[demo] services stopped (exit codes {codes})")
    if args.json:
        args.json.write_text(json.dumps({"label": "live on CPU", "sched_policy": args.policy,
                                           "cache_policy": args.cache_policy, "store": args.store,
                                           **summary}, indent=2))
    return 0 if not errors and "Paris" in text else 1
