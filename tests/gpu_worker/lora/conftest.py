"""Fixtures of the LoRA tests. Without CUDA the kernels run in Triton's CPU interpreter:
tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_engine_parts(tiny_assets):
    """(model, tokenizer, {name: LoraAdapter}) of the tiny random Llama."""
    from pathlib import Path

    from tokenizers import Tokenizer

    from gpu_worker.core.lora import LoraAdapter
    from gpu_worker.core.model import LlamaModel

    model_dir = Path(tiny_assets["model"])
    model = LlamaModel.load(model_dir)
    adapters = {p.name: LoraAdapter.from_peft_dir(p, model.config)
                for p in sorted(Path(tiny_assets["adapters"]).iterdir()) if p.is_dir()}
    return model, Tokenizer.from_file(str(model_dir / "tokenizer.json")), adapters
