"""The converted SmolLM2 folder must behave exactly like transformers' own reading of the GGUF."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from clients.assets.gguf_to_hf import find_smollm2_gguf, hf_tensor_name, unpermute_rotary_rows

transformers = pytest.importorskip("transformers")

TOKENIZER_SAMPLES = [
    "The capital of France is",
    "Hello, world!",
    "12345 and 3.14159 and 1,000,000.00$",
    "  leading spaces\n\ttabs and trailing   ",
    "héllo wörld ñ ç ß",
    "日本語のテキストと中文",
    "emoji 🙂🚀 and symbols ©®™",
    "def f(x):\n    return x ** 2  # square\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure they'll say we can't, won't or shouldn't.",
    "\n\n\n",
    " x",
    "",
]


def llama_cpp_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert script's q/k permutation (HF rotate-half order -> GGUF pair order)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.fixture(scope="module")
def gguf_reference_model():
    """transformers' model loaded straight from the GGUF (the independent reference)."""
    import gguf

    gguf_path = find_smollm2_gguf()
    # Speed only: transformers rebuilds gguf's pure tensor name table once per module (~10 s
    # on this machine); caching it gives identical tables.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    return model.eval()


@pytest.fixture(scope="module")
def converted_model(smollm2_dir: Path):
    return transformers.LlamaForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def converted_tokenizer(smollm2_dir: Path):
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_dir))


def test_find_smollm2_gguf_returns_a_gguf_file():
    path = find_smollm2_gguf()
    assert path.suffix == ".gguf"
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    for n_heads, head_dim in [(9, 64), (3, 64), (4, 16)]:
        original = rng.standard_normal((n_heads * head_dim, 8)).astype(np.float32)
        permuted = llama_cpp_permute(original, n_heads)
        assert not np.array_equal(permuted, original)
        np.testing.assert_array_equal(unpermute_rotary_rows(permuted, n_heads), original)


def test_unpermute_rejects_rows_not_divisible_by_heads():
    with pytest.raises(ValueError):
        unpermute_rotary_rows(np.zeros((10, 4), dtype=np.float32), 4)


def test_tensor_names_map_to_hf_llama_names():
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("blk.7.attn_q.weight") == "model.layers.7.self_attn.q_proj.weight"
    assert hf_tensor_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert hf_tensor_name("blk.29.ffn_norm.weight") == "model.layers.29.post_attention_layernorm.weight"
    with pytest.raises(ValueError):
        hf_tensor_name("blk.0.attn_qkv.weight")


def test_config_and_weights_describe_smollm2(smollm2_dir: Path, smollm2_config: dict):
    expected = {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    assert {k: smollm2_config[k] for k in expected} == expected
    with safe_open(str(smollm2_dir / "model.safetensors"), framework="pt") as weights:
        keys = set(weights.keys())
        assert "lm_head.weight" not in keys
        assert len(keys) == 2 + 9 * 30
        assert weights.get_slice("model.layers.0.self_attn.k_proj.weight").get_shape() == [192, 576]
        assert weights.get_tensor("model.norm.weight").dtype == torch.float32


def test_logits_match_transformers_gguf_loader(converted_model, gguf_reference_model, converted_tokenizer):
    ids = converted_tokenizer("The capital of France is a city where", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = converted_model(ids).logits
        reference = gguf_reference_model(ids).logits
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


def test_tokenizer_matches_transformers_gguf_tokenizer(converted_tokenizer):
    gguf_path = find_smollm2_gguf()
    reference = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    for text in TOKENIZER_SAMPLES:
        ours = converted_tokenizer.encode(text)
        assert ours == reference.encode(text), text
        assert converted_tokenizer.decode(ours) == reference.decode(ours) == text


def test_tokenizer_splits_digits_individually(converted_tokenizer):
    ids = converted_tokenizer.encode("2024")
    assert [converted_tokenizer.decode([i]) for i in ids] == ["2", "0", "2", "4"]


def test_tokenizer_config_carries_chat_template(converted_tokenizer):
    prompt = converted_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert converted_tokenizer.eos_token == "<|im_end|>"


def test_greedy_generation_says_paris(converted_model, converted_tokenizer):
    ids = converted_tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = converted_model.generate(ids, max_new_tokens=8, do_sample=False)
    text = converted_tokenizer.decode(out[0, ids.shape[1] :])
    print(f"SmolLM2 greedy continuation: {text!r}")
    assert "Paris" in text
