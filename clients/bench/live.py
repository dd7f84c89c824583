"""A workload trace through the running services (`chameleon bench live`).

Starts the adapter store, one worker and the scheduler as separate processes (as `make
demo` does, clients/launcher.py), replays a workload trace (sim/workload.py: the same
generator and JSONL as the discrete-event simulator) with its real arrival times through
the scheduler's gRPC API, and reports what the clients saw: P50/P99 TTFT, P99 TBT, the
adapter hit rate and throughput, over the requests that arrived after the warm-up.

  --device sim:PROFILE  LIVE-SIM. The worker runs with --sim-profile PROFILE: its real engine
                        loop, memory pool bookkeeping, cache, admission, prefetch and gRPC
                        streams, but each step waits the profile's modelled step time and
                        adapter copies wait their modelled host-to-device time; the store lists
                        synthetic adapters (--sim-catalog). Paper scale (Llama-7B, 100 adapters)
                        on this machine, in real time: a 120 s trace takes ~2 minutes.
                        Requests carry their true output length (sim_output_tokens) for the
                        modelled model only; the scheduler never sees it.
  --device cpu          LIVE ON CPU. The real SmolLM2-135M and the demo's adapters (the trace's
                        adapters mapped one-to-one onto them, with the demo adapters' own
                        ranks), lengths scaled down further (--length-scale), and each output
                        forced to its trace length with min_tokens = max_tokens (so the
                        scheduler reserves the true length: a difference from live-sim).

Policies are the evaluation's names (slora, chameleon, ...), each a scheduler policy, a
worker cache policy and a worker admission rule. Every figure is labelled "live-sim" or
"live on CPU".
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# the live worker runs the simulator's worker setup (sim/engine.py WorkerSpec), so that
# live-sim and the discrete-event run model the same system
def _sim_worker_defaults() -> dict[str, int]:
    from sim.engine import WorkerSpec

    f = WorkerSpec.__dataclass_fields__
    return {k: f[k].default for k in ("block_size", "max_running", "max_step_tokens")}


@dataclass
class LiveRecord:
    """One replayed request as its client saw it (seconds since the trace's start)."""
    request_id: str
    adapter_id: str | None
    rank: int
    input_tokens: int
    arrival_s: float                 # the trace's arrival time
    sent_s: float = 0.0              # when the client really sent it (lateness = sent - arrival)
    first_token_s: float | None = None
    finish_s: float | None = None
    tokens: int = 0
    gaps_s: list[float] = field(default_factory=list)
    adapter_load_ms: float = 0.0     # the worker's: adapter load on its critical path
    error: str | None = None
    # what sim/metrics.py reads of a record that the client cannot see
    hit: bool | None = None          # (the hit rate comes from the worker's counters instead)
    started_s: float | None = None
    squashed: int = 0

    queue_ms: float = 0.0            # the scheduler's: arrival there -> admitted to the worker
    server_ttft_ms: float = 0.0      # the scheduler's: arrival there -> first token sent

    @property
    def ttft_s(self) -> float | None:
        """TTFT as the API reports it (Timings.ttft_ms): from the request's arrival at the
        scheduler to its first token sent, the span the simulator models (it has no client
        or network); the client's own view is `client_ttft_s`."""
        if self.first_token_s is None:
            return None
        return self.server_ttft_ms / 1000.0 if self.server_ttft_ms > 0 else self.client_ttft_s

    @property
    def client_ttft_s(self) -> float | None:
        """From the moment the client sent the request (a late client does not count) to the
        first message it received."""
        return None if self.first_token_s is None else self.first_token_s - self.sent_s

    @property
    def adapter_wait_s(self) -> float:
        return self.adapter_load_ms / 1000.0


@dataclass
class LiveResult:
    """The shape sim/metrics.py summarizes (as the simulator's SimResult)."""
    policy: str
    profile: str
    seed: int
    warmup_s: float
    duration_s: float
    end_s: float
    records: list[LiveRecord]
    label: str


class _TokenClock:
    """Token times as the client sees them. A step's output is one event: a token, or the
    end-of-sequence that finishes the request (finish "eos": no visible token). Messages may
    carry several steps' tokens (the services merge what a slow reader has not taken yet):
    the first event of a message gets the gap since the previous message, the others 0, so
    a request of N modelled tokens always has N - 1 gaps, as in the simulator."""

    def __init__(self, rec: LiveRecord):
        self.rec = rec
        self.last: float | None = None
        self.eos_seen = False

    def chunk(self, now: float, tokens: int, finish: str | None) -> None:
        rec = self.rec
        events = tokens
        if finish == "eos" and not self.eos_seen:
            events += 1
        if rec.first_token_s is None:
            rec.first_token_s = now
            if tokens == 0:            # the first step ended the request (EOS as token 1)
                self.eos_seen = True
            rec.gaps_s += [0.0] * (max(events, 1) - 1)
            self.last = now
        elif events:
            rec.gaps_s += [now - self.last] + [0.0] * (events - 1)
            self.last = now
        rec.tokens += tokens
        if finish:
            rec.finish_s = now


def summarize(result: LiveResult, hits: int, misses: int) -> dict:
    """sim/metrics.py's figures over the requests that arrived in [warm-up, duration] (the
    same definitions as the simulator's), with the hit rate from the worker's adapter lookups
    over that window (`hits`/`misses`), and what only a live run has: errors and how late the
    client sent requests."""
    from sim.metrics import measured, percentile
    from sim.metrics import summarize as sim_summarize

    out = sim_summarize(result)
    recs = measured(result)
    out["hit_rate"] = hits / (hits + misses) if hits + misses else 0.0
    out["errors"] = sum(1 for r in recs if r.error)
    out["output_tokens_per_s"] = (sum(r.tokens for r in recs if r.finish_s is not None)
                                  / max(1e-9, result.duration_s - result.warmup_s))
    out["max_send_lateness_ms"] = max(r.sent_s - r.arrival_s for r in recs) * 1000.0
    client = [r.client_ttft_s for r in recs if r.client_ttft_s is not None]
    out["client_p50_ttft_ms"] = percentile(client, 50) * 1000.0 if client else float("nan")
    out["client_p99_ttft_ms"] = percentile(client, 99) * 1000.0 if client else float("nan")
    for k in ("queue_share_by_rank", "squash_rate", "miss_cost_ms"):
        out.pop(k, None)              # not observable from the clients
    return out


async def replay(address: str, records: list[LiveRecord], prompts: list[str],
                 params: list[dict], on_warmup_end=None, warmup_s: float = 0.0,
                 on_end=None, duration_s: float = 0.0, drain_s: float = 600.0) -> float:
    """Send each request at its arrival time; returns the trace time when all had ended.
    `on_warmup_end` / `on_end` are awaited at those trace times (status snapshots)."""
    from clients.client import ChameleonClient, ChameleonError

    async with ChameleonClient(address) as client:
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(rec: LiveRecord, prompt: str, kw: dict) -> None:
            rec.sent_s = loop.time() - t0
            clock = _TokenClock(rec)
            try:
                async for chunk in client.generate(prompt, adapter=rec.adapter_id,
                                                   request_id=rec.request_id, **kw):
                    clock.chunk(loop.time() - t0, len(chunk.token_ids), chunk.finish_reason)
                    if chunk.timings and not rec.server_ttft_ms:
                        rec.queue_ms = chunk.timings.get("queue_ms", 0.0)
                        rec.server_ttft_ms = chunk.timings.get("ttft_ms", 0.0)
                    if chunk.finish_reason:
                        rec.adapter_load_ms = chunk.timings.get("adapter_load_ms", 0.0)
            except ChameleonError as e:
                rec.error = str(e)
                rec.finish_s = None

        async def at(t: float, fn) -> None:
            await asyncio.sleep(max(0.0, t0 + t - loop.time()))
            await fn()

        marks = []
        if on_warmup_end is not None:
            marks.append(asyncio.create_task(at(warmup_s, on_warmup_end)))
        if on_end is not None:
            marks.append(asyncio.create_task(at(duration_s, on_end)))
        tasks = []
        for rec, prompt, kw in zip(records, prompts, params):
            delay = t0 + rec.arrival_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(rec, prompt, kw)))
        await asyncio.wait(tasks, timeout=drain_s)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*marks, return_exceptions=True)
        return loop.time() - t0


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", required=True,
                    help="sim:PROFILE (live-sim on a modelled device, e.g. sim:a40-llama7b) | cpu "
                         "(the real SmolLM2-135M on this CPU, reduced scale)")
    from sim.policies import POLICY_NAMES

    ap.add_argument("--policy", default="chameleon", choices=POLICY_NAMES,
                    help="an evaluation policy (sim/policies.py): scheduler + cache + admission")
    ap.add_argument("--rps", type=float, default=None, help="default: 4 (sim), 1 (cpu)")
    ap.add_argument("--duration-s", type=float, default=None,
                    help="trace length in seconds of real time (default: 120 sim, 60 cpu)")
    ap.add_argument("--warmup-s", type=float, default=None, help="default: 1/4 of the duration")
    ap.add_argument("--num-adapters", type=int, default=None, help="default: 100 (sim), 24 (cpu)")
    ap.add_argument("--length-scale", type=float, default=None,
                    help="workload length scale (default: the paper's 0.2 for sim, 0.02 for cpu)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trace", type=Path, help="replay this workload JSONL instead of generating one")
    ap.add_argument("--assets", type=Path, default=Path(".assets"), help="cpu: the demo's assets")
    ap.add_argument("--model", type=Path, help="cpu: this model folder instead of the demo's")
    ap.add_argument("--adapters", type=Path, help="cpu: this folder of PEFT adapters instead of the demo's")
    ap.add_argument("--json", type=Path, help="write the figures and per-request records here")


