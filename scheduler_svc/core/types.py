"""Types shared by every admission policy and the dispatcher.

The service layer turns gRPC requests into `PendingRequest`s and worker state
events into `WorkerView`s; policies only ever see these plain objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

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
    cached_adapters: set[str] = field(default_factory=set)
    loading_adapters: set[str] = field(default_factory=set)
    evictable_bytes: int = 0        # idle cached adapters' bytes
    free_bytes: int = 0             # pool bytes free right now
    block_tokens: int = 16          # tokens per KV page
    page_bytes: int = 0             # bytes per page (adapter bytes -> tokens)
    connected: bool = True


@dataclass(frozen=True)
class Admission:
    request: PendingRequest
    worker_id: str


class AdmissionPolicy(Protocol):
    """Decides which queued requests start now, and where.

    Non-preemptive: once admitted, a request runs to completion, except that a
    policy may squash one: optional methods the service calls when present are
    `squashes() -> list[str]` (request ids to stop and hand back through
    `requeue`), `requeue(req)` (a squashed request or one whose worker was lost;
    default: `enqueue`) and `metrics() -> dict[str, float]`.
    """

    name: str

    def enqueue(self, req: PendingRequest) -> None: ...

    def cancel(self, request_id: str) -> bool:
        """Drop a queued request; False when it is not queued (already admitted)."""
        ...

    def schedule(self, workers: list[WorkerView]) -> list[Admission]:
        """One scheduling round. Must not admit more than a worker's free tokens/slots."""
        ...

    def on_finish(self, req: PendingRequest, output_tokens: int) -> None:
        """A previously admitted request finished (any reason)."""
        ...

    def queued(self) -> int: ...
