"""One simulated GPU worker: the worker's real memory and batch planner on a modelled clock.

`SimWorker` is the engine loop of gpu_worker/core/engine.py without a model: it drives
the same `WorkerMemory` (over `SimPool`, adapter copies on one `SharedLink` timed by
the cost model), `ReservationLedger`, `AdapterCache`, `PagePool` and `BatchPlanner`
the worker runs, and replaces the forward pass by `CostModel.step_s` of the planned
batch. Like the engine, a step is planned, lasts its modelled time, and then every
sequence in it gets one token.

Output lengths. A request's true output length lives in `_oracle`, which is read in
one place only, `_ends_here`, after a token was produced: "was this its last token?".
Nothing that plans, admits or schedules sees it (the scheduler predicts lengths from
finished requests, as it does live).

Adapters are in host memory (as in S-LoRA and the paper), so a fetch is staged at
once; what costs time is the host-to-device copy, queued on the worker's one link.

Two ways a copy meets compute (`WorkerSpec.adapter_load`):
  overlapped  every copy runs on a side stream beside the steps (this project's worker).
  blocking    S-LoRA's engine, which the paper's Chameleon is built on: the adapters of a
              newly admitted request are loaded on the compute stream before its prefill
              (`slora/server/router/manager.py` `_step` awaits `load_adapters` before
              `_prefill_batch`; `infer_adapter.py` copies on the default stream unless
              prefetching), so the GPU runs no step until the copy lands. Only prefetches
              (the scheduler's hints, S-LoRA's `prefetch=True` path) overlap compute.
A miss therefore costs the whole batch its copy time in `blocking` mode, a request's own
wait in `overlapped` mode; the mode is the engine's, the same for every policy of a run.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

from gpu_worker.core.batch_planner import BatchPlanner, StepPlan
from gpu_worker.core.memory.admission import build_admission
from gpu_worker.core.memory.policy import CacheConfig
from gpu_worker.core.memory.sim_pool import SharedLink, SimAdapter, SimPool
from chameleon_common.model_config import LlamaConfig
from gpu_worker.core.sequence import SamplingSpec, Sequence
from gpu_worker.core.worker_memory import MemoryEvents, WorkerMemory

from .cost_model import CostModel


def model_config(cost: CostModel) -> LlamaConfig:
    """The profile's model as the worker's LlamaConfig (shapes only; no weights)."""
    m = cost.profile["model"]
    heads = cost.hidden // int(m["head_dim"])
    return LlamaConfig(vocab_size=32000, hidden_size=cost.hidden,
                       intermediate_size=int(m["intermediate_size"]), num_layers=cost.num_layers,
                       num_heads=heads, num_kv_heads=int(m["num_kv_heads"]), head_dim=int(m["head_dim"]),
                       max_position_embeddings=cost.max_context, bos_token_id=1, eos_token_ids=[2])


ADAPTER_LOADS = ("overlapped", "blocking")


class _ComputeStreamLink(SharedLink):
    """The worker's link in `blocking` mode: a demand copy is queued behind the step in
    flight (it runs on the compute stream), a prefetch copy starts as soon as the link is free."""

    def __init__(self, clock: Callable[[], float], copy_s: Callable[[int], float]):
        super().__init__(clock, copy_s)
        self.not_before = -math.inf

    def schedule(self, nbytes: int) -> float:
        if self.not_before > self.clock():
            self.free_at = max(self.free_at, self.not_before)
        return super().schedule(nbytes)


@dataclass(frozen=True)
class WorkerSpec:
    """A simulated worker's configuration (the same for every scheduling policy)."""
    cache: CacheConfig
    admission: str = "slora-peak"
    block_size: int = 16
    max_running: int = 256
    max_step_tokens: int = 512
    pool_pages: int = 0            # 0: the profile's pool
    # the scheduler keeps at most this many admitted, not yet started requests on the worker
    # (WorkerView.max_waiting): a few steps' worth of prefills (~2.5 mean prompts per step at
    # 512 tokens), so the worker never idles for want of work while the scheduler's policy,
    # not the worker's FIFO, decides the order
    max_waiting: int = 8
    adapter_load: str = "overlapped"   # or "blocking" (S-LoRA's engine, see the module doc)

    def __post_init__(self) -> None:
        if self.adapter_load not in ADAPTER_LOADS:
            raise ValueError(f"adapter_load must be one of {', '.join(ADAPTER_LOADS)}, "
                             f"got {self.adapter_load!r}")
        if self.block_size <= 0 or self.max_running <= 0 or self.max_step_tokens <= 0:
            raise ValueError("block_size, max_running and max_step_tokens must be positive")
        if self.pool_pages < 0 or self.max_waiting < 0:
            raise ValueError(f"pool_pages and max_waiting must be >= 0: {self.pool_pages}, "
                             f"{self.max_waiting}")