def _workload(a: argparse.Namespace, sim: bool):
    from sim.workload import Workload, WorkloadConfig

    if a.trace is not None:
        return Workload.load_jsonl(a.trace)
    kw = {"rps": a.rps if a.rps is not None else (4.0 if sim else 1.0),
          "duration_s": a.duration_s if a.duration_s is not None else (120.0 if sim else 60.0),
          "num_adapters": a.num_adapters if a.num_adapters is not None else (100 if sim else 24),
          "seed": a.seed}
    if a.length_scale is not None or not sim:
        kw["length_scale"] = a.length_scale if a.length_scale is not None else 0.02
    return Workload.generate(WorkloadConfig(**kw))


def run_live(device: str, policy: str, workload, warmup_s: float, workdir: Path,
             assets: Path | None = None, progress=print, model: Path | None = None,
             adapters: Path | None = None) -> dict:
    """Run the trace through real services; returns {"label", "summary", "records", ...}."""
    from clients.client import ChameleonClient
    from clients.launcher import Cluster, ClusterSpec
    from sim import policies

    spec_ = policies.get(policy)
    sched, cache = spec_.scheduler, spec_.cache
    reqs = workload.requests
    records = [LiveRecord(r.request_id, r.adapter_id, r.rank, r.input_tokens, r.arrival_s) for r in reqs]
    worker = ["--cache-policy", cache, "--admission", spec_.admission]
    profile = device.removeprefix("sim:") if device.startswith("sim:") else "cpu"
    if device.startswith("sim:"):
        from gpu_worker.core.sim_engine import sim_prompt

        label = "live-sim"
        trace = workdir / "trace.jsonl"
        workload.save_jsonl(trace)
        w = _sim_worker_defaults()
        if cache == "lru":
            worker += _lru_flags(spec_, profile, workload, w["block_size"])
        spec = ClusterSpec(model=None, adapters=None, policy=sched,
                           store_args=["--sim-profile", profile, "--sim-catalog", str(trace)],
                           worker_args=["--sim-profile", profile, "--block-size", str(w["block_size"]),
                                        "--max-running", str(w["max_running"]),
                                        "--max-step-tokens", str(w["max_step_tokens"]), *worker])
        prompts = [sim_prompt(r.input_tokens) for r in reqs]
        params = [{"max_tokens": r.max_tokens, "sim_output_tokens": r.output_tokens} for r in reqs]
    elif device == "cpu":
        from clients.assets.demo import prepare_demo

        label = "live on CPU"
        if model is None or adapters is None:
            got = prepare_demo(assets or Path(".assets"), progress=lambda m: progress(f"[assets] {m}"))
            model, adapters = model or Path(got["model"]), adapters or Path(got["adapters"])
        got = {"model": model, "adapters": adapters}
        demo = sorted(p.name for p in Path(got["adapters"]).iterdir() if p.is_dir())
        ids = sorted({a.adapter_id for a in workload.adapters})
        if len(ids) > len(demo):
            raise ValueError(f"the trace has {len(ids)} adapters; the demo has {len(demo)}")
        mapping = dict(zip(ids, demo))
        for rec in records:
            rec.adapter_id = mapping.get(rec.adapter_id) if rec.adapter_id else None
        spec = ClusterSpec(model=Path(got["model"]), adapters=Path(got["adapters"]), policy=sched,
                           worker_args=["--max-running", "32", *worker])
        prompts = [" ".join(["hello"] * r.input_tokens) for r in reqs]
        params = [{"max_tokens": r.output_tokens, "min_tokens": r.output_tokens} for r in reqs]
    else:
        raise ValueError(f"--device {device!r}: use sim:PROFILE or cpu")
    duration = workload.config.duration_s
    snaps: dict[str, tuple[int, int]] = {}
    with Cluster(spec, workdir) as cluster:
        async def snap(name: str) -> None:
            async with ChameleonClient(cluster.address) as c:
                s = await c.status()
            snaps[name] = (sum(w.cache_hits for w in s.workers), sum(w.cache_misses for w in s.workers))

        async def go() -> float:
            await snap("start")
            end = await replay(cluster.address, records, prompts, params,
                               on_warmup_end=lambda: snap("warmup"), warmup_s=warmup_s,
                               on_end=lambda: snap("end"), duration_s=duration)
            await snap("drained")
            return end

        progress(f"[bench live] {label}: {len(reqs)} requests over {duration:.0f} s, policy "
                 f"{policy} ({sched} scheduler, {cache} cache); logs in {cluster.dir}")
        t = time.monotonic()
        end_s = asyncio.run(go())
        progress(f"[bench live] replay took {time.monotonic() - t:.1f} s")
    w0, w1 = snaps.get("warmup", snaps["start"]), snaps.get("end", snaps["drained"])
    result = LiveResult(policy, profile, workload.config.seed, warmup_s, duration, end_s, records, label)
    summary = summarize(result, w1[0] - w0[0], w1[1] - w0[1])
    return {"label": label, "device": device, "policy": policy, "rps": workload.config.rps,
            "seed": workload.config.seed, "duration_s": duration, "warmup_s": warmup_s,
            "num_adapters": len(workload.adapters), "summary": summary,
            "records": [asdict(r) for r in records]}


