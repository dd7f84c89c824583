"""Which sequences run in the next engine step (the worker-local scheduler).

Every step has a token budget (`max_step_tokens`). Running sequences that are
decoding take one token each, first and always; running sequences whose prompt
is only partly in the cache continue their prefill with the next chunk of it;
then ready sequences (adapter resident) start in arrival order while budget,
slots and the KV reservation allow. A prompt longer than what is left of the
budget is prefilled in chunks over several steps (chunked prefill), so joining
requests never stall the running ones for more than one budget's worth of
prefill. Prefill and decode share the step (continuous batching).
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
    prefill_tokens: list[int] = field(default_factory=list)  # prompt tokens of each prefill now

    @property
    def seqs(self) -> list[Sequence]:
        return self.prefill + self.decode

    @property
    def query_lens(self) -> list[int]:
        """Tokens of each of `seqs` in this step."""
        return self.prefill_tokens + [1] * len(self.decode)

    def add_prefill(self, seq: Sequence, tokens: int) -> None:
        self.prefill.append(seq)
        self.prefill_tokens.append(tokens)

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

    @staticmethod
    def decoding(seq: Sequence) -> bool:
        """Its whole prompt is in the cache (a sampled token exists or is due)."""
        return bool(seq.output_ids) or seq.num_computed >= len(seq.prompt_ids)

    def plan(self, ignore_held: bool = False) -> StepPlan:
        """`ignore_held`: start ready requests even into the room kept for the request
        blocked waiting for adapter room (the engine's safety net when nothing runs)."""
        plan = StepPlan()
        chunked = []
        for s in self.running:
            if self.decoding(s):
                self._grow(s, s.num_tokens)  # this step writes K/V at position num_tokens - 1
                plan.decode.append(s)
            else:
                chunked.append(s)
        budget = self.max_step_tokens - len(plan.decode)
        for s in chunked:   # prefills under way continue, oldest first
            if budget <= 0:
                return plan
            n = min(len(s.prompt_ids) - s.num_computed, budget)
            self._grow(s, s.num_computed + n)
            plan.add_prefill(s, n)
            budget -= n
        while budget > 0 and self.waiting and len(self.running) < self.max_running:
            s = self.waiting[0]
            if not self.ledger.may_start(s, ignore_blocked=ignore_held):
                break
            self.ledger.start(s)
            n = min(len(s.prompt_ids) - s.num_computed, budget)
            self._grow(s, s.num_computed + n)
            plan.add_prefill(s, n)
            budget -= n
        return plan
