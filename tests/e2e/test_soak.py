"""Soak: mixed load through the three services while a worker and the store are killed and
restarted. `make test` runs 60 s (SOAK_SECONDS); `make soak` runs 20 minutes (marker `soak`,
skipped unless CHAMELEON_SOAK=1).

Asserts: no lost request (every call ends with tokens and a finish reason, or a clear status
its kind allows, within its own deadline), no UNKNOWN/INTERNAL anywhere, every service's RSS
back within 10% of its post-warm-up level at the end, and nothing left behind: no queued or
running request in the scheduler, no running, waiting or loading work on the worker. With
SOAK_REPORT=path the figures are written there as JSON.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from chameleon.v1 import scheduler_pb2, worker_pb2
from clients.client import ChameleonClient, ChameleonError
from clients.launcher import Cluster, ClusterSpec

pytestmark = pytest.mark.e2e
OK = grpc.StatusCode.OK
# what each kind of call may end with besides OK (UNAVAILABLE: a worker or the store is down)
ALLOWED = {
    "good": {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED},
    "cancel": {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED},
    "deadline": {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                 grpc.StatusCode.RESOURCE_EXHAUSTED},
    # an unknown adapter while the store is down cannot be told from one the store would know
    "bad": {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE},
}
PROMPTS = ["Once upon a time", "The capital of France is", "def f(x):", "1, 2, 3,", "Water boils at"]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Load:
    def __init__(self, client: ChameleonClient, adapters: list[str], seed: int):
        self.c = client
        self.adapters = adapters
        self.rng = random.Random(seed)
        self.outcomes: Counter = Counter()
        self.lost: list[str] = []
        self.n = 0

    def record(self, kind: str, code: grpc.StatusCode, detail: str = "") -> None:
        self.outcomes[(kind, code.name)] += 1
        if code != OK and code not in ALLOWED[kind]:
            self.lost.append(f"{kind}: {code.name} {detail}")

    async def good(self) -> None:
        r = self.rng
        adapter = r.choice(self.adapters + [None])
        kw = dict(adapter=adapter, max_tokens=r.randint(2, 12), temperature=r.choice([0.0, 0.8]),
                  seed=r.randint(0, 9))
        try:
            async with asyncio.timeout(90):   # a hang is a lost request
                text, ids, finish = await self.c.complete(r.choice(PROMPTS), timeout=80, **kw)
        except ChameleonError as e:
            return self.record("good", e.code, e.message)
        except TimeoutError:
            self.lost.append(f"good: no answer within 90 s ({kw})")
            return
        if not finish or (finish == "length" and not ids):
            self.lost.append(f"good: ended without tokens or a finish reason ({kw}, {finish})")
        self.record("good", OK)

    async def cancel(self) -> None:
        try:
            async with asyncio.timeout(90):
                async for _chunk in self.c.generate(self.rng.choice(PROMPTS), max_tokens=40, timeout=80):
                    break   # leaving the loop cancels the call
            self.record("cancel", grpc.StatusCode.CANCELLED)
        except ChameleonError as e:
            self.record("cancel", e.code, e.message)
        except TimeoutError:
            self.lost.append("cancel: no first chunk within 90 s")

    async def deadline(self) -> None:
        try:
            await self.c.complete(self.rng.choice(PROMPTS), max_tokens=30,
                                  timeout=self.rng.uniform(0.02, 0.4))
            self.record("deadline", OK)
        except ChameleonError as e:
            self.record("deadline", e.code, e.message)

    async def bad(self) -> None:
        r = self.rng
        kw = r.choice([dict(temperature=float("nan")), dict(adapter="../etc"), dict(max_tokens=0),
                       dict(adapter="no-such-adapter"), dict(top_p=1.5), dict(request_id="a/b"),
                       dict(adapter=self.adapters[0] + "\n")])
        prompt = "" if r.random() < 0.1 else r.choice(PROMPTS)
        try:
            await self.c.complete(prompt, **{"max_tokens": 4, **kw}, timeout=30)
            self.record("bad", OK)   # not allowed: every one of these is wrong
            self.lost.append(f"bad: accepted {kw}")
        except ChameleonError as e:
            self.record("bad", e.code, e.message)

    async def run(self, seconds: float, stop: asyncio.Event) -> None:
        end = time.monotonic() + seconds
        tasks: set[asyncio.Task] = set()
        while time.monotonic() < end and not stop.is_set():
            burst = self.rng.random() < 0.15
            for _ in range(self.rng.randint(6, 14) if burst else 1):
                kind = self.rng.choices(["good", "cancel", "deadline", "bad"], [6, 1, 1, 2])[0]
                t = asyncio.create_task(getattr(self, kind)())
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                self.n += 1
            while len(tasks) > 24:   # a closed loop of at most 24 calls in flight
                await asyncio.sleep(0.02)
            await asyncio.sleep(self.rng.uniform(0.0, 0.15))
        if tasks:
            await asyncio.gather(*tasks)


async def worker_state(address: str) -> dict:
    """The worker's own view, from a stream of its own: what runs, waits or loads there."""
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.stream_stream("/chameleon.v1.Worker/Connect",
                                request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=worker_pb2.WorkerEvent.FromString)(_nothing())
        async with asyncio.timeout(30):
            async for ev in call:
                if ev.WhichOneof("kind") == "state":
                    call.cancel()
                    st = ev.state
                    return {"running": st.running, "waiting": st.waiting,
                            "loading": list(st.loading_adapters)}
    raise AssertionError("no state from the worker")