def _lru_flags(spec, profile: str, workload, block_size: int) -> list[str]:
    """vllm-lru's slots as the simulator sizes them (sim/policies.py cache_config): slots of
    the workload's largest rank in LRU_POOL_SHARE of the pool."""
    from gpu_worker.core.memory.sim_pool import SharedLink, SimPool
    from gpu_worker.core.sim_engine import model_config, sim_adapter
    from sim.cost_model import CostModel
    from sim.policies import cache_config

    cost = CostModel.from_profile(profile)
    max_rank = max(a.rank for a in workload.adapters)
    pages = cost.pool_pages(block_size)
    pool = SimPool.for_model(model_config(cost), pages, block_size, SharedLink(lambda: 0.0, cost.copy_s),
                             element_bytes=cost.dtype_bytes)
    slot_pages = pool.layout(sim_adapter("probe", max_rank, [], cost)).num_pages
    cfg = cache_config(spec, pages, slot_pages)
    return ["--lru-slots", str(cfg.lru_slots), "--lru-max-rank", str(max_rank)]


def print_summary(out: dict) -> None:
    s = out["summary"]
    print(f"\n{out['label']}: policy {out['policy']}, {out['device']}, {out['rps']:g} RPS, seed "
          f"{out['seed']}, {out['duration_s']:.0f} s (warm-up {out['warmup_s']:.0f} s excluded), "
          f"{out['num_adapters']} adapters")
    rows = [("requests measured", f"{s['requests']} ({s['unfinished']} unfinished, {s['errors']} errors)"),
            ("P50 TTFT", f"{s['p50_ttft_ms']:.0f} ms (client: {s['client_p50_ttft_ms']:.0f} ms)"),
            ("P99 TTFT", f"{s['p99_ttft_ms']:.0f} ms (client: {s['client_p99_ttft_ms']:.0f} ms)"),
            ("P99 TBT", f"{s['p99_tbt_ms']:.0f} ms"), ("hit rate", f"{s['hit_rate']:.1%}"),
            ("throughput", f"{s['throughput_rps']:.2f} req/s, {s['output_tokens_per_s']:.0f} tok/s"),
            ("client send lateness", f"max {s['max_send_lateness_ms']:.0f} ms")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def run(a: argparse.Namespace) -> int:
    sim = a.device.startswith("sim:")
    if not sim and a.device != "cpu":
        raise SystemExit(f"--device {a.device!r}: use sim:PROFILE or cpu")
    wl = _workload(a, sim)
    warmup = a.warmup_s if a.warmup_s is not None else wl.config.duration_s / 4
    out = run_live(a.device, a.policy, wl, warmup, Path(tempfile.mkdtemp(prefix="chameleon-live-")),
                   assets=a.assets, model=a.model, adapters=a.adapters)
    print_summary(out)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0 if out["summary"]["errors"] == 0 else 1
