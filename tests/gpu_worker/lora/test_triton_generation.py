"""End to end: the engine generating with the Triton kernels (the CPU interpreter without
CUDA) gives the torch path's tokens, token for token."""
from __future__ import annotations

import pytest
import torch

from gpu_worker.core.engine import Engine, EngineConfig
from gpu_worker.core.sequence import SamplingSpec, Sequence
from gpu_worker.core.unified_pool import stage_adapter

pytest.importorskip("triton")

JOBS = [("The capital of France is", "tiny-r8-qv"), ("Once upon a time", "tiny-r32-all"),
        ("def fibonacci(n):", None), ("1, 2, 3, 4,", "tiny-r32-all")]


def generate(parts, backend: str, max_tokens: int = 5) -> list[list[int]]:
    model, tok, adapters = parts
    eng = Engine(model, tok, EngineConfig(block_size=8, num_blocks=256, max_running=8,
                                          max_step_tokens=64, max_context=64, lora_backend=backend))
    seqs = [Sequence(str(i), tok.encode(p, add_special_tokens=False).ids,
                     SamplingSpec(max_tokens=max_tokens), adapter_id=a)
            for i, (p, a) in enumerate(JOBS)]
    for s in seqs[:2]:
        for aid in eng.add(s):
            eng.install(stage_adapter(adapters[aid], model.config))
    eng.step()  # the last two join while the first two decode: prefill + decode in one step
    for s in seqs[2:]:
        for aid in eng.add(s):
            eng.install(stage_adapter(adapters[aid], model.config))
    while eng.has_work():
        eng.step()
    return [s.output_ids for s in seqs]


def test_triton_backend_generates_the_torch_paths_tokens(tiny_engine_parts):
    torch_tokens = generate(tiny_engine_parts, "torch")
    triton_tokens = generate(tiny_engine_parts, "triton")
    assert all(len(t) == 5 for t in torch_tokens)
    assert triton_tokens == torch_tokens


def test_backend_choice():
    from gpu_worker.lora.backend import resolve_backend
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("triton", "cpu") == "triton"   # TRITON_INTERPRET=1 here (conftest)
    with pytest.raises(ValueError, match="unknown --lora-backend"):
        resolve_backend("cutlass", "cpu")
    with pytest.raises(ValueError, match="lora_backend"):
        EngineConfig(lora_backend="cutlass")
