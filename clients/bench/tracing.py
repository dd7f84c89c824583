"""Tracing overhead: the same load with tracing off and on, in one run (`chameleon bench tracing`).

Off: nothing sampled and no exporter (OTEL_TRACES_SAMPLER=always_off: spans are not even
recorded, the cheapest state). On: every request sampled (OTEL_TRACES_SAMPLER=
always_on) and every span exported over OTLP/HTTP to a real receiver (oteltap) in a
process of its own, as a collector would be. Rounds alternate off, on, on, off, ... so slow drift of the machine cancels
out; each round starts a fresh cluster (store, worker, scheduler) and sends the same
requests, every one forced to the same output length. Reported: output tokens/s of each
round and the ratio of the means, on / off (goal >= 0.97). Label: live on CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clients.bench._io import write_json
from clients.seaweedfs import free_port

GOAL = 0.97

# the receiver process: counts the spans it receives into a file
RECEIVER = """
import asyncio, os, sys
from oteltap import OtelTapHttpProtobufReceiver as R, OtelTapHttpProtobufReceiverSettings as S
async def main(port, out):
    n = 0
    async with R(S(http_port=port)) as tap:
        async def flush():
            while True:
                with open(out + ".tmp", "w") as f:
                    f.write(str(n))
                os.replace(out + ".tmp", out)
                await asyncio.sleep(0.1)
        t = asyncio.create_task(flush())
        async for _ in tap.stream_traces():
            n += 1
asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="chameleon-otlp-")
        self._count = Path(self._dir.name) / "spans"
        self._proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(self.port), str(self._count)])
        deadline = time.monotonic() + 30
        while not self._count.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the OTLP receiver (oteltap) did not start")
            time.sleep(0.05)

    @property
    def spans(self) -> int:
        return int(self._count.read_text() or 0)

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._dir.cleanup()


async def _round(spec, reqs, concurrency: int) -> dict:
    from clients.launcher import Cluster
    from clients.loadgen import run_load, summarize

    cluster = await asyncio.to_thread(lambda: Cluster(spec).__enter__())
    try:
        # one request first: the worker's first forward passes and adapter loads are not timed
        await run_load(cluster.address, reqs[:1], concurrency=1)
        results, wall = await run_load(cluster.address, reqs, concurrency=concurrency)
    finally:
        await asyncio.to_thread(cluster.stop)
    s = summarize(results, wall)
    return {"output_tok_per_s": s["output_tok_per_s"], "errors": s["errors"], "wall_s": wall,
            "ttft_p50_ms": s["ttft_p50_ms"]}


async def run_bench(model: Path, adapters: Path, adapter_ids: list[str], *, requests: int,
                    max_tokens: int, concurrency: int, rounds: int, policy: str) -> dict:
    from clients.demo import build_load
    from clients.launcher import ClusterSpec

    reqs = build_load(adapter_ids, requests, max_tokens, seed=0)
    for r in reqs:
        r.max_tokens = r.min_tokens = max_tokens   # same work in every round
    out: dict = {"label": "live on CPU", "requests": requests, "max_tokens": max_tokens,
                 "concurrency": concurrency, "policy": policy, "rounds": []}
    receiver = Receiver()
    try:
        modes = [("off", "on")[(i + i // 2) % 2] for i in range(2 * rounds)]   # off on on off ...
        for mode in modes:
            env = ({"OTEL_TRACES_SAMPLER": "always_on",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}"}
                   if mode == "on" else {"OTEL_TRACES_EXPORTER": "none",
                                         "OTEL_TRACES_SAMPLER": "always_off"})
            spec = ClusterSpec(model=model, adapters=adapters, policy=policy, env=env,
                               worker_args=["--max-running", str(concurrency)])
            before = receiver.spans
            r = await _round(spec, reqs, concurrency)
            await asyncio.sleep(0.5)   # the last batch of spans (exported on shutdown)
            r.update(mode=mode, spans_received=receiver.spans - before)
            out["rounds"].append(r)
            print(f"  {mode:>3}: {r['output_tok_per_s']:8.1f} output tok/s, {r['errors']:.0f} errors, "
                  f"{r['spans_received']} spans received", flush=True)
    finally:
        receiver.close()
    mean = {m: statistics.fmean(r["output_tok_per_s"] for r in out["rounds"] if r["mode"] == m)
            for m in ("off", "on")}
    # each adjacent (off, on) pair of rounds ran closest in time: their ratios see the least drift
    rs = out["rounds"]
    pairs = []
    for a, b in zip(rs[0::2], rs[1::2]):
        off, on = (a, b) if a["mode"] == "off" else (b, a)
        pairs.append(on["output_tok_per_s"] / off["output_tok_per_s"] if off["output_tok_per_s"] else float("nan"))
    out.update(off_tok_per_s=mean["off"], on_tok_per_s=mean["on"],
               ratio=mean["on"] / mean["off"] if mean["off"] else float("nan"), pair_ratios=pairs,
               median_pair_ratio=statistics.median(pairs), goal=GOAL)
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--assets", type=Path, default=Path(".assets"))
    ap.add_argument("--quick", action="store_true",
                    help="the tiny test model and few requests (for tests; not a measurement)")
    ap.add_argument("--requests", type=int, default=None, help="per round (default 48; quick 6)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="pairs of (off, on) rounds")
    ap.add_argument("--sched-policy", "--policy", dest="policy", default="chameleon")
    ap.add_argument("--json", type=Path, default=None)


def run(args: argparse.Namespace) -> int:
    if args.quick:
        from clients.assets.demo import prepare_tiny

        assets = prepare_tiny(args.assets / "test")
    else:
        from clients.assets.demo import prepare_demo

        assets = prepare_demo(args.assets, progress=lambda m: print(f"[assets] {m}", flush=True))
    model, adapters = Path(assets["model"]), Path(assets["adapters"])
    ids = sorted(p.name for p in adapters.iterdir() if p.is_dir())[: args.adapters]
    requests = args.requests or (6 if args.quick else 48)
    print(f"tracing overhead (live on CPU): {model.name}, {requests} requests x {args.max_tokens} "
          f"tokens, {len(ids)} adapters, {args.rounds} x (off, on)")
    out = asyncio.run(run_bench(model, adapters, ids, requests=requests, max_tokens=args.max_tokens,
                                concurrency=args.concurrency, rounds=max(1, args.rounds),
                                policy=args.policy))
    verdict = "met" if out["ratio"] >= GOAL else "NOT met"
    print(f"throughput with tracing on / off: {out['on_tok_per_s']:.1f} / {out['off_tok_per_s']:.1f} "
          f"tok/s = {out['ratio']:.3f} (goal >= {GOAL}: {verdict}); per adjacent pair: "
          + ", ".join(f"{r:.3f}" for r in out["pair_ratios"])
          + f" (median {out['median_pair_ratio']:.3f})")
    write_json(args.json, out)
    errors = sum(r["errors"] for r in out["rounds"])
    received = all(r["spans_received"] > 0 for r in out["rounds"] if r["mode"] == "on")
    return 0 if errors == 0 and received else 1
