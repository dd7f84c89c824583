"""Eviction orderings: which idle cached adapter goes next.

An ordering only ranks candidates (idle adapters: no running request holds
them); whether anything must be evicted, and how many pages are needed, is the
cache's admission logic. Each ordering is a small pure class.

Chameleon's score (paper: F=0.45, R=0.10, S=0.45, lowest evicted first):

    score = F * frequency + R * recency + S * size

The paper leaves the normalisation open; ours puts every term in [0, 1],
relative to the candidate set being ranked:

- frequency = uses within the sliding window / the largest such count among
  the candidates (0 for all when no candidate was used within the window);
- recency   = 1 - age / the largest age among the candidates, age = now -
  last use (1 for all when every age is equal, e.g. a single candidate);
- size      = pages / the largest page count among the candidates (an
  adapter's pages are proportional to its rank, and a bigger adapter costs
  more to bring back).

Ties go to the least recently used, then to the adapter id, so the order is
deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class ScoreWeights:
    frequency: float = 0.45
    recency: float = 0.10
    size: float = 0.45

    def __post_init__(self) -> None:
        values = (self.frequency, self.recency, self.size)
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"score weights must be finite and >= 0, got {self}")
        if sum(values) <= 0:
            raise ValueError("at least one score weight must be positive")


CHAMELEON_WEIGHTS = ScoreWeights(0.45, 0.10, 0.45)
FAIR_SHARE_WEIGHTS = ScoreWeights(1 / 3, 1 / 3, 1 / 3)


@dataclass(frozen=True)
class Candidate:
    """What an ordering may look at for one idle cached adapter."""

    adapter_id: str
    pages: int
    last_use: float
    uses_in_window: int


class EvictionOrder(Protocol):
    name: str

    def order(self, candidates: Sequence[Candidate], now: float) -> list[Candidate]:
        """Candidates, the next victim first."""
        ...


def _lru_key(c: Candidate) -> tuple[float, str]:
    return (c.last_use, c.adapter_id)


class LruOrder:
    """Least recently used first."""

    name = "lru"

    def order(self, candidates: Sequence[Candidate], now: float) -> list[Candidate]:
        return sorted(candidates, key=_lru_key)


class ScoreOrder:
    """Lowest weighted frequency/recency/size score first (see the module docstring)."""

    name = "score"

    def __init__(self, weights: ScoreWeights = CHAMELEON_WEIGHTS):
        self.weights = weights

    def scores(self, candidates: Sequence[Candidate], now: float) -> dict[str, float]:
        if not candidates:
            return {}
        max_uses = max(c.uses_in_window for c in candidates)
        ages = {c.adapter_id: max(0.0, now - c.last_use) for c in candidates}
        max_age = max(ages.values())
        max_pages = max(c.pages for c in candidates)
        w = self.weights
        out: dict[str, float] = {}
        for c in candidates:
            frequency = c.uses_in_window / max_uses if max_uses > 0 else 0.0
            recency = 1.0 - ages[c.adapter_id] / max_age if max_age > 0 else 1.0
            size = c.pages / max_pages if max_pages > 0 else 0.0
            out[c.adapter_id] = w.frequency * frequency + w.recency * recency + w.size * size
        return out

    def order(self, candidates: Sequence[Candidate], now: float) -> list[Candidate]:
        s = self.scores(candidates, now)
        return sorted(candidates, key=lambda c: (s[c.adapter_id],) + _lru_key(c))
