"""Cache policies chosen at worker start (`--cache-policy`).

- `slora`: no caching. An adapter's pages are freed as soon as no running
  request holds it and no queued request wants it; queued requests' adapters
  are prefetched (the engine does that through the same cache calls).
- `lru`: vLLM-style. `lru_slots` adapter slots of `lru_slot_pages` pages each
  (the max-rank size) are reserved out of the pool whether used or not; the KV
  cache can never use them; a full set of slots evicts least recently used.
- `chameleon`: adapters stay cached in whatever pages the KV cache leaves idle;
  evicted by the weighted frequency/recency/size score (eviction.py).
- `chameleon-lru`: the same idle-memory cache, least recently used first.
- `chameleon-fairshare`: the idle-memory cache with equal weights 1/3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .eviction import (CHAMELEON_WEIGHTS, FAIR_SHARE_WEIGHTS, EvictionOrder, LruOrder,
                       ScoreOrder, ScoreWeights)
from .placement import FixedSlots, Placement, SharedPages

POLICY_NAMES = ("slora", "lru", "chameleon", "chameleon-lru", "chameleon-fairshare")


@dataclass(frozen=True)
class CacheConfig:
    policy: str = "chameleon"
    # None: the policy's own weights; only `chameleon` accepts other weights
    weights: ScoreWeights | None = None
    frequency_window_s: float = 60.0
    lru_slots: int = 0
    lru_slot_pages: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ValueError(f"unknown cache policy {self.policy!r}; choose from {POLICY_NAMES}")
        if not (math.isfinite(self.frequency_window_s) and self.frequency_window_s > 0):
            raise ValueError("frequency_window_s must be positive")
        if self.weights is not None and self.policy != "chameleon":
            raise ValueError(f"policy {self.policy!r} has fixed weights; only 'chameleon' takes weights")
        if self.policy == "lru":
            if self.lru_slots <= 0 or self.lru_slot_pages <= 0:
                raise ValueError("policy 'lru' needs lru_slots > 0 and lru_slot_pages > 0")
        elif self.lru_slots or self.lru_slot_pages:
            raise ValueError("lru_slots/lru_slot_pages only apply to policy 'lru'")


@dataclass(frozen=True)
class CachePolicy:
    """A cache policy = an eviction order + a placement + whether idle adapters stay."""
    name: str
    order: EvictionOrder
    # False: S-LoRA drops an adapter once nobody (running, queued or hinted) wants it
    keep_idle: bool
    placement: Placement = field(default_factory=SharedPages)

    @property
    def reserved_pages(self) -> int:
        return self.placement.reserved_pages


def build_policy(cfg: CacheConfig) -> CachePolicy:
    if cfg.policy == "slora":
        return CachePolicy("slora", LruOrder(), keep_idle=False)
    if cfg.policy == "lru":
        return CachePolicy("lru", LruOrder(), keep_idle=True,
                           placement=FixedSlots(cfg.lru_slots, cfg.lru_slot_pages))
    if cfg.policy == "chameleon":
        return CachePolicy("chameleon", ScoreOrder(cfg.weights or CHAMELEON_WEIGHTS), keep_idle=True)
    if cfg.policy == "chameleon-lru":
        return CachePolicy("chameleon-lru", LruOrder(), keep_idle=True)
    return CachePolicy("chameleon-fairshare", ScoreOrder(FAIR_SHARE_WEIGHTS), keep_idle=True)
