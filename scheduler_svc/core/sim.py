"""A small discrete-event simulator of LLM workers, for policy tests and benchmarks.

Everything it reports is SIMULATED. Each worker runs iteration-level batching: a
step lasts `step_base_s + step_per_seq_s * batch + prefill_s_per_token * new prompt
tokens + adapter loads (bytes / pcie_bytes_per_s)`, and every request in the step
gets one token (the first token of a newly admitted request ends its TTFT). The
memory model is one unified paged pool (the design's §6 layout) shared by KV pages
and cached adapters; adapters of running requests are pinned, idle ones are evicted
LRU when room is needed. `WorkerView`s are built the way the service builds them
(free_tokens = capacity - reservations). Sizes default to Llama-7B in fp16: 512 KiB of KV
per token, 2 MiB of q/k/v/o LoRA weights per unit of rank.
"""
from __future__ import annotations

import math
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from .types import PendingRequest, WorkerView

KV_BYTES_PER_TOKEN = 512 * 1024
ADAPTER_BYTES_PER_RANK = 2 * 1024 * 1024


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class TraceRequest:
    request_id: str
    arrival: float
    adapter_id: str | None
    adapter_rank: int
    input_tokens: int
    output_tokens: int          # what the model will actually generate
    max_tokens: int

    @property
    def adapter_bytes(self) -> int:
        return self.adapter_rank * ADAPTER_BYTES_PER_RANK if self.adapter_id else 0


@dataclass
class SimWorkerConfig:
    total_tokens: int = 16384
    max_running: int = 64
    block_tokens: int = 16
    step_base_s: float = 0.020
    step_per_seq_s: float = 0.0003
    prefill_s_per_token: float = 0.0002
    pcie_bytes_per_s: float = 12e9

    def __post_init__(self) -> None:
        if self.total_tokens <= 0 or self.max_running <= 0 or self.block_tokens <= 0:
            raise ValueError("total_tokens, max_running and block_tokens must be > 0")
        if self.step_base_s <= 0 or self.pcie_bytes_per_s <= 0:
            raise ValueError("step_base_s and pcie_bytes_per_s must be > 0")

    @property
    def page_bytes(self) -> int:
        return self.block_tokens * KV_BYTES_PER_TOKEN


@dataclass
class SimResult:
    ttft_s: dict[str, float] = field(default_factory=dict)     # first attempt's first token
    finish_s: dict[str, float] = field(default_factory=dict)   # end - arrival
    squashes: int = 0
    admissions: int = 0
    adapter_waits: int = 0     # admissions whose adapter did not fit the pool at once
    sim_seconds: float = 0.0


class _Run:
    __slots__ = ("trace", "pending", "generated", "ready")

    def __init__(self, trace: TraceRequest, pending: PendingRequest):
        self.trace, self.pending, self.generated, self.ready = trace, pending, 0, False