@dataclass
class Emitted:
    """One token of one request from a finished step."""
    seq: Sequence
    first: bool
    done: bool


class SimWorker:
    def __init__(self, worker_id: str, cost: CostModel, spec: WorkerSpec, clock: Callable[[], float]):
        self.worker_id = worker_id
        self.cost = cost
        self.spec = spec
        self.clock = clock
        self.cfg = model_config(cost)
        pages = spec.pool_pages or cost.pool_pages(spec.block_size)
        self.blocking = spec.adapter_load == "blocking"
        self.link = (_ComputeStreamLink if self.blocking else SharedLink)(clock, cost.copy_s)
        self.stalled_until = -math.inf             # blocking mode: a demand copy holds the GPU
        self.pool = SimPool.for_model(self.cfg, pages, spec.block_size, self.link,
                                      element_bytes=cost.dtype_bytes)
        self.memory = WorkerMemory(self.pool, spec.cache, clock,
                                   admission=build_admission(spec.admission, spec.block_size))
        self.planner = BatchPlanner(self.memory, self.memory.ledger, spec.block_size,
                                    spec.max_running, spec.max_step_tokens)
        self._adapters: dict[str, SimAdapter] = {}
        self._ranks: dict[str, int] = {}
        self._oracle: dict[str, int] = {}           # request id -> true output tokens
        self._by_id: dict[str, Sequence] = {}
        self._order = itertools.count()
        self.busy_until: float | None = None        # the step in flight ends then
        self._plan: StepPlan | None = None
        self.started: dict[str, float] = {}        # request id -> when its prefill step began
        self.hits: dict[str, bool] = {}            # request id -> adapter resident on arrival
        self.steps = 0
        self.busy_s = 0.0

    # -- adapters ------------------------------------------------------------
    def register_adapter(self, adapter_id: str, rank: int) -> None:
        self._ranks[adapter_id] = rank
        self._adapters[adapter_id] = SimAdapter.for_model(adapter_id, rank, self.cfg,
                                                          element_bytes=self.cost.dtype_bytes)

    def adapter_bytes(self, adapter_id: str | None) -> int:
        return self._adapters[adapter_id].nbytes if adapter_id else 0

    def _fetch(self, ids: list[str], demand: bool = True) -> None:
        """Adapters are in host memory: stage each at once (their copies take link time).
        In blocking mode a demand copy (not a prefetch) also holds the GPU until it lands."""
        stalls = self.blocking and demand
        todo = list(ids)
        while todo:
            if stalls:
                before = {id(i) for i in self.pool.installs}
                self.link.not_before = self.busy_until if self.busy_until is not None else -math.inf
            ev = self.memory.staged(self._adapters[todo.pop(0)])
            if stalls:
                self.link.not_before = -math.inf
                for inst in self.pool.installs:
                    if id(inst) not in before:
                        self._stall(inst.ready_at)
            self._take(ev, todo)

    def _stall(self, until: float) -> None:
        step_end = self.busy_until if self.busy_until is not None else -math.inf
        start = max(self.clock(), step_end, self.stalled_until)
        if until > start:
            self.busy_s += until - start
        self.stalled_until = max(self.stalled_until, until)

    def _take(self, ev: MemoryEvents, todo: list[str] | None = None) -> None:
        for s in ev.ready:
            self.planner.add(s)
        if ev.need_fetch:
            if todo is None:
                self._fetch(ev.need_fetch)
            else:
                todo.extend(a for a in ev.need_fetch if a not in todo)

    def hint(self, adapter_ids: list[str]) -> None:
        """The scheduler's prefetch hint (a PrefetchHint message on the worker's stream)."""
        self._fetch(self.memory.hint(adapter_ids), demand=False)

    # -- requests --------------------------------------------------------------
    def add(self, request_id: str, adapter_id: str | None, input_tokens: int, max_tokens: int,
            true_output: int) -> None:
        max_tokens = min(max_tokens, self.cost.max_context - input_tokens)
        seq = Sequence(request_id, [0] * input_tokens, SamplingSpec(max_tokens=max_tokens),
                       adapter_id=adapter_id, arrival=self.clock())
        seq.order = next(self._order)
        self._by_id[request_id] = seq
        self._oracle[request_id] = true_output
        if adapter_id is not None:
            self.hits[request_id] = self.memory.cache.is_resident(adapter_id)
        self._take(self.memory.admit(seq))

    def abort(self, request_id: str) -> None:
        seq = self._by_id.get(request_id)
        if seq is None:
            return
        if self._plan is not None and seq in self._plan.seqs:
            keep = [(s, n) for s, n in zip(self._plan.prefill, self._plan.prefill_tokens) if s is not seq]
            self._plan.prefill = [s for s, _ in keep]
            self._plan.prefill_tokens = [n for _, n in keep]
            self._plan.decode = [s for s in self._plan.decode if s is not seq]
        self._retire(seq)

    def _retire(self, seq: Sequence) -> None:
        self.planner.remove(seq)
        self._by_id.pop(seq.request_id, None)
        self._oracle.pop(seq.request_id, None)
        self.memory.release(seq)
        self._take(self.memory.retry())

    def _ends_here(self, seq: Sequence) -> bool:
        """The oracle's only question: did the token just produced end the request?"""
        return (len(seq.output_ids) >= self._oracle[seq.request_id]
                or len(seq.output_ids) >= seq.spec.max_tokens)

    # -- the loop ----------------------------------------------------------------
    def waiting(self) -> int:
        """Admitted requests not started yet (ready, or parked for their adapter)."""
        return len(self.planner.waiting) + sum(len(v) for v in self.memory._parked.values())

    def has_work(self) -> bool:
        return bool(self.planner.running or self.planner.waiting)

    def next_copy_at(self) -> float | None:
        return self.pool.next_ready_at()

    def try_start(self) -> float | None:
        """If idle, plan a step as the engine does; returns when it ends (None: nothing to run)."""
        if self.busy_until is not None or self.clock() < self.stalled_until:
            return None
        self._take(self.memory.poll())   # adapters whose copy has landed
        plan = self.planner.plan()
        if not plan and self.planner.waiting and not self.planner.running:
            self._take(self.memory.retry())
            plan = self.planner.plan(ignore_held=True)
        if not plan:
            return None
        now = self.clock()
        for s in plan.prefill:
            self.started.setdefault(s.request_id, now)
        rank = self._ranks
        # chunked prefill (batch_planner.py): each prefill runs `prefill_tokens` of its prompt
        prefill = [(n, rank.get(s.adapter_id, 0)) for s, n in zip(plan.prefill, plan.prefill_tokens)]
        decode = [rank.get(s.adapter_id, 0) for s in plan.decode]
        context = (sum(s.num_computed + n for s, n in zip(plan.prefill, plan.prefill_tokens))
                   + sum(s.num_tokens for s in plan.decode))
        distinct = [rank[a] for a in {s.adapter_id for s in plan.seqs if s.adapter_id}]
        dt = self.cost.step_s(prefill=prefill, decode=decode, context_tokens=context,
                              distinct_ranks=distinct)
        self._plan = plan
        self.busy_until = now + dt
        self.steps += 1
        self.busy_s += dt
        return self.busy_until

    def finish_step(self) -> list[Emitted]:
        """The step in flight ended: one token for each of its sequences."""
        plan, self._plan, self.busy_until = self._plan, None, None
        out: list[Emitted] = []
        if plan is None:
            return out
        now = self.clock()
        for s, n in zip(plan.seqs, plan.query_lens):
            s.num_computed += n
            if s.num_computed < len(s.prompt_ids):
                continue       # a chunk that leaves part of its prompt samples nothing (engine.py)
            first = s.first_token_at is None
            if first:
                s.first_token_at = now
            s.output_ids.append(0)
            done = self._ends_here(s)
            out.append(Emitted(s, first, done))
            if done:
                self._retire(s)
        self._take(self.memory.poll())
        return out
