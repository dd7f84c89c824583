"""Per-queue token quotas (paper §3, M/M/1 sizing).

Each queue q gets at least

    Tok_min[q] = max(S, S * D * (1/SLO + lambda))

tokens, where S is the largest request of the queue in tokens (input + predicted
output + the adapter's pages in tokens), D its expected processing time and lambda
its arrival rate. The `max(S, ...)` floor is ours: the paper's bound can fall below
one request when D is much shorter than the SLO, and a queue whose quota is smaller
than its own requests could never admit them.

Whatever remains after the minima is split in proportion to weight[q] x the queue's
Little's-law token demand (lambda * D * mean request tokens): the paper leaves the
weights open; with the default equal weights the rest follows demand, and a weight of
0 gives a queue nothing beyond its minimum (index 0 = the queue of smallest requests).

When the minima together exceed the total (overload: no split meets every SLO), the
whole total is split in proportion to demand instead. Scaling the minima themselves
would favour the queue of small requests, whose S (its largest request: a long prompt
on a small adapter) is far above its typical request, and starve the large queue.
The scheduler still lets a queue that holds nothing admit its head (mlq.py), so no
queue is ever stuck behind its own quota.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueLoad:
    largest_tokens: int     # S
    service_s: float        # D
    arrival_rps: float      # lambda
    mean_tokens: float = 0.0

    def __post_init__(self) -> None:
        if self.largest_tokens < 0 or self.service_s < 0 or self.arrival_rps < 0 or self.mean_tokens < 0:
            raise ValueError(f"queue load values must be >= 0, got {self}")

    @property
    def demand_tokens(self) -> float:
        """Tokens the queue holds on average (Little's law)."""
        return self.arrival_rps * self.service_s * self.mean_tokens

    def min_tokens(self, slo_s: float) -> int:
        s = self.largest_tokens
        bound = s * self.service_s * (1.0 / slo_s + self.arrival_rps)
        return max(s, math.ceil(round(bound, 6)))  # round: 1200.0000000002 is 1200 tokens


def compute_quotas(loads: list[QueueLoad], total_tokens: int, slo_s: float,
                   weights: tuple[float, ...] | None = None) -> list[int]:
    """Quotas summing exactly to `total_tokens` (one per entry of `loads`)."""
    k = len(loads)
    if slo_s <= 0:
        raise ValueError(f"slo_s must be > 0, got {slo_s}")
    if total_tokens < 0:
        raise ValueError(f"total_tokens must be >= 0, got {total_tokens}")
    if k == 0:
        return []
    w = list(weights[:k]) if weights else [1.0] * k
    if len(w) < k or any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"need {k} non-negative weights with a positive sum, got {weights}")
    demand = [max(load.demand_tokens, 1.0) for load in loads]
    mins = [load.min_tokens(slo_s) for load in loads]
    if sum(mins) > total_tokens:
        base, rest, shares = [0] * k, total_tokens, demand
    else:
        base, rest, shares = mins, total_tokens - sum(mins), [x * d for x, d in zip(w, demand)]
    quotas = [b + int(rest * s / sum(shares)) for b, s in zip(base, shares)]
    quotas[-1] += total_tokens - sum(quotas)  # rounding leftovers to the largest queue
    return quotas
