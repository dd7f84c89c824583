"""Weighted request size (WRS), the quantity Chameleon's queues are built on.

    WRS = (0.4 * In / MaxIn + 0.6 * Out / MaxOut) * AdapterSize / MaxAdapterSize

Out is the *predicted* output length. The maxima are taken over a sliding time
window so that the scale follows the workload instead of the all-time extreme.

Base-model requests (no adapter) have no adapter size. Multiplying by zero would
call every base request "size 0" however long it is, so instead a base request is
weighted like the smallest adapter seen in the window (it is at least as cheap as
the cheapest adapter request). When no adapter at all has been seen in the window
the adapter factor is 1, i.e. WRS degrades to the length term alone.
"""
from __future__ import annotations

from collections import deque

IN_WEIGHT = 0.4
OUT_WEIGHT = 0.6


class SlidingExtreme:
    """Maximum (or minimum) of the values pushed within the last `window_s` seconds.

    Monotonic deque: amortised O(1) per push and query. When every value has aged
    out, the last extreme is kept so that the scale never collapses to nothing.
    """

    def __init__(self, window_s: float, largest: bool = True):
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self._window_s = window_s
        self._largest = largest
        self._items: deque[tuple[float, float]] = deque()  # (time, value), extremes first
        self._last: float | None = None

    def _dominates(self, a: float, b: float) -> bool:
        return a >= b if self._largest else a <= b

    def push(self, now: float, value: float) -> None:
        while self._items and self._dominates(value, self._items[-1][1]):
            self._items.pop()
        self._items.append((now, value))
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._items and self._items[0][0] < now - self._window_s:
            if len(self._items) == 1:
                self._last = self._items[0][1]  # the window's extreme just before it emptied
            self._items.popleft()

    def value(self, now: float) -> float | None:
        self._expire(now)
        return self._items[0][1] if self._items else self._last


class WrsScale:
    """Sliding maxima of input length, predicted output length and adapter size."""

    def __init__(self, window_s: float = 600.0):
        self._max_in = SlidingExtreme(window_s)
        self._max_out = SlidingExtreme(window_s)
        self._max_adapter = SlidingExtreme(window_s)
        self._min_adapter = SlidingExtreme(window_s, largest=False)

    def observe(self, now: float, input_tokens: int, output_tokens: int, adapter_bytes: int) -> None:
        self._max_in.push(now, max(1, input_tokens))
        self._max_out.push(now, max(1, output_tokens))
        if adapter_bytes > 0:
            self._max_adapter.push(now, adapter_bytes)
            self._min_adapter.push(now, adapter_bytes)

    def wrs(self, now: float, input_tokens: int, output_tokens: int, adapter_bytes: int) -> float:
        max_in = self._max_in.value(now) or 1.0
        max_out = self._max_out.value(now) or 1.0
        # Values above the window's maximum (a request older than the window) are clipped
        # so that WRS stays within [0, 1].
        length = (IN_WEIGHT * min(1.0, input_tokens / max_in)
                  + OUT_WEIGHT * min(1.0, output_tokens / max_out))
        max_adapter = self._max_adapter.value(now)
        if max_adapter is None:
            return length
        size = adapter_bytes if adapter_bytes > 0 else (self._min_adapter.value(now) or max_adapter)
        return length * min(1.0, size / max_adapter)
