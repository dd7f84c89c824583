"""Policy factory: `make_policy(name, clock, **cfg)` for every admission policy.

  fifo        strict arrival order (S-LoRA baseline)
  sjf         shortest predicted output first (µServe-style baseline)
  static-mlq  4 queues with fixed WRS boundaries 0.25/0.5/0.75, equal quotas, no bypass
  chameleon   dynamic K-means queues, M/M/1 quotas, bypass/squash (paper §3)

`cfg` goes to `ChameleonConfig` for the queue policies; `predictor=` (an
OutputPredictor) is accepted by every policy but fifo.
"""
from __future__ import annotations

from typing import Any

from .chameleon import ChameleonConfig, ChameleonPolicy
from .fifo import FifoPolicy
from .sjf import SjfPolicy
from .types import AdmissionPolicy, Clock

POLICY_NAMES = ("fifo", "sjf", "static-mlq", "chameleon")
STATIC_BOUNDARIES = (0.25, 0.5, 0.75)


def make_policy(name: str, clock: Clock, **cfg: Any) -> AdmissionPolicy:
    predictor = cfg.pop("predictor", None)
    if name == "fifo":
        if cfg or predictor is not None:
            raise ValueError(f"fifo takes no options, got {sorted(cfg) + (['predictor'] if predictor else [])}")
        return FifoPolicy(clock)
    if name == "sjf":
        if cfg:
            raise ValueError(f"sjf takes only predictor=, got {sorted(cfg)}")
        return SjfPolicy(clock, predictor)
    if name == "static-mlq":
        cfg.setdefault("static_boundaries", STATIC_BOUNDARIES)
        cfg.setdefault("bypass", False)
        return ChameleonPolicy(clock, ChameleonConfig(**cfg), predictor, name="static-mlq")
    if name == "chameleon":
        return ChameleonPolicy(clock, ChameleonConfig(**cfg), predictor)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
