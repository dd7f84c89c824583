"""The engine loop: one step = plan the batch, run the model, post-process.

Single-threaded by design: the worker service drives it from one thread.
Requests whose adapter is not resident wait in the worker memory until the
service hands over the adapter's weights (`install`).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from gpu_worker.lora.backend import BACKENDS, LoraRunner

from .batch_planner import BatchPlanner, StepPlan
from .detokenizer import StopChecker
from .kv_cache import PagedKVCache
from .memory.admission import ADMISSION_NAMES, build_admission
from .memory.policy import CacheConfig
from .memory.prefetch import ArrivalHistogramPrefetcher, PrefetcherConfig
from .model import ForwardBatch, LlamaModel
from .profiling import LORA, SAMPLING, scope
from .sampling import sample
from .sequence import Finish, Sequence
from .unified_pool import StagedAdapter, UnifiedPool
from .worker_memory import MemoryEvents, WorkerMemory


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: int = 256
    max_running: int = 32
    max_step_tokens: int = 2048
    max_context: int = 2048
    cache: CacheConfig = field(default_factory=CacheConfig)
    # the optional histogram-based predictive prefetcher (issue #3); None = off
    prefetch: PrefetcherConfig | None = None
    # when a request may take memory: "reserve" (prompt + max_tokens up front) or
    # "slora-peak" (S-LoRA's peak estimate); see memory/admission.py
    admission: str = "reserve"
    # LoRA compute: auto (triton on CUDA, torch elsewhere) | torch | triton (lora/backend.py)
    lora_backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("block_size", "num_blocks", "max_running", "max_step_tokens", "max_context"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_step_tokens < self.max_running:
            raise ValueError("max_step_tokens must be >= max_running: every running request "
                             "decodes one token per step")
        if self.admission not in ADMISSION_NAMES:
            raise ValueError(f"unknown admission policy {self.admission!r}; choose from "
                             f"{ADMISSION_NAMES}")
        if self.lora_backend not in BACKENDS:
            raise ValueError(f"unknown lora_backend {self.lora_backend!r}; choose from "
                             f"{', '.join(BACKENDS)}")


@dataclass
class EngineEvent:
    seq: Sequence
    token_ids: list[int]
    text: str
    finish: Finish | None
    first: bool
    # set when this request alone failed (its sampling or stop check raised); it is retired
    # and the rest of the batch carries on
    error: Exception | None = None


class Engine:
    def __init__(self, model: LlamaModel, tokenizer, cfg: EngineConfig,
                 clock: Callable[[], float] = time.monotonic):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.clock = clock
        self.eos_ids = set(model.config.eos_token_ids)
        self.pool = UnifiedPool(model.config, cfg.num_blocks, cfg.block_size, model.device, model.dtype)
        if model.device.type == "cuda":
            self.pool.copy_stream = torch.cuda.Stream()
        prefetcher = ArrivalHistogramPrefetcher(cfg.prefetch, clock) if cfg.prefetch else None
        self.memory = WorkerMemory(self.pool, cfg.cache, clock, prefetcher=prefetcher,
                                   admission=build_admission(cfg.admission, cfg.block_size))
        self.kv = PagedKVCache(model.config, cfg.num_blocks, cfg.block_size, device=model.device,
                               dtype=model.dtype, storage=self.pool.storage)
        self.lora = LoraRunner(cfg.lora_backend, self.pool.storage, self.pool.geometry.row_width,
                               model.config, cfg.max_running, cfg.max_step_tokens)
        self.planner = BatchPlanner(self.memory, self.memory.ledger, cfg.block_size,
                                    cfg.max_running, cfg.max_step_tokens)
        self._order = itertools.count()
        self._by_id: dict[str, Sequence] = {}
        self._to_fetch: list[str] = []   # adapters the caller must fetch and `install`

    # -- requests ---------------------------------------------------------
    def add(self, seq: Sequence) -> list[str]:
        """Queue a request; returns adapter ids the caller must fetch and `install`."""
        if not seq.prompt_ids:
            raise ValueError("prompt must not be empty")
        if len(seq.prompt_ids) >= self.cfg.max_context:
            raise ValueError(f"prompt has {len(seq.prompt_ids)} tokens; the context holds "
                             f"{self.cfg.max_context}")
        # never run past the context: the rest of max_tokens cannot be generated
        seq.spec.max_tokens = min(seq.spec.max_tokens, self.cfg.max_context - len(seq.prompt_ids))
        seq.spec.min_tokens = min(seq.spec.min_tokens, seq.spec.max_tokens)
        if seq.spec.seed is not None:
            seq.generator = torch.Generator(device=self.model.device).manual_seed(seq.spec.seed)
        seq.stop_checker = StopChecker(self.tokenizer, seq.spec.stop)
        seq.order = next(self._order)
        self._by_id[seq.request_id] = seq
        self._take(self.memory.admit(seq))
        return self.take_fetches()

    def take_fetches(self) -> list[str]:
        """Adapters to fetch: ones waiting requests need that are not resident (also after
        evictions), then the predictive prefetcher's guesses when it is on."""
        out, self._to_fetch = self._to_fetch, []
        return out + [a for a in self.memory.prefetch_candidates() if a not in out]

    def hint(self, adapter_ids: list[str]) -> list[str]:
        """The scheduler's queues will want these adapters next (most urgent first); returns
        the ones the caller should fetch and `install` (prefetched into free or idle memory)."""
        return self.memory.hint(adapter_ids)

    def install(self, staged: StagedAdapter) -> None:
        """An adapter's weights arrived; its waiting requests become runnable once it fits.
        Raises AdapterTooLargeError when it never can (then call `adapter_failed`)."""
        self._take(self.memory.staged(staged))

    def adapter_failed(self, adapter_id: str) -> list[Sequence]:
        """The adapter could not be fetched: drop (and return) the requests waiting for it."""
        seqs = self.memory.fetch_failed(adapter_id)
        for s in seqs:
            self._by_id.pop(s.request_id, None)
        return seqs

    def _take(self, ev: MemoryEvents) -> None:
        for s in ev.ready:
            self.planner.add(s)
        self._to_fetch += [a for a in ev.need_fetch if a not in self._to_fetch]

    def abort(self, request_id: str) -> Sequence | None:
        seq = self._by_id.get(request_id)
        if seq is None:
            return None
        seq.finish = Finish.CANCELLED
        self._retire(seq)
        return seq

    def wakeup_in(self) -> float | None:
        """Seconds until something lands that no command will announce (a modelled adapter
        copy of a --sim-profile engine); None: nothing known."""
        return None

    def has_work(self) -> bool:
        return bool(self.planner.running or self.planner.waiting or self.memory.copying())

    def idle(self) -> bool:
        return not self._by_id

    @property
    def num_running(self) -> int:
        return len(self.planner.running)

    @property
    def num_waiting(self) -> int:
        return len(self.planner.waiting) + len(self.memory.parked())

    # -- the loop ---------------------------------------------------------
    def step(self) -> list[EngineEvent]:
        self._take(self.memory.poll())  # adapters whose copy into the pool has landed
        plan = self.planner.plan()
        if not plan and self.planner.waiting and not self.planner.running:
            # safety net: with nothing running no pages will free up, so room held back for
            # a waiting adapter must not keep ready requests from running
            self._take(self.memory.retry())
            plan = self.planner.plan(ignore_held=True)
        if not plan:
            return []
        logits = self._run(plan)
        return self._postprocess(plan, logits)

    def _run(self, plan: StepPlan) -> torch.Tensor:
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        qlens, clens, tables, adapters = [], [], [], []
        bs = self.cfg.block_size
        for s, n in zip(plan.seqs, plan.query_lens):
            start, n_prompt = s.num_computed, len(s.prompt_ids)
            if start >= n_prompt:   # decoding: only the tokens not in the cache yet
                toks = s.output_ids[start - n_prompt:start - n_prompt + n]
            else:                   # the next chunk of the prompt
                toks = s.prompt_ids[start:start + n]
            end = start + len(toks)
            ids += toks
            pos += range(start, end)
            table = s.block_table
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            qlens.append(len(toks))
            clens.append(end)
            tables.append(s.block_table)
            adapters.append(self.memory.get(s.adapter_id) if s.adapter_id else None)
        dev = self.model.device
        batch = ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            positions=torch.tensor(pos, dtype=torch.long, device=dev),
            query_lens=qlens, context_lens=clens, block_tables=tables,
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev))
        with scope(LORA):
            lora = self.lora.step(adapters, qlens)
        t0 = self.clock()
        logits = self.model.forward(batch, self.kv, lora)
        elapsed_ms = (self.clock() - t0) * 1000.0
        for s in plan.prefill:
            s.prefill_ms += elapsed_ms
            if s.prefill_started_at is None:
                s.prefill_started_at = t0
        for s, q in zip(plan.seqs, qlens):
            s.num_computed += q
        return logits

    def _mask_eos(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        """Requests short of their min_tokens cannot sample an end-of-sequence token."""
        rows = [i for i, s in enumerate(seqs)
                if not s.spec.ignore_eos and len(s.output_ids) < s.spec.min_tokens]
        if not rows or not self.eos_ids:
            return logits
        dev = logits.device
        eos = torch.tensor(sorted(self.eos_ids), device=dev)
        return logits.index_put((torch.tensor(rows, device=dev)[:, None], eos[None, :]),
                                torch.tensor(float("-inf"), device=dev))

    def _postprocess(self, plan: StepPlan, logits: torch.Tensor) -> list[EngineEvent]:
        seqs = plan.seqs
        # a prompt chunk that leaves part of its prompt for later steps samples nothing yet
        rows = [i for i, s in enumerate(seqs) if s.num_computed >= len(s.prompt_ids)]
        if len(rows) < len(seqs):
            if not rows:
                return []
            seqs = [seqs[i] for i in rows]
            logits = logits[torch.tensor(rows, device=logits.device)]
        failures: dict[int, Exception] = {}
        with scope(SAMPLING):
            logits = self._mask_eos(seqs, logits)
            tokens = sample(logits, [s.spec.temperature for s in seqs],
                            [s.spec.top_p for s in seqs], [s.generator for s in seqs],
                            failures).tolist()
        now = self.clock()
        events: list[EngineEvent] = []
        for i, (s, tok) in enumerate(zip(seqs, tokens)):
            first = s.first_token_at is None
            if first:
                s.first_token_at = now
            try:
                if i in failures:
                    raise failures[i]
                events.append(self._advance(s, tok, first))
            except Exception as e:  # this request fails alone; the batch goes on
                s.finish = Finish.CANCELLED
                events.append(EngineEvent(s, [], "", None, first, error=e))
            if s.finish is not None:
                self._retire(s)
        return events

    def _advance(self, s: Sequence, tok: int, first: bool) -> EngineEvent:
        new_ids: list[int] = []
        if tok in self.eos_ids and not s.spec.ignore_eos:
            s.finish = Finish.EOS
            text = s.stop_checker.flush()
        else:
            s.output_ids.append(tok)
            new_ids = [tok]
            text, hit = s.stop_checker.update(s.output_ids,
                                              check=len(s.output_ids) >= s.spec.min_tokens)
            if hit:
                s.finish = Finish.STOP_STRING
            elif len(s.output_ids) >= s.spec.max_tokens:
                s.finish = Finish.LENGTH
                text += s.stop_checker.flush()
        return EngineEvent(s, new_ids, text, s.finish, first)

    def _retire(self, seq: Sequence) -> None:
        self.planner.remove(seq)
        self._by_id.pop(seq.request_id, None)
        self.memory.release(seq)
        self._take(self.memory.retry())  # freed pages may let a waiting adapter in
