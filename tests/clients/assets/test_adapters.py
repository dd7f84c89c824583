"""Our adapters must be what PEFT itself would load: same keys, shapes, ranks and scalings."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clients.assets.adapters import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    ALL_MODULES,
    ATTENTION_MODULES,
    MLP_MODULES,
    lora_scaling,
    make_misshaped_adapter,
    make_peft_adapter,
    pattern_key,
    plan_modules,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TINY_CONFIG = {
    "vocab_size": 96,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 64,
    "tie_word_embeddings": True,
}

VARIANTS = {
    "attention": dict(rank=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), lora_alpha=16),
    "mlp": dict(rank=4, target_modules=MLP_MODULES, lora_alpha=8),
    "all": dict(rank=16, target_modules=ALL_MODULES, lora_alpha=32),
    "rslora": dict(rank=16, target_modules=("q_proj", "v_proj"), lora_alpha=8, use_rslora=True),
    "patterns": dict(
        rank=8,
        target_modules=("q_proj", "v_proj", "down_proj"),
        lora_alpha=16,
        rank_pattern={"layers.0.self_attn.q_proj": 2, "v_proj": 12},
        alpha_pattern={"down_proj": 4, "layers.1.self_attn.q_proj": 64},
    ),
    "layers": dict(rank=8, target_modules=ATTENTION_MODULES, lora_alpha=16, layers=[1]),
}


def tiny_base_model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**TINY_CONFIG)
    return transformers.LlamaForCausalLM(config).eval()


def load_with_peft(adapter_dir: Path, caplog: pytest.LogCaptureFixture):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(tiny_base_model(), str(adapter_dir)).eval()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    key_problems = [m for m in messages if "missing" in m.lower() or "unexpected" in m.lower()]
    assert key_problems == []
    return model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_peft_loads_adapter_and_output_changes(variant, tmp_path: Path, caplog):
    kwargs = VARIANTS[variant]
    adapter_dir = make_peft_adapter(TINY_CONFIG, tmp_path / variant, seed=3, **kwargs)
    model = load_with_peft(adapter_dir, caplog)

    plan_kwargs = {k: v for k, v in kwargs.items() if k != "use_rslora"}
    planned = {spec.name: spec for spec in plan_modules(TINY_CONFIG, **plan_kwargs)}
    loaded = {
        name.removeprefix("base_model.model."): module
        for name, module in model.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    }
    assert set(loaded) == set(planned)
    for name, module in loaded.items():
        spec = planned[name]
        assert module.r["default"] == spec.rank, name
        expected_scaling = lora_scaling(spec.alpha, spec.rank, kwargs.get("use_rslora", False))
        assert module.scaling["default"] == pytest.approx(expected_scaling), name

    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        adapted = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
    assert not torch.allclose(adapted, base, atol=1e-3)


def test_adapter_files_use_peft_key_names_and_shapes(tmp_path: Path):
    adapter_dir = make_peft_adapter(
        TINY_CONFIG, tmp_path / "a", rank=8, target_modules=["k_proj", "down_proj"], lora_alpha=16
    )
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS_FILE))
    assert tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"].shape == (8, 64)
    assert tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].shape == (32, 8)
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape == (8, 160)
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape == (64, 8)
    assert len(tensors) == 2 * 2 * 2
    assert all(torch.count_nonzero(t) == t.numel() for t in tensors.values())
    config = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["inference_mode"] is True
    assert config["target_modules"] == ["k_proj", "down_proj"]


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path):
    def weights(seed: int, name: str):
        path = make_peft_adapter(
            TINY_CONFIG, tmp_path / name, rank=4, target_modules=["q_proj"], lora_alpha=8, seed=seed
        )
        return load_file(str(path / ADAPTER_WEIGHTS_FILE))

    first, again, other = weights(1, "a"), weights(1, "b"), weights(2, "c")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not any(torch.equal(first[k], other[k]) for k in first)


def test_float16_adapter_stores_half_precision(tmp_path: Path):
    path = make_peft_adapter(
        TINY_CONFIG, tmp_path / "h", rank=4, target_modules=["v_proj"], lora_alpha=8, dtype=torch.float16
    )
    assert {t.dtype for t in load_file(str(path / ADAPTER_WEIGHTS_FILE)).values()} == {torch.float16}


@pytest.mark.parametrize(
    "name",
    [
        "model.layers.0.self_attn.q_proj",
        "model.layers.10.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
        "model.layers.0.self_attn.v_proj",
    ],
)
def test_pattern_key_agrees_with_peft(name: str):
    from peft.utils.other import get_pattern_key

    patterns = ["layers.0.self_attn.q_proj", "layers.1.mlp.down_proj", "q_proj", "proj", "k_proj"]
    ours = pattern_key(patterns, name)
    assert (ours if ours is not None else name) == get_pattern_key(patterns, name)


def test_invalid_requests_raise_value_error(tmp_path: Path):
    with pytest.raises(ValueError):
        make_peft_adapter(TINY_CONFIG, tmp_path / "x", rank=0, target_modules=["q_proj"], lora_alpha=8)
    with pytest.raises(ValueError):
        make_peft_adapter(TINY_CONFIG, tmp_path / "x", rank=4, target_modules=["qkv_proj"], lora_alpha=8)
    with pytest.raises(ValueError):
        make_peft_adapter(TINY_CONFIG, tmp_path / "x", rank=4, target_modules=["q_proj"], lora_alpha=8, layers=[2])
    assert not (tmp_path / "x").exists()


def test_misshaped_adapter_is_rejected_by_peft(tmp_path: Path):
    adapter_dir = make_misshaped_adapter(TINY_CONFIG, tmp_path / "bad", rank=4)
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS_FILE))
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 65)
    with pytest.raises(RuntimeError, match="size mismatch"):
        peft.PeftModel.from_pretrained(tiny_base_model(), str(adapter_dir))
