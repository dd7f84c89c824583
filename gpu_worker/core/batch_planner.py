"""Which sequences run in the next engine step (the worker-local scheduler).

Running sequences decode one token each; ready sequences (adapter resident)
are prefilled in arrival order while the step's token budget and the KV
pages allow. Prefill and decode share the step (continuous batching).
Pages are allocated lazily, but a sequence only starts when the reservation
ledger (memory/admission.py) says the pages every committed request may
still need are there, so a decode never runs out of pages and nothing is
preempted. "There" counts free pages and pages of idle cached adapters, which
the cache manager evicts on demand. The ledger holds the queues (`waiting` =
its ready requests, `running`); the planner walks them FIFO and stops at the
first request that does not fit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .memory.admission import ReservationLedger, pages_for
from .sequence import Sequence


class KvPages(Protocol):
    def allocate_kv(self, owner: str, n: int) -> list[int] | None: ...
    def free_kv(self, owner: str) -> int: ...
    def kv_available_pages(self) -> int: ...


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
    def __init__(self, kv: KvPages, ledger: ReservationLedger, block_size: int, max_running: int,
                 max_step_tokens: int):
        if max_running <= 0 or max_step_tokens <= 0 or block_size <= 0:
            raise ValueError("block_size, max_running and max_step_tokens must be positive")
        self.kv = kv
        self.ledger = ledger
        self.block_size = block_size
        self.max_running = max_running
        self.max_step_tokens = max_step_tokens

    @property
    def waiting(self):
        """Ready requests (adapter held) not started yet, oldest first."""
        return self.ledger.ready

    @property
    def running(self) -> list[Sequence]:
        return self.ledger.running

    def add(self, seq: Sequence) -> None:
        self.ledger.add_ready(seq)

    def remove(self, seq: Sequence) -> None:
        self.ledger.remove(seq)
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

    def plan(self, ignore_held: bool = False) -> StepPlan:
        """`ignore_held`: start ready requests even into the room kept for the request
        blocked waiting for adapter room (the engine's safety net when nothing runs)."""
        plan = StepPlan()
        for s in self.running:
            self._grow(s, s.num_tokens)  # this step writes K/V at position num_tokens - 1
            plan.decode.append(s)
        budget = self.max_step_tokens - len(plan.decode)
        while self.waiting and len(self.running) < self.max_running:
            s = self.waiting[0]
            # the first prefill of a step always goes, so a long prompt cannot stall
            if plan.prefill and len(s.prompt_ids) > budget:
                break
            if not self.ledger.may_start(s, ignore_blocked=ignore_held):
                break
            self.ledger.start(s)
            self._grow(s, len(s.prompt_ids))
            budget -= len(s.prompt_ids)
            plan.prefill.append(s)
        return plan
