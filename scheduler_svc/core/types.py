"""Types shared by every admission policy and the dispatcher.

The service layer turns gRPC requests into `PendingRequest`s and worker state
events into `WorkerView`s; policies only ever see these plain objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

Clock = Callable[[], float]  # seconds, monotonic


@dataclass
class PendingRequest:
    request_id: str
    adapter_id: str | None          # None: base model
    input_tokens: int
    max_tokens: int
    adapter_bytes: int = 0          # size of the adapter's weights (0 for base)
    adapter_rank: int = 0
    arrival: float = 0.0            # clock() when the scheduler received it
    # Filled by the scheduler while the request lives:
    predicted_output: int | None = None
    wrs: float | None = None        # weighted request size when last admitted (chameleon)
    queue_index: int | None = None  # the queue it was admitted from (chameleon)
    attempts: int = 0               # >0 after a squash / worker loss re-queue

    @property
    def reserved_tokens(self) -> int:
        """KV tokens the request can occupy at most (prompt + every output token)."""
        return self.input_tokens + self.max_tokens


@dataclass
class WorkerView:
    """What the scheduler knows about one worker right now."""
    worker_id: str
    total_tokens: int               # KV capacity in tokens
    free_tokens: int                # capacity not reserved by admitted requests
    running: int = 0                # admitted, unfinished requests
    max_running: int = 64           # batch slots
    # Admission window: requests admitted there that have not started yet (parked for an
    # adapter or ready), and how many the worker wants at most (0: no limit). A scheduler
    # that hands a worker more than it can start soon moves the queue into the worker's
    # FIFO, where no policy orders it (S-LoRA and the paper pick each iteration's requests
    # in the engine loop itself).
    waiting: int = 0
    max_waiting: int = 0
    cached_adapters: set[str] = field(default_factory=set)
    loading_adapters: set[str] = field(default_factory=set)
    evictable_bytes: int = 0        # idle cached adapters' bytes
    free_bytes: int = 0             # pool bytes free right now
    block_tokens: int = 16          # tokens per KV page
    page_bytes: int = 0             # bytes per page (adapter bytes -> tokens)
    connected: bool = True


@dataclass(frozen=True)
class QueueStat:
    """One admission queue, summed over workers (what GetStatus and /metrics report)."""
    index: int
    length: int                     # requests waiting in it
    quota_tokens: int
    held_tokens: int                # quota held by its running requests
    upper_wrs: float | None         # its upper WRS boundary; None for the last queue


@dataclass(frozen=True)
class Admission:
    request: PendingRequest
    worker_id: str


class AdmissionPolicy:
    """Decides which queued requests start now, and where (base class with defaults).

    Non-preemptive: once admitted, a request runs to completion, except that a policy
    may squash one: `squashes()` lists request ids it stopped (already released on its
    side); the caller hands each back through `requeue`. `requeue(req)` also takes a
    request whose worker was lost. `prefetch_hints(worker_id)` names adapters the
    requests queued for that worker will need next, most urgent first.
    """

    name: str = "policy"

    def enqueue(self, req: PendingRequest) -> None:
        raise NotImplementedError

    def requeue(self, req: PendingRequest) -> None:
        """A squashed request, or one whose worker was lost, queued again."""
        self.enqueue(req)

    def cancel(self, request_id: str) -> bool:
        """Drop a queued request; False when it is not queued (already admitted)."""
        raise NotImplementedError

    def schedule(self, workers: list[WorkerView]) -> list[Admission]:
        """One scheduling round. Must not admit more than a worker's free tokens/slots."""
        raise NotImplementedError

    def on_finish(self, req: PendingRequest, output_tokens: int) -> None:
        """A previously admitted request finished (any reason)."""

    def queued(self) -> int:
        raise NotImplementedError

    def squashes(self) -> list[str]:
        return []

    def prefetch_hints(self, worker_id: str, limit: int = 8) -> list[str]:
        return []

    def metrics(self) -> dict[str, float]:
        return {}

    def queue_status(self) -> list[QueueStat]:
        """The policy's queues; policies without queues of their own report none."""
        return []