class SimWorker:
    """KV pages are reserved (prompt + max_tokens) at admission, as the service does, but
    allocated as tokens are produced, like S-LoRA's paged pool; an admitted request whose
    adapter does not fit the physically free + idle pages waits on the worker."""

    def __init__(self, worker_id: str, cfg: SimWorkerConfig):
        self.worker_id, self.cfg = worker_id, cfg
        self.running: dict[str, _Run] = {}
        self.cache: OrderedDict[str, int] = OrderedDict()   # adapter -> bytes, LRU first
        self.refs: Counter[str] = Counter()
        self.busy_until: float | None = None
        self.step_load_s = 0.0
        self.step_prefill = 0
        self.connected = True
        self.pool_bytes = cfg.total_tokens // cfg.block_tokens * cfg.page_bytes

    def _used_kv_bytes(self) -> int:
        b = self.cfg.block_tokens
        pages = sum(-(-(r.pending.input_tokens + r.generated) // b) for r in self.running.values() if r.ready)
        return pages * self.cfg.page_bytes

    def view(self) -> WorkerView:
        c = self.cfg
        return WorkerView(
            worker_id=self.worker_id, total_tokens=c.total_tokens,
            free_tokens=c.total_tokens - sum(r.pending.reserved_tokens for r in self.running.values()),
            running=len(self.running), max_running=c.max_running,
            cached_adapters=set(self.cache), evictable_bytes=sum(
                b for a, b in self.cache.items() if self.refs[a] == 0),
            free_bytes=max(0, self.pool_bytes - self._used_kv_bytes() - sum(self.cache.values())),
            block_tokens=c.block_tokens, page_bytes=c.page_bytes, connected=self.connected)

    def admit(self, trace: TraceRequest, pending: PendingRequest) -> bool:
        """Start a request; False when it must wait on the worker for adapter memory."""
        run = self.running[pending.request_id] = _Run(trace, pending)
        if trace.adapter_id:
            self.refs[trace.adapter_id] += 1  # pinned from now on, even while waiting
        return self._make_ready(run)

    def _make_ready(self, run: _Run) -> bool:
        aid = run.trace.adapter_id
        if aid is not None and aid not in self.cache:
            free = self.pool_bytes - self._used_kv_bytes() - sum(self.cache.values())
            for idle in [a for a in self.cache if self.refs[a] == 0]:
                if free >= run.trace.adapter_bytes:
                    break
                free += self.cache.pop(idle)
            if free < run.trace.adapter_bytes:
                return False
            self.cache[aid] = run.trace.adapter_bytes
            self.step_load_s += run.trace.adapter_bytes / self.cfg.pcie_bytes_per_s
        elif aid is not None:
            self.cache.move_to_end(aid)
        run.ready = True
        self.step_prefill += run.pending.input_tokens
        return True

    def drop(self, rid: str) -> _Run | None:
        r = self.running.pop(rid, None)
        if r is not None and r.trace.adapter_id:
            self.refs[r.trace.adapter_id] -= 1
        return r

    def start_step(self, now: float) -> None:
        for run in self.running.values():
            if not run.ready:
                self._make_ready(run)
        c = self.cfg
        batch = sum(1 for r in self.running.values() if r.ready)
        if batch == 0:
            return
        dur = (c.step_base_s + c.step_per_seq_s * batch
               + c.prefill_s_per_token * self.step_prefill + self.step_load_s)
        self.step_prefill, self.step_load_s = 0, 0.0
        self.busy_until = now + dur


def simulate(policy, trace: list[TraceRequest], workers: list[SimWorkerConfig], clock: FakeClock,
             max_sim_s: float = 3600.0, disconnect: tuple[int, float] | None = None) -> SimResult:
    """Replay `trace` through `policy`; `disconnect=(worker index, time)` drops a worker."""
    sim = [SimWorker(f"w{i}", cfg) for i, cfg in enumerate(workers)]
    by_id = {w.worker_id: w for w in sim}
    traces = {t.request_id: t for t in trace}
    res = SimResult()
    order = sorted(trace, key=lambda t: t.arrival)
    nxt = 0
    squashes = getattr(policy, "squashes", lambda: [])
    requeue = getattr(policy, "requeue", policy.enqueue)
    pendings: dict[str, PendingRequest] = {}

    def give_back(w: SimWorker, rid: str) -> None:
        if w.drop(rid) is not None:
            p = pendings[rid]
            p.attempts += 1
            requeue(p)

    while True:
        events = [w.busy_until for w in sim if w.busy_until is not None]
        if nxt < len(order):
            events.append(order[nxt].arrival)
        if disconnect is not None and sim[disconnect[0]].connected:
            events.append(disconnect[1])
        if not events:
            if policy.queued() or any(w.running for w in sim):
                raise RuntimeError(f"{policy.name}: requests are left but nothing runs")
            break
        clock.now = now = min(events)
        if now > max_sim_s:
            raise RuntimeError(f"{policy.name}: simulation passed {max_sim_s} s")
        while nxt < len(order) and order[nxt].arrival <= now:
            t = order[nxt]
            nxt += 1
            p = PendingRequest(t.request_id, t.adapter_id, t.input_tokens, t.max_tokens,
                               adapter_bytes=t.adapter_bytes, adapter_rank=t.adapter_rank, arrival=now)
            pendings[t.request_id] = p
            policy.enqueue(p)
        if disconnect is not None and sim[disconnect[0]].connected and now >= disconnect[1]:
            lost = sim[disconnect[0]]
            lost.connected, lost.busy_until = False, None
            for rid in list(lost.running):
                give_back(lost, rid)
        for w in sim:
            if w.busy_until is not None and w.busy_until <= now:
                w.busy_until = None
                for rid, r in list(w.running.items()):
                    if not r.ready:
                        continue
                    r.generated += 1
                    if r.generated == 1 and rid not in res.ttft_s:
                        res.ttft_s[rid] = now - traces[rid].arrival
                    if r.generated >= r.trace.output_tokens:
                        w.drop(rid)
                        res.finish_s[rid] = now - r.trace.arrival
                        policy.on_finish(r.pending, r.generated)
        for _ in range(4):  # the service re-runs a round right after acting on squashes
            if not policy.queued():
                break
            for adm in policy.schedule([w.view() for w in sim if w.connected]):
                w = by_id[adm.worker_id]
                res.adapter_waits += 0 if w.admit(traces[adm.request.request_id], adm.request) else 1
                res.admissions += 1
            lost = squashes()
            for rid in lost:
                res.squashes += 1
                give_back(next(w for w in sim if rid in w.running), rid)
            if not lost:
                break
        for w in sim:
            if w.connected and w.busy_until is None and w.running:
                w.start_step(now)
    res.sim_seconds = clock.now
    return res


@dataclass
class TraceConfig:
    """Paper-like trace: 100 adapters, ranks 8-128 (20 each), uniform rank popularity,
    power-law popularity within a rank, Poisson arrivals, chat-like lengths scaled down.
    Each adapter serves one task, so it has its own typical output length."""
    num_requests: int = 1000
    rate_rps: float = 6.0
    ranks: tuple[int, ...] = (8, 16, 32, 64, 128)
    adapters_per_rank: int = 20
    zipf_s: float = 1.0
    input_median: float = 256.0
    output_median: float = 96.0
    max_len: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_requests < 0 or self.rate_rps <= 0 or self.adapters_per_rank < 1:
            raise ValueError("num_requests >= 0, rate_rps > 0 and adapters_per_rank >= 1 required")


def make_trace(cfg: TraceConfig) -> list[TraceRequest]:
    rng = random.Random(cfg.seed)
    weights = [1.0 / (i + 1) ** cfg.zipf_s for i in range(cfg.adapters_per_rank)]
    typical = {(r, i): min(cfg.max_len // 2, max(4, int(rng.lognormvariate(math.log(cfg.output_median), 0.8))))
               for r in cfg.ranks for i in range(cfg.adapters_per_rank)}
    out, t = [], 0.0
    for n in range(cfg.num_requests):
        t += rng.expovariate(cfg.rate_rps)
        rank = rng.choice(cfg.ranks)
        idx = rng.choices(range(cfg.adapters_per_rank), weights)[0]
        med = typical[(rank, idx)]
        max_tokens = min(cfg.max_len, 1 << (2 * med - 1).bit_length())
        output = max(1, min(max_tokens, int(med * rng.lognormvariate(0.0, 0.35))))
        inp = max(8, min(cfg.max_len, int(rng.lognormvariate(math.log(cfg.input_median), 0.8))))
        out.append(TraceRequest(f"r{n}", t, f"rank{rank}-{idx}", rank, inp, output, max_tokens))
    return out
