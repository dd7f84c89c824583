"""The engine loop with a modelled model: `--sim-profile` workers (live-sim).

`SimEngine` is the worker's real `Engine` (same `add`/`step`/`install`/`hint`/`abort`,
same `WorkerMemory`, reservation ledger, `AdapterCache`, `PagePool` and `BatchPlanner`,
same post-processing, stop strings and finish reasons) with two things modelled:

* the forward pass: a step waits the device profile's `CostModel.step_s` of the planned
  batch (prefill tokens and rank of each prefilling request, rank of each decoding one,
  the KV context the step reads, the distinct adapters it reads) in real time, then
  yields logits that pick a placeholder token. A request whose Admit carries
  `sim_output_tokens = N` (a replayed trace's true output length) gets end-of-sequence as
  its N-th token, so it takes N steps like a model that stops there; otherwise it runs
  to max_tokens. Python time spent between back-to-back steps counts against the next
  step's wait (the steps keep the modelled pace unless the host cannot keep up);
* the pool: a `SimPool` of the profile's pages (`CostModel.pool_pages`) with the real
  page layouts; an adapter install is ready when its modelled host-to-device copy
  (`CostModel.copy_s`, copies queued one after another on one `SharedLink`) has ended;
* host memory: adapters described in `host` (the store's catalog, read at start) are in
  host memory, as in the paper's setup and the simulator: a miss or a prefetch hint
  stages them at once, on the engine thread, so their copy starts before the next step;
  only adapters not described there go through the worker's fetch path.

Nothing else is modelled: admission, eviction, prefetch hints, the gRPC streams and the
scheduler are the real ones. The tokenizer is a three-word one (`sim_tokenizer`): a
prompt of N words "tok" is N tokens.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from chameleon_common.model_config import LlamaConfig

from .batch_planner import BatchPlanner, StepPlan
from .engine import Engine, EngineConfig
from .memory.admission import build_admission
from .memory.prefetch import ArrivalHistogramPrefetcher
from .memory.sim_pool import SharedLink, SimAdapter, SimPool
from .worker_memory import WorkerMemory

PLACEHOLDER = "tok"
SIM_VOCAB = {"<unk>": 0, "</s>": 1, PLACEHOLDER: 2}
SIM_EOS = SIM_VOCAB["</s>"]


def sim_tokenizer():
    """A word-level tokenizer of three entries: every whitespace-separated word is one token
    ("tok" and anything unknown), and "</s>" ends a sequence."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(SIM_VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["</s>"])
    return tok


def sim_prompt(tokens: int) -> str:
    """A prompt that the sim tokenizer encodes to exactly `tokens` tokens."""
    if tokens <= 0:
        raise ValueError(f"a prompt needs at least one token, got {tokens}")
    return " ".join([PLACEHOLDER] * tokens)


def model_config(cost) -> LlamaConfig:
    """The profile's model shapes (the simulator's, sim/engine.py) with the sim vocabulary."""
    from sim.engine import model_config as profile_model

    return replace(profile_model(cost), vocab_size=len(SIM_VOCAB), bos_token_id=0,
                   eos_token_ids=[SIM_EOS])


@dataclass(frozen=True)
class _NoModel:
    """What the engine reads of a model besides running it."""
    config: LlamaConfig
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float16


