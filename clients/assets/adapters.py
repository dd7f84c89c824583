"""Random LoRA adapters in the exact on-disk format PEFT writes (adapter_config.json and
adapter_model.safetensors), for Llama models described by their HF config.json dict.

Effective update of a targeted linear layer: W x + scaling * B (A x), with
scaling = alpha / r, or alpha / sqrt(r) with use_rslora (PEFT's rule).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clients.assets.hf_folder import llama_shape_from_config, save_tensors, staged_dir, write_json

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_KEY_PREFIX = "base_model.model."

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_MODULES = ATTENTION_MODULES + MLP_MODULES

# Standard deviation of the adapter's output delta relative to the rms of its input. Tuned on
# SmolLM2-135M: at 0.25 rank-8 q/v adapters already change greedy text, and rank-64 adapters on
# all modules still write coherent text (at 0.6 the model starts to lose facts).
DEFAULT_DELTA_SCALE = 0.25


def module_shapes(base_config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA-targetable Llama linear layer."""
    shape = llama_shape_from_config(dict(base_config))
    h, inter = shape.hidden_size, shape.intermediate_size
    return {
        "q_proj": (h, shape.q_size),
        "k_proj": (h, shape.kv_size),
        "v_proj": (h, shape.kv_size),
        "o_proj": (shape.q_size, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }


def module_name(layer: int, target: str) -> str:
    block = "self_attn" if target in ATTENTION_MODULES else "mlp"
    return f"model.layers.{layer}.{block}.{target}"


def pattern_key(patterns: Iterable[str], name: str) -> str | None:
    """The first pattern that matches module `name`, by PEFT's rule for rank/alpha patterns.

    PEFT (peft.utils.other.get_pattern_key) takes a key as a regex that must match a suffix of
    the module name starting at a dot boundary: re.match(rf"(.*\\.)?({key})$", name).
    """
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def lora_scaling(alpha: float, rank: int, use_rslora: bool) -> float:
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


@dataclass(frozen=True)
class LoraModuleSpec:
    """One adapted linear layer: its PEFT-relative name, sizes, rank and alpha."""

    name: str
    in_features: int
    out_features: int
    rank: int
    alpha: float


def plan_modules(
    base_config: Mapping[str, Any],
    *,
    rank: int,
    target_modules: Sequence[str],
    lora_alpha: float,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    layers: Sequence[int] | None = None,
) -> list[LoraModuleSpec]:
    """Every adapted module with its resolved rank and alpha, in layer-then-target order."""
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    if lora_alpha <= 0:
        raise ValueError(f"lora_alpha must be positive, got {lora_alpha}")
    if not target_modules:
        raise ValueError("target_modules must not be empty")
    unknown = sorted(set(target_modules) - set(ALL_MODULES))
    if unknown:
        raise ValueError(f"unknown target modules {unknown}; known: {list(ALL_MODULES)}")
    if len(set(target_modules)) != len(target_modules):
        raise ValueError(f"target_modules has duplicates: {list(target_modules)}")
    shapes = module_shapes(base_config)
    n_layers = int(base_config["num_hidden_layers"])
    chosen_layers = list(range(n_layers)) if layers is None else sorted(set(layers))
    if not chosen_layers or any(not 0 <= i < n_layers for i in chosen_layers):
        raise ValueError(f"layers must be a non-empty subset of 0..{n_layers - 1}, got {layers}")
    ranks, alphas = dict(rank_pattern or {}), dict(alpha_pattern or {})
    if any(int(r) <= 0 for r in ranks.values()) or any(float(a) <= 0 for a in alphas.values()):
        raise ValueError("rank_pattern and alpha_pattern values must be positive")

    ordered_targets = [t for t in ALL_MODULES if t in target_modules]
    specs = []
    for layer in chosen_layers:
        for target in ordered_targets:
            name = module_name(layer, target)
            r_key, a_key = pattern_key(ranks, name), pattern_key(alphas, name)
            in_features, out_features = shapes[target]
            specs.append(
                LoraModuleSpec(
                    name=name,
                    in_features=in_features,
                    out_features=out_features,
                    rank=int(ranks[r_key]) if r_key is not None else rank,
                    alpha=float(alphas[a_key]) if a_key is not None else float(lora_alpha),
                )
            )
    return specs


def random_lora_tensors(
    specs: Sequence[LoraModuleSpec],
    *,
    use_rslora: bool,
    seed: int,
    delta_scale: float,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """A ~ N(0, 1/in) keeps A x at the scale of x. B's std is chosen so that the final
    delta, scaling * B A x, has std ~ delta_scale * rms(x) whatever the rank and alpha.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for spec in specs:
        scaling = lora_scaling(spec.alpha, spec.rank, use_rslora)
        a = torch.randn(spec.rank, spec.in_features, generator=generator) / math.sqrt(spec.in_features)
        b_std = delta_scale / (scaling * math.sqrt(spec.rank))
        b = torch.randn(spec.out_features, spec.rank, generator=generator) * b_std
        key = PEFT_KEY_PREFIX + spec.name
        tensors[f"{key}.lora_A.weight"] = a.to(dtype)
        tensors[f"{key}.lora_B.weight"] = b.to(dtype)
    return tensors


def peft_adapter_config(
    *,
    rank: int,
    target_modules: Sequence[str],
    lora_alpha: float,
    use_rslora: bool,
    rank_pattern: Mapping[str, int] | None,
    alpha_pattern: Mapping[str, float] | None,
    layers: Sequence[int] | None,
    base_model_name_or_path: str | None,
) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "target_modules": [t for t in ALL_MODULES if t in target_modules],
        "exclude_modules": None,
        "lora_alpha": lora_alpha,
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "bias": "none",
        "use_rslora": use_rslora,
        "use_dora": False,
        "lora_bias": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None if layers is None else sorted(set(layers)),
        "layers_pattern": None,
        "rank_pattern": dict(rank_pattern or {}),
        "alpha_pattern": dict(alpha_pattern or {}),
    }


def make_peft_adapter(
    base_config: Mapping[str, Any],
    out_dir: Path | str,
    *,
    rank: int,
    target_modules: Sequence[str],
    lora_alpha: float,
    use_rslora: bool = False,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    delta_scale: float = DEFAULT_DELTA_SCALE,
    dtype: torch.dtype = torch.float32,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write a random PEFT LoRA adapter for a Llama with config `base_config` into `out_dir`."""
    if delta_scale <= 0:
        raise ValueError(f"delta_scale must be positive, got {delta_scale}")
    specs = plan_modules(
        base_config,
        rank=rank,
        target_modules=target_modules,
        lora_alpha=lora_alpha,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        layers=layers,
    )
    tensors = random_lora_tensors(specs, use_rslora=use_rslora, seed=seed, delta_scale=delta_scale, dtype=dtype)
    config = peft_adapter_config(
        rank=rank,
        target_modules=target_modules,
        lora_alpha=lora_alpha,
        use_rslora=use_rslora,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        layers=layers,
        base_model_name_or_path=base_model_name_or_path or base_config.get("_name_or_path"),
    )
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as scratch:
        save_tensors(tensors, scratch / ADAPTER_WEIGHTS_FILE)
        write_json(scratch / ADAPTER_CONFIG_FILE, config)
    return out_dir


def make_misshaped_adapter(
    base_config: Mapping[str, Any],
    out_dir: Path | str,
    *,
    rank: int = 8,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    lora_alpha: float = 16,
    seed: int = 0,
) -> Path:
    """An adapter whose config is valid but whose first lora_A (layer 0, first target) has
    in_features + 1 columns, so it cannot be applied to the base model."""
    specs = plan_modules(base_config, rank=rank, target_modules=target_modules, lora_alpha=lora_alpha)
    tensors = random_lora_tensors(
        specs, use_rslora=False, seed=seed, delta_scale=DEFAULT_DELTA_SCALE, dtype=torch.float32
    )
    first = specs[0]
    bad_key = f"{PEFT_KEY_PREFIX}{first.name}.lora_A.weight"
    generator = torch.Generator().manual_seed(seed + 1)
    tensors[bad_key] = torch.randn(first.rank, first.in_features + 1, generator=generator)
    config = peft_adapter_config(
        rank=rank,
        target_modules=target_modules,
        lora_alpha=lora_alpha,
        use_rslora=False,
        rank_pattern=None,
        alpha_pattern=None,
        layers=None,
        base_model_name_or_path=base_config.get("_name_or_path"),
    )
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as scratch:
        save_tensors(tensors, scratch / ADAPTER_WEIGHTS_FILE)
        write_json(scratch / ADAPTER_CONFIG_FILE, config)
    return out_dir