async def _nothing():
    await asyncio.Event().wait()
    yield  # pragma: no cover


def soak_seconds() -> float:
    return float(os.environ.get("SOAK_SECONDS", "60"))


async def wait_idle(c: ChameleonClient, timeout: float = 60) -> scheduler_pb2.GetStatusResponse:
    deadline = time.monotonic() + timeout
    while True:
        s = await c.status()
        if s.queued == 0 and s.running == 0 and all(w.running == 0 for w in s.workers):
            return s
        assert time.monotonic() < deadline, s
        await asyncio.sleep(0.2)


def run_soak(tiny_assets, seconds: float) -> dict:
    adapters = sorted(p.name for p in Path(tiny_assets["adapters"]).iterdir() if p.is_dir())
    spec = ClusterSpec(model=Path(tiny_assets["model"]), adapters=Path(tiny_assets["adapters"]),
                       worker_args=["--max-running", "8", "--block-size", "4",
                                    "--pool-memory-bytes", str(8 << 20)],
                       scheduler_args=["--max-queued", "64"],
                       startup_timeout_s=max(180.0, seconds / 2))   # a long run may share a busy box
    report: dict = {"seconds": seconds}
    with Cluster(spec) as cluster:
        async def main() -> None:
            async with ChameleonClient(cluster.address) as c:
                warm = Load(c, adapters, seed=1)
                await warm.run(min(10.0, seconds / 4), asyncio.Event())   # warm-up: every adapter seen
                await wait_idle(c)
                load = Load(c, adapters, seed=2)
                stop = asyncio.Event()
                body = asyncio.create_task(load.run(seconds, stop))
                await asyncio.sleep(seconds * 0.2)
                await asyncio.to_thread(cluster.restart, cluster.workers[0])   # SIGKILL, back on its port
                await asyncio.sleep(seconds * 0.2)
                await asyncio.to_thread(cluster.restart, cluster.store)
                await asyncio.sleep(seconds * 0.1)
                # the post-warm-up level: every service up again and warm
                base = {p.name: rss_bytes(p.popen.pid) for p in cluster.procs}
                await body
                await wait_idle(c)
                await asyncio.sleep(1.0)
                final = await c.status()
                end = {p.name: rss_bytes(p.popen.pid) for p in cluster.procs}
                report.update(requests=load.n + warm.n, outcomes={f"{k}/{s}": n for (k, s), n in
                                                                  sorted((load.outcomes + warm.outcomes).items())},
                              lost=load.lost + warm.lost, rss_after_warmup=base, rss_end=end,
                              queued=final.queued, running=final.running,
                              worker_running=[w.running for w in final.workers],
                              worker_state=await worker_state(cluster.workers[0].address))
        asyncio.run(main())
        report["exited"] = {p.name: p.popen.poll() for p in cluster.procs if p.popen.poll() is not None}
        report["tracebacks"], report["late_writes"] = [], {}
        for p in cluster.procs:
            # grpc core logs a traceback (ExecuteBatchError) when a response is written to a
            # stream the client has just cancelled; those are counted, any other one fails
            blocks = p.log_path.read_text(errors="replace").split("Traceback")[1:]
            late = sum("ExecuteBatchError" in b.split("\n20", 1)[0] for b in blocks)
            report["late_writes"][p.name] = late
            if len(blocks) > late:
                report["tracebacks"].append(p.name)
    out = os.environ.get("SOAK_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
    return report


def check(report: dict) -> None:
    assert not report["lost"], report["lost"][:20]
    assert not report["exited"] and not report["tracebacks"], report
    assert report["queued"] == 0 and report["running"] == 0 and not any(report["worker_running"])
    assert report["worker_state"] == {"running": 0, "waiting": 0, "loading": []}, report["worker_state"]
    forbidden = [k for k in report["outcomes"] if k.endswith(("/UNKNOWN", "/INTERNAL"))]
    assert not forbidden, report["outcomes"]
    good_ok = report["outcomes"].get("good/OK", 0)
    assert good_ok >= report["requests"] * 0.3, report["outcomes"]
    for name, base in report["rss_after_warmup"].items():
        assert report["rss_end"][name] <= base * 1.10, (name, base, report["rss_end"][name])


def test_soak_60s(tiny_assets):
    check(run_soak(tiny_assets, soak_seconds()))


@pytest.mark.soak
@pytest.mark.skipif(not os.environ.get("CHAMELEON_SOAK"), reason="20 minutes: `make soak` runs it")
@pytest.mark.timeout(3600)
def test_soak_20min(tiny_assets):
    check(run_soak(tiny_assets, float(os.environ.get("SOAK_LONG_SECONDS", "1200"))))
