"""The tiny Llama is a valid transformers model, deterministic per seed, with the SmolLM2 tokenizer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clients.assets.tiny import make_tiny_llama

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    # Built from the GGUF metadata (the default path); later builds reuse the cached spec.
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0)


def test_tiny_config_is_small_gqa_llama(tiny_dir: Path):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 16)
    assert config["vocab_size"] == 49152 and config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in load_file(str(tiny_dir / "model.safetensors"))


def test_transformers_loads_and_generates(tiny_dir: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_dir))
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert out.shape == (1, ids.shape[1] + 6)
    assert isinstance(tokenizer.decode(out[0]), str)


def test_weights_are_deterministic_per_seed(tiny_dir: Path, tmp_path: Path):
    again = load_file(str(make_tiny_llama(tmp_path / "again", seed=0, tokenizer_dir=tiny_dir) / "model.safetensors"))
    other = load_file(str(make_tiny_llama(tmp_path / "other", seed=1, tokenizer_dir=tiny_dir) / "model.safetensors"))
    first = load_file(str(tiny_dir / "model.safetensors"))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    q_name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(first[q_name], other[q_name])


def test_copying_tokenizer_is_fast_and_identical(tiny_dir: Path, tmp_path: Path):
    start = time.perf_counter()
    copy = make_tiny_llama(tmp_path / "copy", seed=0, tokenizer_dir=tiny_dir)
    assert time.perf_counter() - start < 10
    assert (copy / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()


def test_rope_scaling_option_reaches_transformers(tiny_dir: Path, tmp_path: Path):
    scaled_dir = make_tiny_llama(
        tmp_path / "linear", seed=0, rope_scaling={"rope_type": "linear", "factor": 4.0}, tokenizer_dir=tiny_dir
    )
    scaled = transformers.AutoModelForCausalLM.from_pretrained(str(scaled_dir)).eval()
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    assert scaled.config.rope_parameters["rope_type"] == "linear"
    assert scaled.config.rope_parameters["factor"] == 4.0
    ids = torch.arange(100, 164).unsqueeze(0)
    with torch.no_grad():
        assert not torch.allclose(scaled(ids).logits, plain(ids).logits, atol=1e-3)
