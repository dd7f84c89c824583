"""Relay capacity of one scheduler process: tokens/s from fake workers to many clients (`chameleon bench relay`).

Per point: one real scheduler process (`python -m scheduler_svc.main`, default tracing and
admission settings) in front of N fake workers (clients/bench/relay_worker.py: the real
Worker gRPC protocol, one TokenBatch per step carrying a token for each of B running
requests, a step every --step-s or as fast as the stream takes them). N x B concurrent
Generate streams through the public API with the project's Python client
(clients/client.py), spread over --client-procs processes, keep every batch full; each
request asks for --max-tokens tokens, so the tokens to relay are known exactly.

Reported per point: tokens/s the clients received, the scheduler process's CPU% over the
same window (utime + stime from /proc/PID/stat; 100% = one core), tokens per
scheduler-CPU-second (what one saturated core would carry), the fake workers' and
clients' CPU%, and the check that the clients received exactly the tokens the workers
sent. `--profile PATH` runs the scheduler of the last point under cProfile.
The scheduler is given an adapter-store address nobody listens on: only base-model requests
are sent, which never ask the store (its watch stream just retries in the background).
Label: live on CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clients.bench._io import write_json
from clients.seaweedfs import free_port

DEFAULT_POINTS = ((1, 64), (1, 256), (4, 64), (4, 256), (8, 64), (8, 256))
GOAL_TOK_S = 100_000
PROMPT = "tok tok tok tok tok tok tok tok"   # 8 tokens of the fake workers' tokenizer
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS   # utime, stime (fields 14, 15)


def _wait_file(path: Path, proc: subprocess.Popen, what: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit {proc.poll()})")
        time.sleep(0.05)
    return path.read_text()


def _client_proc(address: str, streams: int, per_stream: int, max_tokens: int, start_at: float,
                 out) -> None:
    """A client process: `streams` concurrent Generate streams, `per_stream` requests each."""
    out.send(asyncio.run(_clients(address, streams, per_stream, max_tokens, start_at)))


async def _clients(address: str, streams: int, per_stream: int, max_tokens: int,
                   start_at: float) -> dict:
    from clients.bench.relay_worker import VOCAB, text_of
    from clients.client import ChameleonClient, ChameleonError

    # token i of every request is id i % VOCAB, text text_of(i): a lost, repeated or
    # reordered token shows as a request out of order
    want_ids = [i % VOCAB for i in range(max_tokens)]
    want_text = "".join(text_of(i) for i in range(max_tokens))
    stats = {"tokens": 0, "responses": 0, "requests": 0, "short": 0, "errors": 0, "retries": 0,
             "disordered": 0}
    codes: dict[str, int] = {}   # status code -> errors with it

    async def stream(c: ChameleonClient) -> None:
        for _ in range(per_stream):
            for _attempt in range(50):
                got = 0
                ids: list[int] = []
                text: list[str] = []
                try:
                    async for ch in c.generate(PROMPT, max_tokens=max_tokens, ignore_eos=True):
                        got += len(ch.token_ids)
                        ids += ch.token_ids
                        text.append(ch.text)
                        stats["responses"] += 1
                    break
                except ChameleonError as e:
                    if e.code.name != "RESOURCE_EXHAUSTED" or got:
                        stats["errors"] += 1
                        codes[e.code.name] = codes.get(e.code.name, 0) + 1
                        break
                    stats["retries"] += 1   # refused before any token: the queue was full
                    await asyncio.sleep(0.2)
            stats["tokens"] += got
            stats["requests"] += 1
            stats["short"] += got != max_tokens
            joined = "".join(text)
            stats["disordered"] += ids != want_ids[:len(ids)] or joined != want_text[:len(joined)]

    async with ChameleonClient(address) as c:
        await c.status()   # connected before the clock starts
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = time.process_time()
        await asyncio.gather(*(stream(c) for _ in range(streams)))
        stats["cpu_s"] = time.process_time() - cpu0
    stats["end"] = time.time()
    stats["error_codes"] = codes
    return stats


def run_point(workers: int, batch: int, *, step_s: float, max_tokens: int, min_tokens: int,
              client_procs: int, profile: Path | None = None, log_dir: Path) -> dict:
    """One scheduler, `workers` fake workers of `batch` slots, workers x batch client streams."""
    streams = workers * batch
    per_stream = max(1, math.ceil(min_tokens / (streams * max_tokens)))
    tag = f"w{workers}-b{batch}"
    fw_ports, fw_stats = log_dir / f"{tag}.ports", log_dir / f"{tag}.stats"
    for p in (fw_ports, fw_stats):
        p.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    fw = subprocess.Popen([sys.executable, "-m", "clients.bench.relay_worker", "--workers",
                           str(workers), "--batch", str(batch), "--step-s", str(step_s),
                           "--port-file", str(fw_ports), "--stats", str(fw_stats)],
                          env=env, stdout=subprocess.DEVNULL,
                          stderr=open(log_dir / f"{tag}.workers.log", "w"))
    sched = None
    try:
        ports = json.loads(_wait_file(fw_ports, fw, "the fake workers"))
        sched_port = log_dir / f"{tag}.sched.port"
        sched_port.unlink(missing_ok=True)
        cmd = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else []) + [
            "-m", "scheduler_svc.main", "--store", f"127.0.0.1:{free_port()}",
            "--port", "0", "--port-file", str(sched_port), "--log-level", "WARNING",
            # every stream is opened at once: let them all queue rather than be refused
            "--max-tokenizing", str(streams + 64), "--max-queued", str(streams + 64)]
        for p in ports:
            cmd += ["--worker", f"127.0.0.1:{p}"]
        sched = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                 stderr=open(log_dir / f"{tag}.scheduler.log", "w"))
        address = f"127.0.0.1:{int(_wait_file(sched_port, sched, 'the scheduler'))}"
        ctx = mp.get_context("spawn")
        start_at = time.time() + 3.0   # every client process connected and waiting
        shares = [streams // client_procs + (i < streams % client_procs) for i in range(client_procs)]
        procs, pipes = [], []
        for n in shares:
            if n == 0:
                continue
            rx, tx = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_client_proc, args=(address, n, per_stream, max_tokens,
                                                      start_at, tx))
            p.start()
            procs.append(p)
            pipes.append(rx)
        time.sleep(max(0.0, start_at - time.time()))
        t0, s0, w0 = time.time(), cpu_s(sched.pid), cpu_s(fw.pid)
        results = [rx.recv() for rx in pipes]   # blocks until each client process is done
        t1 = max(r["end"] for r in results)
        s1, w1 = cpu_s(sched.pid), cpu_s(fw.pid)
        for p in procs:
            p.join(timeout=30)
    finally:
        if sched is not None:
            sched.send_signal(signal.SIGTERM)   # cProfile writes its file on a clean exit
            sched.wait(timeout=60)
        fw.send_signal(signal.SIGTERM)
        fw.wait(timeout=30)
    sent = json.loads(fw_stats.read_text())
    wall = t1 - t0
    got = {k: sum(r[k] for r in results) for k in ("tokens", "responses", "requests", "short",
                                                   "errors", "retries", "disordered")}
    sent_tokens = sum(s["sent_tokens"] for s in sent)
    sched_cpu = (s1 - s0) / wall * 100.0
    tok_s = got["tokens"] / wall
    return {"workers": workers, "batch": batch, "streams": streams, "step_s": step_s,
            "max_tokens": max_tokens, "requests": got["requests"],
            "offered_tok_s": (workers * batch / step_s) if step_s > 0 else None,
            "tok_s": tok_s, "wall_s": wall, "scheduler_cpu_pct": sched_cpu,
            "tok_per_scheduler_cpu_s": tok_s / max(sched_cpu / 100.0, 1e-9),
            "workers_cpu_pct": (w1 - w0) / wall * 100.0,
            "clients_cpu_pct": sum(r["cpu_s"] for r in results) / wall * 100.0,
            "tokens_received": got["tokens"], "tokens_sent": sent_tokens,
            "tokens_expected": got["requests"] * max_tokens,
            "responses": got["responses"], "tokens_per_response": got["tokens"] / max(1, got["responses"]),
            "worker_steps": sum(s["steps"] for s in sent),
            "worker_batches": sum(s["batches"] for s in sent),
            "steps_per_worker_message": sum(s["steps"] for s in sent) / max(1, sum(s["batches"] for s in sent)),
            "disordered_requests": got["disordered"],
            "error_codes": {k: sum(r["error_codes"].get(k, 0) for r in results)
                            for k in {c for r in results for c in r["error_codes"]}},
            "errors": got["errors"], "short_requests": got["short"], "retries": got["retries"],
            "lost_tokens": sent_tokens - got["tokens"]}


def _table(points: list[dict]) -> str:
    head = (f"{'workers':>7} {'batch':>5} {'streams':>7} {'offered/s':>10} {'tok/s':>9} "
            f"{'sched CPU':>9} {'tok/CPU-s':>10} {'workers':>8} {'clients':>8} {'tok/msg':>7} "
            f"{'lost':>5} {'err':>4}")
    rows = [head]
    for p in points:
        off = f"{p['offered_tok_s']:10.0f}" if p["offered_tok_s"] else f"{'max':>10}"
        rows.append(f"{p['workers']:7d} {p['batch']:5d} {p['streams']:7d} {off} {p['tok_s']:9.0f} "
                    f"{p['scheduler_cpu_pct']:8.0f}% {p['tok_per_scheduler_cpu_s']:10.0f} "
                    f"{p['workers_cpu_pct']:7.0f}% {p['clients_cpu_pct']:7.0f}% "
                    f"{p['steps_per_worker_message']:10.1f} "
                    f"{p['tokens_per_response']:7.1f} {p['lost_tokens']:5d} {p['errors']:4d}")
    return "\n".join(rows)


def run_bench(points, *, step_s: float, max_tokens: int, min_tokens: int, client_procs: int,
              repeats: int = 1, profile: Path | None = None, log_dir: Path | None = None) -> dict:
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="chameleon-relay-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    out = {"label": "live on CPU", "machine": f"{os.cpu_count()} CPUs", "goal_tok_s": GOAL_TOK_S,
           "step_s": step_s, "max_tokens": max_tokens, "client_procs": client_procs,
           "points": []}
    todo = [pt for _ in range(repeats) for pt in points]
    for i, (w, b) in enumerate(todo):
        prof = profile if profile is not None and i == len(todo) - 1 else None
        p = run_point(w, b, step_s=step_s, max_tokens=max_tokens, min_tokens=min_tokens,
                      client_procs=client_procs, profile=prof, log_dir=log_dir)
        out["points"].append(p)
        print(_table([p]).splitlines()[1], flush=True)
    best = max(p["tok_per_scheduler_cpu_s"] for p in out["points"])
    out["best_tok_per_scheduler_cpu_s"] = best
    out["best_tok_s"] = max(p["tok_s"] for p in out["points"])
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--points", default=",".join(f"{w}x{b}" for w, b in DEFAULT_POINTS),
                    help="workers x batch per point, comma-separated (default %(default)s)")
    ap.add_argument("--step-s", type=float, default=0.01,
                    help="seconds between a fake worker's steps (0: as fast as the stream takes them)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    ap.add_argument("--min-tokens", type=int, default=100_000,
                    help="each point relays at least this many tokens (requests per stream follow)")
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="run the whole sweep this many times")
    ap.add_argument("--profile", type=Path, default=None,
                    help="run the last point's scheduler under cProfile, stats to this file")
    ap.add_argument("--log-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)


def _points(spec: str) -> list[tuple[int, int]]:
    try:
        pts = [tuple(int(x) for x in s.lower().split("x")) for s in spec.split(",") if s.strip()]
    except ValueError:
        pts = []
    if not pts or any(len(p) != 2 or min(p) < 1 for p in pts):
        raise SystemExit(f"--points {spec!r}: give WORKERSxBATCH,... e.g. 1x64,8x256")
    return pts  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    points = _points(args.points)
    if args.client_procs < 1 or args.max_tokens < 1:
        raise SystemExit("--client-procs and --max-tokens must be >= 1")
    print(f"relay capacity of one scheduler (live on CPU, {os.cpu_count()} CPUs; fake workers "
          f"step every {args.step_s * 1000:g} ms, {args.max_tokens} tokens per request, "
          f"{args.client_procs} client processes)", flush=True)
    print(_table([]), flush=True)
    out = run_bench(points, step_s=args.step_s, max_tokens=args.max_tokens,
                    min_tokens=args.min_tokens, client_procs=args.client_procs,
                    repeats=args.repeats, profile=args.profile, log_dir=args.log_dir)
    best = out["best_tok_per_scheduler_cpu_s"]
    print(f"best: {out['best_tok_s']:.0f} tok/s relayed; {best:.0f} tokens per scheduler CPU-second "
          f"({'meets' if best >= GOAL_TOK_S else 'below'} the {GOAL_TOK_S:,} tok/s-per-core goal)")
    write_json(args.json, out)
    lost = sum(p["lost_tokens"] for p in out["points"])
    bad = any(p["errors"] or p["disordered_requests"] for p in out["points"])
    return 1 if lost or bad else 0
