"""Demo and tiny asset preparation: contents, PEFT compatibility and idempotence."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch

from clients.assets.demo import (
    DEMO_RANKS,
    demo_adapter_specs,
    prepare_demo,
    prepare_tiny,
    tiny_adapter_specs,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def load_adapter_without_key_warnings(base_dir: Path, adapter_dir: Path, caplog):
    base = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "missing" in m.lower() or "unexpected" in m.lower()] == []
    return model


def lora_ranks(model) -> dict[str, int]:
    return {
        name.removeprefix("base_model.model."): module.r["default"]
        for name, module in model.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    }


@pytest.fixture(scope="module")
def fresh_tiny_assets(tmp_path_factory) -> dict:
    # Built in a fresh folder (not the shared session one) so preparation itself is tested.
    return prepare_tiny(tmp_path_factory.mktemp("tiny-assets"))


def adapter_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir()}


def test_demo_specs_mix_ranks_targets_and_variants():
    specs = demo_adapter_specs(48)
    assert len({s.name for s in specs}) == 48
    assert {s.rank for s in specs} == set(DEMO_RANKS)
    target_sets = {s.target_modules for s in specs}
    assert ("gate_proj", "up_proj", "down_proj") in target_sets
    assert len(max(target_sets, key=len)) == 7
    assert sum(s.use_rslora for s in specs) >= 3
    assert sum(bool(s.rank_pattern) for s in specs) >= 3
    assert demo_adapter_specs(10) == specs[:10]
    with pytest.raises(ValueError):
        demo_adapter_specs(-1)


def test_prepare_tiny_writes_model_adapters_and_bad_adapter(fresh_tiny_assets: dict):
    assets = fresh_tiny_assets
    assert (assets["model"] / "config.json").is_file()
    adapters = adapter_dirs(assets["adapters"])
    assert list(adapters) == sorted(spec.name for spec in tiny_adapter_specs())
    configs = [json.loads((p / "adapter_config.json").read_text()) for p in adapters.values()]
    assert len({c["r"] for c in configs}) >= 4
    assert any(c["use_rslora"] for c in configs)
    assert any(c["target_modules"] == ["gate_proj", "up_proj", "down_proj"] for c in configs)
    assert len(adapter_dirs(assets["bad_adapters"])) == 1
    assert assets["bad_adapters"] != assets["adapters"]


def test_every_tiny_adapter_loads_in_peft_and_changes_output(fresh_tiny_assets: dict, caplog):
    ids = torch.arange(200, 216).unsqueeze(0)
    for name, adapter_dir in adapter_dirs(fresh_tiny_assets["adapters"]).items():
        model = load_adapter_without_key_warnings(fresh_tiny_assets["model"], adapter_dir, caplog)
        with torch.no_grad():
            adapted = model(ids).logits
            with model.disable_adapter():
                base = model(ids).logits
        assert not torch.allclose(adapted, base, atol=1e-3), name


def test_tiny_misshaped_adapter_fails_to_load(fresh_tiny_assets: dict):
    base = transformers.AutoModelForCausalLM.from_pretrained(str(fresh_tiny_assets["model"]))
    (bad,) = adapter_dirs(fresh_tiny_assets["bad_adapters"]).values()
    with pytest.raises(RuntimeError, match="size mismatch"):
        peft.PeftModel.from_pretrained(base, str(bad))


def test_prepare_tiny_is_idempotent_and_force_rebuilds(tmp_path: Path):
    first = prepare_tiny(tmp_path)
    weights = first["model"] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert prepare_tiny(tmp_path) == first
    assert weights.stat().st_mtime_ns == stamp
    assert prepare_tiny(tmp_path, force=True) == first
    assert weights.stat().st_mtime_ns != stamp


def test_prepare_demo_reuses_model_and_writes_adapters(tmp_path: Path, smollm2_dir: Path, caplog):
    # Link the cached conversion in, so this test does not convert the GGUF again.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "smollm2-135m").symlink_to(smollm2_dir, target_is_directory=True)
    messages: list[str] = []
    assets = prepare_demo(tmp_path, n_adapters=6, progress=messages.append)
    assert not any("converting" in m for m in messages)
    specs = demo_adapter_specs(6)
    assert list(adapter_dirs(assets["adapters"])) == sorted(s.name for s in specs)
    assert assets["n_adapters"] == 6
    assert prepare_demo(tmp_path, n_adapters=6) == assets

    spec = next(s for s in specs if s.rank_pattern)
    model = load_adapter_without_key_warnings(assets["model"], assets["adapters"] / spec.name, caplog)
    ranks = lora_ranks(model)
    ((pattern, pattern_rank),) = spec.rank_pattern.items()
    assert ranks["model." + pattern] == pattern_rank
    assert {r for n, r in ranks.items() if n != "model." + pattern} == {spec.rank}

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(assets["model"]))
    ids = tokenizer("Once upon a time, there was a", return_tensors="pt").input_ids
    with torch.no_grad():
        adapted = model.generate(ids, max_new_tokens=12, do_sample=False)
        with model.disable_adapter():
            base = model.generate(ids, max_new_tokens=12, do_sample=False)
    print(f"base: {tokenizer.decode(base[0])!r}\nwith {spec.name}: {tokenizer.decode(adapted[0])!r}")
    assert not torch.equal(adapted, base)