class SimEngine(Engine):
    CATCH_UP_S = 0.005   # a step starting this soon after the last one ended continues its pace

    def __init__(self, cost, tokenizer, cfg: EngineConfig, *, max_step_tokens: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        """`cost`: a sim.cost_model.CostModel. `cfg.num_blocks` pages of `cfg.block_size`
        tokens (use `cost.pool_pages(block_size)` for the device's pool). `max_step_tokens`
        overrides cfg's step budget (EngineConfig insists on >= max_context, which the
        planner does not need: a step's first prefill always goes)."""
        self.cost = cost
        self.model = _NoModel(model_config(cost))
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.clock = clock
        self.sleep = sleep
        self.eos_ids = {SIM_EOS}
        self.link = SharedLink(clock, cost.copy_s)
        self.pool = SimPool.for_model(self.model.config, cfg.num_blocks, cfg.block_size, self.link,
                                      element_bytes=cost.dtype_bytes)
        prefetcher = ArrivalHistogramPrefetcher(cfg.prefetch, clock) if cfg.prefetch else None
        self.memory = WorkerMemory(self.pool, cfg.cache, clock, prefetcher=prefetcher,
                                   admission=build_admission(cfg.admission, cfg.block_size))
        step_tokens = max_step_tokens or cfg.max_step_tokens
        if step_tokens <= 0:
            raise ValueError(f"max_step_tokens must be positive, got {step_tokens}")
        self.planner = BatchPlanner(self.memory, self.memory.ledger, cfg.block_size,
                                    cfg.max_running, step_tokens)
        self._order = itertools.count()
        self._by_id = {}
        self._to_fetch = []
        self._ranks: dict[str, int] = {}
        self.host: dict[str, SimAdapter] = {}   # adapters in host memory (staged at once)
        self._busy_until: float | None = None
        self.steps = 0
        self.modelled_s = 0.0          # sum of modelled step times
        self.late_s = 0.0              # time steps ran past their modelled end (host too slow)

    def install(self, staged) -> None:
        self._ranks[staged.adapter_id] = staged.rank
        super().install(staged)

    def take_fetches(self) -> list[str]:
        """Adapters to fetch, less those in host memory: those are staged here and now."""
        return self._stage_from_host(super().take_fetches())

    def hint(self, adapter_ids: list[str]) -> list[str]:
        return self._stage_from_host(super().hint(adapter_ids))

    def _stage_from_host(self, ids: list[str]) -> list[str]:
        from .worker_memory import AdapterTooLargeError

        rest: list[str] = []
        while ids:
            for aid in ids:
                adapter = self.host.get(aid)
                if adapter is None:
                    rest.append(aid)
                    continue
                try:
                    self.install(adapter)
                except AdapterTooLargeError:
                    rest.append(aid)       # the fetch path reports it to the waiting requests
            ids = [a for a in Engine.take_fetches(self) if a not in rest]   # an install may evict
        return rest

    def wakeup_in(self) -> float | None:
        nxt = self.pool.next_ready_at()
        return None if nxt is None else max(0.0, nxt - self.clock())

    def step_seconds(self, plan: StepPlan) -> float:
        """The modelled duration of one step over `plan`."""
        prefill, decode, context, adapters = [], [], 0, set()
        for s in plan.prefill:
            q = s.num_tokens - s.num_computed
            prefill.append((q, self._ranks.get(s.adapter_id, 0) if s.adapter_id else 0))
            context += s.num_computed + q
        for s in plan.decode:
            decode.append(self._ranks.get(s.adapter_id, 0) if s.adapter_id else 0)
            context += s.num_tokens
        adapters = {s.adapter_id for s in plan.seqs if s.adapter_id}
        return self.cost.step_s(prefill=prefill, decode=decode, context_tokens=context,
                                distinct_ranks=[self._ranks.get(a, 0) for a in adapters])

    def _run(self, plan: StepPlan) -> torch.Tensor:
        now = self.clock()
        dt = self.step_seconds(plan)
        start = now
        if self._busy_until is not None and 0 <= now - self._busy_until <= self.CATCH_UP_S:
            start = self._busy_until
        end = start + dt
        if end > now:
            self.sleep(end - now)
        after = self.clock()
        self.late_s += max(0.0, after - end)
        self._busy_until = max(end, after)
        self.steps += 1
        self.modelled_s += dt
        elapsed_ms = (after - now) * 1000.0
        logits = torch.full((len(plan.seqs), len(SIM_VOCAB)), -1e4)
        target = SIM_VOCAB[PLACEHOLDER]
        for i, s in enumerate(plan.seqs):
            q = s.num_tokens - s.num_computed
            s.num_computed += q
            n = s.sim_output_tokens
            logits[i, SIM_EOS if n is not None and len(s.output_ids) + 1 >= n else target] = 0.0
        for s in plan.prefill:
            s.prefill_ms += elapsed_ms
            if s.prefill_started_at is None:   # for the request's prefill span
                s.prefill_started_at = now
        return logits


def sim_adapter(adapter_id: str, rank: int, modules: list[str], cost, digest: str = "") -> SimAdapter:
    """An adapter of `rank` on `modules` (default: the profile's LoRA target modules)."""
    cfg = model_config(cost)
    mods = modules or list(cost.lora_modules)
    return SimAdapter.for_model(adapter_id, rank, cfg, mods, element_bytes=cost.dtype_bytes,
                                digest=digest)
