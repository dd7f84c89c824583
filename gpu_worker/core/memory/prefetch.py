"""Optional predictive prefetcher (off by default): per-adapter inter-arrival histograms.

For each adapter we keep a histogram of the gaps between its request arrivals
(`num_bins` bins of `bin_s` seconds; the last bin collects every longer gap).
Given the time since its last arrival (`age`), the chance that its next request
comes within `horizon_s` is estimated as

    P = (gaps in bins ending after age and starting before age + horizon)
        / (gaps in bins ending after age)

with the overflow bin counted only in the denominator (we do not know where in
it a long gap ended). Adapters with at least `min_samples` gaps and
P >= `threshold` are suggested, likeliest first; the engine loads them into
free pages only (`reserve_for_load(..., may_evict=False)`), so a wrong guess
never pushes out a cached adapter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Collection


@dataclass(frozen=True)
class PrefetcherConfig:
    bin_s: float = 1.0
    num_bins: int = 60
    horizon_s: float = 2.0
    threshold: float = 0.5
    min_samples: int = 3

    def __post_init__(self) -> None:
        for name in ("bin_s", "horizon_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be positive, got {v}")
        if self.num_bins < 2:
            raise ValueError("num_bins must be >= 2 (the last bin is the overflow bin)")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if self.min_samples < 1:
            raise ValueError("min_samples must be >= 1")


class ArrivalHistogramPrefetcher:
    def __init__(self, config: PrefetcherConfig, clock: Callable[[], float]):
        self.config = config
        self.clock = clock
        self._hist: dict[str, list[int]] = {}
        self._last: dict[str, float] = {}

    def observe(self, adapter_id: str) -> None:
        """A request for `adapter_id` arrived now."""
        now = self.clock()
        last = self._last.get(adapter_id)
        self._last[adapter_id] = now
        if last is None:
            return
        cfg = self.config
        b = min(int(max(0.0, now - last) / cfg.bin_s), cfg.num_bins - 1)
        self._hist.setdefault(adapter_id, [0] * cfg.num_bins)[b] += 1

    def probability(self, adapter_id: str) -> float:
        hist = self._hist.get(adapter_id)
        if hist is None or sum(hist) < self.config.min_samples:
            return 0.0
        cfg = self.config
        age = self.clock() - self._last[adapter_id]
        alive = within = 0
        for i, n in enumerate(hist):
            start, end = i * cfg.bin_s, (i + 1) * cfg.bin_s
            overflow = i == cfg.num_bins - 1
            if overflow or end > age:
                alive += n
                if not overflow and start < age + cfg.horizon_s:
                    within += n
        return within / alive if alive else 0.0

    def predict(self, exclude: Collection[str] = ()) -> list[str]:
        """Adapters likely to be requested within the horizon, likeliest first."""
        probs = [(self.probability(a), a) for a in self._hist if a not in exclude]
        return [a for p, a in sorted(probs, key=lambda x: (-x[0], x[1])) if p >= self.config.threshold]
