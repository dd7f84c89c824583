"""Named time scopes for `torch.profiler` (the step breakdown of `chameleon bench engine`).

`scope(name)` is a `record_function` range while a profiler runs and a no-op context
otherwise, so the hot path pays one flag check per scope when nobody profiles.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

# the step breakdown's parts; time in no scope is "other"
ATTENTION, BASE_LINEAR, LORA, SAMPLING = "attention", "base_linear", "lora", "sampling"
SCOPES = (ATTENTION, BASE_LINEAR, LORA, SAMPLING)

_OFF = nullcontext()


def scope(name: str) -> AbstractContextManager:
    if torch.autograd._profiler_enabled():
        return torch.profiler.record_function(name)
    return _OFF
