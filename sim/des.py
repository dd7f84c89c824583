"""The discrete-event simulator: the real scheduler and worker classes on a virtual clock.

    from sim.cost_model import CostModel
    from sim.workload import Workload, WorkloadConfig
    from sim.des import simulate
    from sim.metrics import summarize

    wl = Workload.generate(WorkloadConfig(rps=8, duration_s=900, seed=0))
    res = simulate(wl, CostModel.from_profile("a40-llama7b"), "chameleon", seed=0, warmup_s=120)
    summarize(res)        # P50/P99 TTFT, P99 TBT, hit rate, ... over requests after warm-up

What runs is what the services run. The scheduler side is the scheduler service's
`RequestBook` (scheduler_svc/core/lifecycle.py) around the policy from
`make_policy`; the worker side is `SimWorker` (sim/engine.py): the worker's own
`WorkerMemory`, `ReservationLedger`, `AdapterCache`, `PagePool`, `BatchPlanner` and
page layouts over `SimPool`, with step times and adapter copies from the cost model.
Messages between them take no time (one host). The scheduler runs a round whenever
something it sees changed (an arrival, a step's end, a squash, an adapter landing), and
after each round offers every worker its prefetch hint through the service's own
`HintThrottle` (sent when it changed, at most once per interval).

Events: arrivals, the end of each worker's step, and the landing of an adapter copy
on an idle worker. Each request carries `max_tokens` to the scheduler and worker; its
true output length stays in the worker's oracle (sim/engine.py).

Runs end when every request has finished, or at `max_drain_s` past the workload's
end (overload); requests still waiting then are recorded without a first token.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any

from scheduler_svc.core.hints import HintConfig, HintThrottle
from scheduler_svc.core.lifecycle import RequestBook
from scheduler_svc.core.policies import make_policy
from scheduler_svc.core.types import PendingRequest, WorkerView

from . import policies
from .cost_model import CostModel
from .engine import SimWorker, WorkerSpec
from .workload import Workload


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class RequestRecord:
    request_id: str
    adapter_id: str | None
    rank: int
    input_tokens: int
    arrival_s: float
    admitted_s: float | None = None      # first admission to a worker
    started_s: float | None = None       # its first prefill step began
    first_token_s: float | None = None   # the client's first token
    finish_s: float | None = None
    tokens: int = 0                      # tokens the client received
    hit: bool | None = None              # adapter resident when it reached the worker
    adapter_wait_s: float = 0.0          # adapter copy on its critical path (first attempt)
    squashed: int = 0                    # times it was squashed and re-run
    worker: str | None = None            # the worker of its last admission
    gaps_s: list[float] = field(default_factory=list)   # time between the client's tokens
    _last_token_s: float = 0.0

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s


@dataclass
class SimResult:
    policy: str
    profile: str
    seed: int
    warmup_s: float
    duration_s: float
    records: list[RequestRecord]
    end_s: float                          # virtual time the run ended
    unfinished: int
    policy_metrics: dict[str, float]
    cache: dict[str, float]
    steps: int
    wall_s: float
    admissions: int = 0                   # admissions sent to workers (re-runs included)
    label: str = "simulated"


def _pending(r, adapter_bytes: int, now: float) -> PendingRequest:
    return PendingRequest(r.request_id, r.adapter_id, r.input_tokens, r.max_tokens,
                          adapter_bytes=adapter_bytes, adapter_rank=r.rank if r.adapter_id else 0,
                          arrival=now)


class _Sim:
    def __init__(self, workload: Workload, cost: CostModel, policy, *, num_workers: int,
                 worker: dict[str, Any], scheduler: dict[str, Any]):
        self.spec = policy if isinstance(policy, policies.PolicySpec) else policies.get(policy)
        self.admissions = 0
        self.clock = VirtualClock()
        block = int(worker.get("block_size", 16))
        pool_pages = int(worker.get("pool_pages", 0)) or cost.pool_pages(block)
        max_rank = max([a.rank for a in workload.adapters] or [1])
        probe = SimWorker("probe", cost, WorkerSpec(policies.cache_config(self.spec, pool_pages, 1),
                                                    block_size=block, pool_pages=pool_pages),
                          self.clock)
        probe.register_adapter("probe", max_rank)
        max_rank_pages = probe.pool.layout(probe._adapters["probe"]).num_pages
        wspec = WorkerSpec(policies.cache_config(self.spec, pool_pages, max_rank_pages),
                           admission=self.spec.admission, **{**worker, "pool_pages": pool_pages})
        self.workers = [SimWorker(f"w{i}", cost, wspec, self.clock) for i in range(num_workers)]
        for w in self.workers:
            for a in workload.adapters:
                w.register_adapter(a.adapter_id, a.rank)
        self.by_id = {w.worker_id: w for w in self.workers}
        self.policy = make_policy(self.spec.scheduler, self.clock, **scheduler)
        self.book = RequestBook(self.policy, self.clock)
        self.hints = HintThrottle(HintConfig(), self.clock)
        self._hint_wake: float | None = None
        self.requests = {r.request_id: r for r in workload.requests}
        self.records: dict[str, RequestRecord] = {}
        self.heap: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._copy_wake: dict[str, float] = {}
        self.dirty = False
        self._views = {w.worker_id: self._base_view(w) for w in self.workers}
        self.lost: set[str] = set()

    # -- events -------------------------------------------------------------------
    def push(self, t: float, kind: str, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (t, self._seq, kind, data))

    def _base_view(self, w: SimWorker) -> WorkerView:
        bs = w.spec.block_size
        kv_pages = w.pool.num_pages - w.memory.cache.policy.reserved_pages
        return WorkerView(w.worker_id, total_tokens=kv_pages * bs, free_tokens=kv_pages * bs,
                          max_running=w.spec.max_running, max_waiting=w.spec.max_waiting,
                          block_tokens=bs, page_bytes=w.pool.page_bytes)

    def views(self) -> list[WorkerView]:
        out = []
        for w in self.workers:
            if w.worker_id in self.lost:
                continue
            v = self._views[w.worker_id]
            cache = w.memory.cache
            cached, loading, idle = set(), set(), 0
            for a in cache.adapter_ids():       # one pass (the worker's CacheStats, cheaper)
                e = cache.entry(a)
                if e.loaded:
                    cached.add(a)
                    if not e.holders:
                        idle += len(e.pages)
                else:
                    loading.add(a)
            v.cached_adapters, v.loading_adapters = cached, loading
            v.free_bytes = cache.pool.num_free * v.page_bytes
            v.evictable_bytes = idle * v.page_bytes
            v.waiting = w.waiting()
            out.append(v)
        return self.book.views_for(out)

    def arrive(self, r) -> None:
        now = self.clock.now
        w0 = self.workers[0]
        self.records[r.request_id] = RequestRecord(r.request_id, r.adapter_id, r.rank, r.input_tokens, now)
        self.book.add(_pending(r, w0.adapter_bytes(r.adapter_id), now))
        self.dirty = True

    def schedule(self) -> None:
        for _ in range(4):   # the service re-runs a round at once after acting on squashes
            if not self.policy.queued():
                break
            rnd = self.book.schedule(self.views())
            self.admissions += len(rnd.admit)
            for adm in rnd.admit:
                rid = adm.request.request_id
                rec = self.records[rid]
                w = self.by_id[adm.worker_id]
                if rec.admitted_s is None:
                    rec.admitted_s = self.clock.now
                rec.worker = adm.worker_id
                r = self.requests[rid]
                w.add(rid, r.adapter_id, r.input_tokens, r.max_tokens, r.output_tokens)
                if rec.hit is None and r.adapter_id is not None:
                    rec.hit = w.hits.get(rid)
            for rid, wid in rnd.cancel:
                self.records[rid].squashed += 1
                self.by_id[wid].abort(rid)
            if not rnd.cancel:
                break
        self.send_hints()

    def send_hints(self) -> None:
        """As the service does after each round (scheduler_svc/core/hints.py's throttle)."""
        for w in self.workers:
            send, retry_in = self.hints.offer(
                w.worker_id, self.policy.prefetch_hints(w.worker_id, self.hints.config.limit))
            if send is not None:
                w.hint(send)
            if retry_in is not None and self._hint_wake is None:
                # at least 1 ms on: now + a rounding-sized wait can equal now in floating point
                self._hint_wake = self.clock.now + max(retry_in, 1e-3)
                self.push(self._hint_wake, "hint", None)

    def step_done(self, w: SimWorker) -> None:
        now = self.clock.now
        for em in w.finish_step():
            s = em.seq
            rid = s.request_id
            rec = self.records[rid]
            if em.first and rec.started_s is None:
                rec.started_s = w.started.get(rid)
                rec.adapter_wait_s = s.adapter_wait_s
            if self.book.tokens(rid, w.worker_id, 1):
                if rec.first_token_s is None:
                    rec.first_token_s = now
                else:
                    rec.gaps_s.append(now - rec._last_token_s)
                rec._last_token_s = now
                rec.tokens += 1
            if em.done and self.book.completed(rid, w.worker_id):
                rec.finish_s = now
                self.book.release(rid, cancel=False)
                w.started.pop(rid, None)
                self.dirty = True
        # the step started its prefills, so the admission window has room again
        self.dirty = True

    def lose(self, wid: str) -> None:
        """The worker's stream broke: the service re-queues what it ran (book.worker_down)."""
        self.lost.add(wid)
        self.book.worker_down(wid)
        self.dirty = True

    def kick_workers(self) -> None:
        for w in self.workers:
            if w.busy_until is not None or w.worker_id in self.lost:
                continue
            end = w.try_start()
            if end is not None:
                self.push(end, "step", w.worker_id)
                continue
            t = w.next_copy_at()
            if t is not None and self._copy_wake.get(w.worker_id) != t:
                self._copy_wake[w.worker_id] = t
                self.push(t, "copy", w.worker_id)

    def run(self, requests, end_by: float, disconnect: tuple[int, float] | None = None) -> float:
        for r in requests:
            self.push(r.arrival_s, "arr", r)
        if disconnect is not None:
            self.push(disconnect[1], "lose", self.workers[disconnect[0]].worker_id)
        while self.heap:
            t = self.heap[0][0]
            if t > end_by:
                break
            self.clock.now = t
            while self.heap and self.heap[0][0] == t:
                _, _, kind, data = heapq.heappop(self.heap)
                if kind == "arr":
                    self.arrive(data)
                elif kind == "step":
                    if data not in self.lost:
                        self.step_done(self.by_id[data])
                elif kind == "lose":
                    self.lose(data)
                elif kind == "hint":
                    self._hint_wake = None
                    self.send_hints()
                else:
                    self._copy_wake.pop(data, None)
                    self.dirty = True
            if self.dirty:
                self.dirty = False
                self.schedule()
            self.kick_workers()
        return self.clock.now


def simulate(workload: Workload, profile: CostModel | str, policy: str | policies.PolicySpec, *, seed: int,
             warmup_s: float, num_workers: int = 1, worker: dict[str, Any] | None = None,
             scheduler: dict[str, Any] | None = None, max_drain_s: float | None = None,
             disconnect: tuple[int, float] | None = None) -> SimResult:
    """Replay `workload` through `policy` (a name from sim/policies.py, or a PolicySpec) on
    `num_workers` simulated workers
    of `profile`. `seed` names the run (the simulator itself draws nothing at random: the
    workload carries all randomness); `warmup_s` is recorded for the metrics. `worker`
    overrides WorkerSpec fields (block_size, max_running, max_step_tokens, pool_pages);
    `scheduler` goes to the scheduler policy's config (make_policy). `disconnect=(i, t)`
    loses worker i at time t (its requests are re-queued, as the service does)."""
    if warmup_s < 0:
        raise ValueError(f"warmup_s must be >= 0, got {warmup_s}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    cost = profile if isinstance(profile, CostModel) else CostModel.from_profile(profile)
    started = time.perf_counter()
    sim = _Sim(workload, cost, policy, num_workers=num_workers, worker=dict(worker or {}),
               scheduler=dict(scheduler or {}))
    duration = workload.config.duration_s
    drain = duration if max_drain_s is None else max_drain_s
    end = sim.run(workload.requests, duration + drain, disconnect)
    records = [sim.records.get(r.request_id) or RequestRecord(r.request_id, r.adapter_id, r.rank,
                                                              r.input_tokens, r.arrival_s)
               for r in workload.requests]
    unfinished = sum(1 for r in records if r.finish_s is None)
    caches = [w.memory.cache for w in sim.workers]
    cache = {"hits": sum(c.hits for c in caches), "misses": sum(c.misses for c in caches),
             "loads": sum(c.loads for c in caches), "evictions": sum(c.evictions for c in caches),
             "bytes_loaded": sum(c.bytes_loaded for c in caches),
             "busy_s": sum(w.busy_s for w in sim.workers)}
    return SimResult(sim.spec.name, cost.name, seed, warmup_s, duration, records, end, unfinished,
                     dict(sim.policy.metrics()), cache, sum(w.steps for w in sim.workers),
                     time.perf_counter() - started, sim.admissions)
