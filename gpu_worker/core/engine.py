"""The engine loop: one step = plan the batch, run the model, post-process.

Single-threaded by design; the worker service drives it from one thread and
feeds it sequences whose adapters are already resident.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .batch_planner import BatchPlanner, StepPlan
from .detokenizer import StopChecker
from .kv_cache import BlockAllocator, PagedKVCache
from .lora import LoraAdapter, LoraBatch
from .model import ForwardBatch, LlamaModel
from .sampling import sample
from .sequence import Finish, Sequence


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: int = 256
    max_running: int = 32
    max_step_tokens: int = 2048
    max_context: int = 2048

    def __post_init__(self) -> None:
        for name in ("block_size", "num_blocks", "max_running", "max_step_tokens", "max_context"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_step_tokens < self.max_context:
            raise ValueError("max_step_tokens must be >= max_context so any prompt can prefill")


@dataclass
class EngineEvent:
    seq: Sequence
    token_ids: list[int]
    text: str
    finish: Finish | None
    first: bool


class Engine:
    def __init__(self, model: LlamaModel, tokenizer, cfg: EngineConfig,
                 get_adapter: Callable[[str], LoraAdapter] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_finish: Callable[[Sequence], None] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.clock = clock
        self.get_adapter = get_adapter
        self.on_finish = on_finish
        self.eos_ids = set(model.config.eos_token_ids)
        self.allocator = BlockAllocator(cfg.num_blocks)
        self.kv = PagedKVCache(model.config, cfg.num_blocks, cfg.block_size,
                               device=model.device, dtype=model.dtype)
        self.planner = BatchPlanner(self.allocator, cfg.block_size, cfg.max_running,
                                    cfg.max_step_tokens)
        self._by_id: dict[str, Sequence] = {}

    # -- requests ---------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        if not seq.prompt_ids:
            raise ValueError("prompt must not be empty")
        if len(seq.prompt_ids) >= self.cfg.max_context:
            raise ValueError(f"prompt has {len(seq.prompt_ids)} tokens; the context holds "
                             f"{self.cfg.max_context}")
        # never run past the context: the rest of max_tokens cannot be generated
        seq.spec.max_tokens = min(seq.spec.max_tokens, self.cfg.max_context - len(seq.prompt_ids))
        if seq.spec.seed is not None:
            seq.generator = torch.Generator(device=self.model.device).manual_seed(seq.spec.seed)
        seq.stop_checker = StopChecker(self.tokenizer, seq.spec.stop)
        self._by_id[seq.request_id] = seq
        self.planner.add(seq)

    def abort(self, request_id: str) -> Sequence | None:
        seq = self._by_id.get(request_id)
        if seq is None:
            return None
        seq.finish = Finish.CANCELLED
        self._retire(seq)
        return seq

    def has_work(self) -> bool:
        return bool(self.planner.running or self.planner.waiting)

    @property
    def num_running(self) -> int:
        return len(self.planner.running)

    @property
    def num_waiting(self) -> int:
        return len(self.planner.waiting)

    # -- the loop ---------------------------------------------------------
    def step(self) -> list[EngineEvent]:
        plan = self.planner.plan()
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
        for s in plan.seqs:
            toks = (s.prompt_ids + s.output_ids)[s.num_computed:]
            start = s.num_computed
            ids += toks
            pos += range(start, start + len(toks))
            slots += [s.block_table[p // bs] * bs + p % bs for p in range(start, start + len(toks))]
            qlens.append(len(toks))
            clens.append(start + len(toks))
            tables.append(s.block_table)
            adapters.append(self.get_adapter(s.adapter_id) if s.adapter_id and self.get_adapter
                            else None)
        dev = self.model.device
        batch = ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            positions=torch.tensor(pos, dtype=torch.long, device=dev),
            query_lens=qlens, context_lens=clens, block_tables=tables,
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev))
        lora = LoraBatch(adapters, qlens) if any(a is not None for a in adapters) else None
        t0 = self.clock()
        logits = self.model.forward(batch, self.kv, lora)
        elapsed_ms = (self.clock() - t0) * 1000.0
        for s in plan.prefill:
            s.prefill_ms += elapsed_ms
        for s, q in zip(plan.seqs, qlens):
            s.num_computed += q
        return logits

    def _postprocess(self, plan: StepPlan, logits: torch.Tensor) -> list[EngineEvent]:
        seqs = plan.seqs
        tokens = sample(logits, [s.spec.temperature for s in seqs],
                        [s.spec.top_p for s in seqs], [s.generator for s in seqs]).tolist()
        now = self.clock()
        events: list[EngineEvent] = []
        for s, tok in zip(seqs, tokens):
            first = s.first_token_at is None
            if first:
                s.first_token_at = now
            new_ids: list[int] = []
            if tok in self.eos_ids:
                s.finish = Finish.EOS
                text = s.stop_checker.flush()
            else:
                s.output_ids.append(tok)
                new_ids = [tok]
                text, hit = s.stop_checker.update(s.output_ids)
                if hit:
                    s.finish = Finish.STOP_STRING
                elif len(s.output_ids) >= s.spec.max_tokens:
                    s.finish = Finish.LENGTH
                    text += s.stop_checker.flush()
            events.append(EngineEvent(s, new_ids, text, s.finish, first))
            if s.finish is not None:
                self._retire(s)
        return events

    def _retire(self, seq: Sequence) -> None:
        self.planner.remove(seq)
        self._by_id.pop(seq.request_id, None)
        if self.on_finish is not None:
            self.on_finish(seq)
