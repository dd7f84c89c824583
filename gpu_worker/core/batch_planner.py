"""Which sequences run in the next engine step (the worker-local scheduler).

Running sequences decode one token each; ready sequences (adapter resident)
are prefilled in arrival order while the step's token budget and the KV
pages allow. Prefill and decode share the step (continuous batching).
Pages are allocated lazily, but a sequence only starts when the pages its
whole reservation (prompt + max_tokens) may still need are available, so a
decode never runs out of pages and nothing is preempted. "Available" counts
free pages and pages of idle cached adapters, which the cache manager evicts
on demand.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

from .sequence import Sequence


class KvPages(Protocol):
    def allocate_kv(self, owner: str, n: int) -> list[int] | None: ...
    def free_kv(self, owner: str) -> int: ...
    def kv_available_pages(self) -> int: ...


def pages_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


@dataclass
class StepPlan:
    prefill: list[Sequence] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)

    @property
    def seqs(self) -> list[Sequence]:
        return self.prefill + self.decode

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)


class BatchPlanner:
    def __init__(self, kv: KvPages, block_size: int, max_running: int, max_step_tokens: int):
        if max_running <= 0 or max_step_tokens <= 0 or block_size <= 0:
            raise ValueError("block_size, max_running and max_step_tokens must be positive")
        self.kv = kv
        self.block_size = block_size
        self.max_running = max_running
        self.max_step_tokens = max_step_tokens
        # (pages, order): room the oldest request waiting for adapter room needs, kept from
        # requests admitted after it; set by the engine
        self.held_back: Callable[[], tuple[int, int | None]] = lambda: (0, None)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.block_table:
            self.kv.free_kv(seq.request_id)
            seq.block_table = []

    def _grow(self, seq: Sequence, tokens: int) -> None:
        need = pages_for(tokens, self.block_size) - len(seq.block_table)
        if need > 0:
            pages = self.kv.allocate_kv(seq.request_id, need)
            if pages is None:  # admission keeps room for every reservation, so this is a bug
                raise MemoryError(f"no KV page for running request {seq.request_id}")
            seq.block_table += pages

    def reserved_pages(self) -> int:
        """Pages running sequences may still allocate before they finish."""
        return sum(max(0, pages_for(s.max_len, self.block_size) - len(s.block_table))
                   for s in self.running)

    def waiting_pages(self, before: int | None = None) -> int:
        """Pages the ready (not yet running) requests need for their whole context; only
        those admitted before `before` (by `Sequence.order`) when it is given."""
        return self.pages_for(s for s in self.waiting if before is None or s.order < before)

    def pages_for(self, seqs) -> int:
        return sum(pages_for(s.max_len, self.block_size) for s in seqs)

    def plan(self, ignore_held: bool = False) -> StepPlan:
        plan = StepPlan()
        for s in self.running:
            self._grow(s, s.num_tokens)  # this step writes K/V at position num_tokens - 1
            plan.decode.append(s)
        budget = self.max_step_tokens - len(plan.decode)
        spare = self.kv.kv_available_pages() - self.reserved_pages()
        held, order = (0, None) if ignore_held else self.held_back()
        while self.waiting and len(self.running) < self.max_running:
            s = self.waiting[0]
            whole = pages_for(s.max_len, self.block_size)
            # a request younger than one waiting for adapter room leaves that room alone
            younger = order is not None and s.order > order
            # the first prefill of a step always goes, so a long prompt cannot stall
            if whole > spare - (held if younger else 0) or (plan.prefill and len(s.prompt_ids) > budget):
                break
            self.waiting.popleft()
            self._grow(s, len(s.prompt_ids))
            spare -= whole
            budget -= len(s.prompt_ids)
            self.running.append(s)
            plan.prefill.append(s)
        return plan
