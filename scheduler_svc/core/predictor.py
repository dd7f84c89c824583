"""Output-length prediction and expected processing time.

The paper predicts output length with a BERT proxy model (~80% accurate) and
shows 80% accuracy schedules as well as an oracle. `OutputPredictor` is the seam
for such a learned model; the default `QuantileOutputPredictor` needs no model:
an adapter usually serves one task, so its recent output lengths predict the next.

Accuracy (exported as metrics) is measured two ways over the last
`accuracy_window` finished requests:
  * bucket accuracy: predicted and actual length fall in the same bucket of
    `buckets` (the paper's proxy model is a bucket classifier);
  * within-tolerance: |actual - predicted| <= tolerance * max(predicted, 1).
"""
from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .types import PendingRequest

BASE_KEY = ""  # history key of base-model requests


class OutputPredictor(Protocol):
    def predict(self, req: PendingRequest) -> int:
        """Expected output tokens, at least 1 and at most req.max_tokens."""
        ...

    def observe(self, req: PendingRequest, output_tokens: int) -> None:
        """A request finished with `output_tokens`; req.predicted_output holds what was predicted."""
        ...

    def accuracy(self) -> dict[str, float]: ...


@dataclass
class PredictorConfig:
    quantile: float = 0.8           # a high quantile: under-prediction costs more than over-prediction
    history: int = 64               # output lengths kept per adapter
    global_history: int = 512
    min_samples: int = 4            # per adapter, before its own history is trusted
    default_output: int = 128       # with no history at all
    buckets: tuple[int, ...] = (32, 128, 512)
    tolerance: float = 0.5
    accuracy_window: int = 1000

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {self.quantile}")
        if self.history < 1 or self.global_history < 1 or self.min_samples < 1:
            raise ValueError("history, global_history and min_samples must be >= 1")
        if self.default_output < 1:
            raise ValueError(f"default_output must be >= 1, got {self.default_output}")
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"buckets must be strictly increasing, got {self.buckets}")
        if self.tolerance < 0 or self.accuracy_window < 1:
            raise ValueError("tolerance must be >= 0 and accuracy_window >= 1")


class _History:
    """Recent values with a cached quantile (recomputed only after a change)."""

    def __init__(self, size: int):
        self.values: deque[int] = deque(maxlen=size)
        self._cached: tuple[float, int] | None = None

    def add(self, v: int) -> None:
        self.values.append(v)
        self._cached = None

    def quantile(self, q: float) -> int:
        if self._cached is None or self._cached[0] != q:
            xs = sorted(self.values)
            idx = min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))  # nearest rank
            self._cached = (q, xs[idx])
        return self._cached[1]


class QuantileOutputPredictor:
    """Per-adapter high quantile of recent output lengths, capped by max_tokens."""

    def __init__(self, config: PredictorConfig | None = None):
        self.config = config or PredictorConfig()
        self._per_adapter: dict[str, _History] = {}
        self._global = _History(self.config.global_history)
        self._bucket_hits: deque[bool] = deque(maxlen=self.config.accuracy_window)
        self._close_hits: deque[bool] = deque(maxlen=self.config.accuracy_window)

    def predict(self, req: PendingRequest) -> int:
        c = self.config
        hist = self._per_adapter.get(req.adapter_id or BASE_KEY)
        if hist is not None and len(hist.values) >= c.min_samples:
            guess = hist.quantile(c.quantile)
        elif len(self._global.values) >= c.min_samples:
            guess = self._global.quantile(c.quantile)
        else:
            guess = c.default_output
        return max(1, min(req.max_tokens, guess))

    def observe(self, req: PendingRequest, output_tokens: int) -> None:
        c = self.config
        key = req.adapter_id or BASE_KEY
        hist = self._per_adapter.get(key)
        if hist is None:
            hist = self._per_adapter[key] = _History(c.history)
        hist.add(output_tokens)
        self._global.add(output_tokens)
        if req.predicted_output is not None:
            pred = req.predicted_output
            self._bucket_hits.append(bisect.bisect_right(c.buckets, pred)
                                     == bisect.bisect_right(c.buckets, output_tokens))
            self._close_hits.append(abs(output_tokens - pred) <= c.tolerance * max(pred, 1))

    def accuracy(self) -> dict[str, float]:
        n = len(self._bucket_hits)
        return {
            "predictor_samples": float(n),
            "predictor_bucket_accuracy": sum(self._bucket_hits) / n if n else 0.0,
            "predictor_within_tolerance": sum(self._close_hits) / n if n else 0.0,
        }


class ServiceTimeModel:
    """Expected processing time D of a request: prefill + predicted output x time per token.

    The decode time per output token is learned online (exponential moving average of
    finished requests' elapsed / output tokens), so it tracks the batch size the worker
    is actually running at; the prefill rate is a configured constant.
    """

    def __init__(self, decode_s_per_token: float = 0.03, prefill_s_per_token: float = 0.0002,
                 smoothing: float = 0.1):
        if decode_s_per_token <= 0 or prefill_s_per_token < 0:
            raise ValueError("decode_s_per_token must be > 0 and prefill_s_per_token >= 0")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.decode_s_per_token = decode_s_per_token
        self.prefill_s_per_token = prefill_s_per_token
        self._smoothing = smoothing

    def expected_s(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens * self.prefill_s_per_token + max(1, output_tokens) * self.decode_s_per_token

    def observe(self, input_tokens: int, output_tokens: int, elapsed_s: float) -> None:
        if output_tokens <= 0 or elapsed_s <= 0:
            return
        decode = max(0.0, elapsed_s - input_tokens * self.prefill_s_per_token) / output_tokens
        if decode > 0:
            a = self._smoothing
            self.decode_s_per_token = (1 - a) * self.decode_s_per_token + a * decode
