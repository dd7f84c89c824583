"""The tiny random Llama and its PEFT adapters, loaded once for the engine tests."""
from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from gpu_worker.core.lora import LoraAdapter
from gpu_worker.core.model import LlamaModel


@pytest.fixture(scope="session")
def engine_parts(tiny_assets):
    """(model folder, model, tokenizer, {name: LoraAdapter}, adapters folder)"""
    model_dir = Path(tiny_assets["model"])
    model = LlamaModel.load(model_dir)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    adapters = {p.name: LoraAdapter.from_peft_dir(p, model.config)
                for p in sorted(Path(tiny_assets["adapters"]).iterdir()) if p.is_dir()}
    return model_dir, model, tok, adapters, tiny_assets["adapters"]
