"""When the scheduler sends each worker its prefetch hint (pure; injected clock).

The admission policy names, per worker, the adapters its queued requests will need
next (`AdmissionPolicy.prefetch_hints`). The service asks after every scheduling round
and sends a `PrefetchHint` down the worker's stream only when the list changed since
the last one that worker got, and at most once per `min_interval_s`: a change inside
the interval is held back and sent when the interval ends (`offer` says how long to
wait), so a burst of arrivals costs one message, not one per request. A worker whose
stream reconnected has forgotten its hint: `forget` it and the next offer goes out.

    throttle = HintThrottle(HintConfig(limit=8, min_interval_s=0.1), clock)
    send, retry_in = throttle.offer("worker0", policy.prefetch_hints("worker0", 8))
    # send: the list to send now, or None; retry_in: seconds until a held-back
    # change may go (offer again then), or None
"""
from __future__ import annotations

from dataclasses import dataclass

from .types import Clock


@dataclass(frozen=True)
class HintConfig:
    limit: int = 8                  # adapters per hint (0: send no hints)
    min_interval_s: float = 0.1     # at most one hint per worker per interval

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"hint limit must be >= 0, got {self.limit}")
        if not self.min_interval_s >= 0:
            raise ValueError(f"min_interval_s must be >= 0, got {self.min_interval_s}")


class HintThrottle:
    def __init__(self, config: HintConfig, clock: Clock):
        self.config = config
        self.clock = clock
        self._sent: dict[str, tuple[str, ...]] = {}    # worker id -> last hint it got
        self._sent_at: dict[str, float] = {}
        self.messages = 0                              # hints sent (a metric)

    @property
    def enabled(self) -> bool:
        return self.config.limit > 0

    def offer(self, worker_id: str, hints: list[str]) -> tuple[list[str] | None, float | None]:
        """The policy's current hint for `worker_id`. Returns (the list to send now or None,
        seconds until a held-back change may be sent or None)."""
        if not self.enabled:
            return None, None
        want = tuple(dict.fromkeys(hints))[: self.config.limit]
        if self._sent.get(worker_id, ()) == want:   # unchanged (a new worker holds no hint)
            return None, None
        now = self.clock()
        last = self._sent_at.get(worker_id)
        if last is not None and now - last < self.config.min_interval_s:
            return None, self.config.min_interval_s - (now - last)
        self._sent[worker_id] = want
        self._sent_at[worker_id] = now
        self.messages += 1
        return list(want), None

    def forget(self, worker_id: str) -> None:
        """The worker's stream was re-established: it holds no hint now."""
        self._sent.pop(worker_id, None)
        self._sent_at.pop(worker_id, None)

    def last_sent(self, worker_id: str) -> list[str] | None:
        s = self._sent.get(worker_id)
        return list(s) if s is not None else None
