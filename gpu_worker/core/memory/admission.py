"""Worker admission: one owner for "may this request take memory now?" (no torch).

The worker commits KV memory to a request in two steps: the worker memory pins
its adapter (parked -> ready), then the batch planner starts it (ready ->
running; KV pages are allocated lazily as it grows). Adapter installs, pins of
idle cached adapters and prefetches take pages KV could have used. All of these
ask one `ReservationLedger`, which knows the committed requests (running and
ready), the oldest request blocked waiting for adapter room, and the pool's KV
room, and answers with an `AdmissionPolicy`'s estimate of how many pages a set
of requests may hold at once before they all finish. Every answer keeps

    policy.demand_pages(committed requests) <= KV capacity,

KV capacity = pages KV holds now + pages a KV allocation could still get (free
pages and idle cached adapters' pages). Both policies' estimates bound the real
peak when every request runs to its max_tokens, so a decode never finds no page.

Policies (`--admission`):

- `reserve` (default): every request counts its whole context, prompt +
  max_tokens, from the moment it is committed.
- `slora-peak`: S-LoRA's own check (`_can_add_new_req` in S-LoRA's
  `slora/server/router/req_queue.py`): each request holds h tokens now and may
  still generate r; sorted by r, longest first, the peak is
  max_k (h_1 + .. + h_k + k * r_k), which assumes requests finish at different
  times. In pages, each h is padded by block_size - 1 tokens before dividing,
  so the bound covers the partial last page of every request. S-LoRA subtracts
  the committed adapters' memory (4 * rank slots each, counted once per
  distinct adapter) from the pool; here adapters occupy their own pages in the
  unified pool, so held and loading adapters are already outside the KV
  capacity and each counts exactly once. S-LoRA's caps on running requests and
  on prompt tokens per batch are the batch planner's `max_running` and
  `max_step_tokens`; FIFO and "stop at the first request that does not fit"
  are how the planner and the worker memory walk their queues.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Protocol

from ..sequence import Sequence

ADMISSION_NAMES = ("reserve", "slora-peak")


def pages_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class AdmissionPolicy(Protocol):
    name: str

    def demand_pages(self, seqs: Iterable[Sequence]) -> int:
        """An upper bound on the KV pages `seqs` hold at once from now until they all
        finish, if each generates its full max_tokens."""
        ...


class ReserveAdmission:
    """Prompt + max_tokens for every request, reserved as soon as it is committed."""

    name = "reserve"

    def __init__(self, block_size: int):
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size

    def demand_pages(self, seqs: Iterable[Sequence]) -> int:
        return sum(pages_for(s.max_len, self.block_size) for s in seqs)


class SLoraPeakAdmission:
    """S-LoRA's peak-of-future-use estimate (see the module docstring)."""

    name = "slora-peak"

    def __init__(self, block_size: int):
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size

    def demand_pages(self, seqs: Iterable[Sequence]) -> int:
        pad = self.block_size - 1
        # (tokens it may still add, tokens held now); held + remaining = prompt + max_tokens.
        # Written out with plain lengths: the simulator calls this several times per step.
        entries = []
        for s in seqs:
            n = len(s.prompt_ids) + len(s.output_ids)
            r = len(s.prompt_ids) + s.spec.max_tokens - n
            entries.append((r if r > 0 else 0, n + pad))
        entries.sort(reverse=True)   # longest remaining first (ties do not change the peak)
        peak = held = 0
        for k, (r, h) in enumerate(entries, 1):
            held += h
            if held + k * r > peak:
                peak = held + k * r
        return peak // self.block_size


def build_admission(name: str, block_size: int) -> AdmissionPolicy:
    if name == "reserve":
        return ReserveAdmission(block_size)
    if name == "slora-peak":
        return SLoraPeakAdmission(block_size)
    raise ValueError(f"unknown admission policy {name!r}; choose from {ADMISSION_NAMES}")


class KvRoom(Protocol):
    """The pool's KV side, as the adapter cache reports it."""

    @property
    def kv_pages(self) -> int: ...          # pages KV holds now
    def kv_available_pages(self) -> int: ...  # pages a KV allocation could still get


class ReservationLedger:
    """The committed requests and the one place admission is decided.

    The batch planner keeps its queues here (`ready`, `running`) and asks
    `may_start`; the worker memory asks `may_pin` before an adapter takes pages
    for a parked request, `block`s the oldest parked request it cannot let in
    (younger requests then leave that request's room alone), and asks
    `spare_pages` before a prefetch.
    """

    def __init__(self, room: KvRoom, policy: AdmissionPolicy):
        self.room = room
        self.policy = policy
        self.ready: deque[Sequence] = deque()   # adapter held, not started
        self.running: list[Sequence] = []
        self._blocked: tuple[Sequence, int] | None = None

    # -- the committed set (batch planner) ----------------------------------
    def add_ready(self, seq: Sequence) -> None:
        """In arrival order (`seq.order`): a request whose adapter landed late goes before
        the requests that arrived after it and became ready while it waited."""
        if not self.ready or self.ready[-1].order <= seq.order:
            self.ready.append(seq)
            return
        at = next(i for i, r in enumerate(self.ready) if r.order > seq.order)
        self.ready.insert(at, seq)

    def start(self, seq: Sequence) -> None:
        """`seq` (the head of `ready`) starts running."""
        if not self.ready or self.ready[0] is not seq:
            raise ValueError(f"request {seq.request_id!r} is not the first ready request")
        self.ready.popleft()
        self.running.append(seq)

    def remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.ready:
            self.ready.remove(seq)

    # -- questions ----------------------------------------------------------
    def capacity(self) -> int:
        """Pages KV may use in all: what it holds plus what it could still get."""
        return self.room.kv_pages + self.room.kv_available_pages()

    def may_start(self, seq: Sequence, ignore_blocked: bool = False) -> bool:
        """May ready request `seq` start now, beside everything running? A request younger
        than the blocked one also leaves the blocked one its adapter pages and context."""
        committed = self.running + [seq]
        extra = 0
        if self._blocked is not None and not ignore_blocked:
            first, adapter_pages = self._blocked
            if seq.order > first.order:
                committed.append(first)
                extra = adapter_pages
        return self.policy.demand_pages(committed) <= self.capacity() - extra

    def may_pin(self, first: Sequence, extra_pages: int) -> bool:
        """May `extra_pages` of adapter pages be taken from KV to let `first` (a parked
        request) in? Everything running, every ready request committed before it, and
        `first` itself must still fit."""
        committed = self.running + [s for s in self.ready if s.order < first.order] + [first]
        return self.policy.demand_pages(committed) <= self.capacity() - extra_pages

    def spare_pages(self) -> int:
        """KV capacity no committed or blocked request may need: what a prefetch may take."""
        committed = self.running + list(self.ready)
        extra = 0
        if self._blocked is not None:
            first, extra = self._blocked
            committed.append(first)
        return self.capacity() - extra - self.policy.demand_pages(committed)

    # -- the blocked request (worker memory) --------------------------------
    def block(self, first: Sequence, adapter_pages: int) -> None:
        """`first` is the oldest parked request and cannot get `adapter_pages` now."""
        self._blocked = (first, adapter_pages)

    def unblock(self) -> None:
        self._blocked = None

    @property
    def blocked(self) -> tuple[Sequence, int] | None:
        """(request, adapter pages it waits for), or None."""
        return self._blocked
