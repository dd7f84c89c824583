"""PEFT LoRA adapter format: parse adapter_config.json, decide which base-model
modules the adapter changes, and check every tensor against the base model.

No torch: the adapter store validates adapters with exactly the rules the worker
loads them by (`validate_peft_adapter`), and the worker builds its weights from
`plan_adapter`'s answer.

Matching follows PEFT (peft.tuners.tuners_utils.check_target_module_exists and
peft.utils.other.get_pattern_key) on the module names of LlamaForCausalLM,
e.g. `model.layers.3.self_attn.q_proj`:
- target_modules as a string is a regex that must match the whole name
  ("all-linear" means every projection); as a list, an entry matches a name equal
  to it or ending in `.<entry>`, and then layers_to_transform/layers_pattern
  restrict the layers;
- exclude_modules: a string is a full-match regex, a list matches like above;
- rank_pattern / alpha_pattern: the first key (in file order) for which
  re.match(rf"(.*\\.)?({key})$", name) succeeds gives the module's r / alpha.
The effective scale is alpha / r, or alpha / sqrt(r) with use_rslora.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .model_config import ATTENTION_MODULES, TARGET_MODULES, LlamaConfig

MAX_LORA_RANK = 256
PEFT_KEY_PREFIX = "base_model.model."
# PEFT drops the adapter name when saving; accept it if a writer kept it
_TENSOR_KEY = re.compile(r"^base_model\.model\.(?P<name>.+?)\.lora_(?P<half>[AB])"
                         r"(?:\.[A-Za-z0-9_-]+)?\.weight$")
# Options that change the math in ways this server does not implement.
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA adapters (use_dora) are not supported",
    "lora_bias": "lora_bias adapters are not supported",
    "modules_to_save": "modules_to_save is not supported: only LoRA A/B weights are served",
    "target_parameters": "target_parameters (LoRA on raw parameters) is not supported",
    "trainable_token_indices": "trainable_token_indices is not supported",
    "layer_replication": "layer_replication is not supported",
}


class AdapterFormatError(ValueError):
    """adapter_config.json or the tensor set is not a LoRA adapter this server can serve."""


class AdapterShapeError(ValueError):
    """A tensor's shape does not fit the base model; the message names the tensor."""


@dataclass(frozen=True)
class ModulePlan:
    """One adapted linear layer: where its tensors are and the rank/scale it runs at."""
    layer: int
    module: str
    rank: int
    scale: float
    a_key: str
    b_key: str
    alpha: float = 0.0
    in_features: int = 0
    out_features: int = 0


def module_name(layer: int, module: str) -> str:
    parent = "self_attn" if module in ATTENTION_MODULES else "mlp"
    return f"model.layers.{layer}.{parent}.{module}"


def base_module_names(base: LlamaConfig) -> dict[str, tuple[int, str] | None]:
    """Every named module of LlamaForCausalLM -> (layer, projection) when LoRA on it is
    supported, None when it exists but is not (embeddings, lm_head, norms, containers)."""
    names: dict[str, tuple[int, str] | None] = {
        n: None for n in ("model", "model.embed_tokens", "model.layers", "model.norm",
                          "model.rotary_emb", "lm_head")}
    for layer in range(base.num_layers):
        p = f"model.layers.{layer}"
        for n in (p, f"{p}.self_attn", f"{p}.mlp", f"{p}.mlp.act_fn", f"{p}.input_layernorm",
                  f"{p}.post_attention_layernorm"):
            names[n] = None
        for module in TARGET_MODULES:
            names[module_name(layer, module)] = (layer, module)
    return names


def _list_match(entries: list[str], name: str) -> bool:
    return name in entries or any(name.endswith(f".{e}") for e in entries)


def _layer_index(config: dict[str, Any], name: str) -> int | None:
    pattern = config.get("layers_pattern")
    if not pattern:
        # the first numbered segment after at least two dots' worth of prefix, as PEFT does
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        match = None
        for p in [pattern] if isinstance(pattern, str) else pattern:
            match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", name)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


def is_targeted(config: dict[str, Any], name: str) -> bool:
    """Whether PEFT would put a LoRA layer on module `name` for this adapter_config."""
    exclude = config.get("exclude_modules")
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, name):
                return False
        elif _list_match(list(exclude), name):
            return False
    targets = config.get("target_modules")
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            targets = list(TARGET_MODULES)  # PEFT expands it to every linear layer but lm_head
        else:
            return re.fullmatch(targets, name) is not None
    if not _list_match(list(targets or []), name):
        return False
    layers = config.get("layers_to_transform")
    if layers is None or (isinstance(layers, list) and not layers):
        return True
    index = _layer_index(config, name)
    if index is None:
        return False
    return index == layers if isinstance(layers, int) else index in layers


def pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_LORA_RANK


def config_problems(config: dict[str, Any]) -> list[str]:
    """What in adapter_config.json alone stops the adapter from being served."""
    if not isinstance(config, dict):
        return ["adapter_config.json must hold a JSON object"]
    problems = []
    peft_type = config.get("peft_type")
    if str(peft_type).upper() != "LORA":
        problems.append(f"peft_type {peft_type!r} is not supported (only LORA)")
    if not _is_rank(config.get("r")):
        problems.append(f"r must be an integer in [1, {MAX_LORA_RANK}], got {config.get('r')!r}")
    if not _is_positive_number(config.get("lora_alpha", 8)):
        problems.append(f"lora_alpha must be a positive number, got {config.get('lora_alpha')!r}")
    if config.get("bias", "none") != "none":
        problems.append(f"bias {config.get('bias')!r} is not supported (only 'none')")
    if config.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out=true is not supported (Llama projections are nn.Linear)")
    if not isinstance(config.get("use_rslora", False), bool):
        problems.append(f"use_rslora must be true or false, got {config.get('use_rslora')!r}")
    problems += [msg for key, msg in _UNSUPPORTED_FLAGS.items() if config.get(key)]
    for key, ok, what in (("rank_pattern", _is_rank, f"integers in [1, {MAX_LORA_RANK}]"),
                          ("alpha_pattern", _is_positive_number, "positive numbers")):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            problems.append(f"{key} must be an object")
            continue
        problems += [f"{key}[{k!r}] must be one of {what}, got {v!r}"
                     for k, v in patterns.items() if not ok(v)]
        problems += _regex_problems(key, list(patterns))
    targets = config.get("target_modules")
    if isinstance(targets, str):
        problems += _regex_problems("target_modules", [targets])
    elif not targets or not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        problems.append(f"target_modules must be a regex string or a non-empty list of names, "
                        f"got {targets!r}")
    if isinstance(config.get("exclude_modules"), str):
        problems += _regex_problems("exclude_modules", [config["exclude_modules"]])
    return problems


def _regex_problems(field_name: str, patterns: list[str]) -> list[str]:
    out = []
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            out.append(f"{field_name}: {p!r} is not a valid regex ({e})")
    return out


def _plan_and_problems(config: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                       base: LlamaConfig) -> tuple[list[ModulePlan], list[str], list[str]]:
    """(plans, format problems, shape problems)."""
    format_problems = config_problems(config)
    if format_problems:
        return [], format_problems, []
    modules = base_module_names(base)
    unsupported = [n for n, kind in modules.items() if kind is None and is_targeted(config, n)]
    if unsupported:
        format_problems.append(f"target_modules selects {', '.join(unsupported[:4])}"
                               f"{' ...' if len(unsupported) > 4 else ''}: only the "
                               f"{'/'.join(TARGET_MODULES)} projections are supported")
    targeted = [kind for n, kind in modules.items() if kind is not None and is_targeted(config, n)]
    if not targeted and not unsupported:
        format_problems.append(f"target_modules {config.get('target_modules')!r} matches no module "
                               "of the base model")
    found: dict[tuple[str, str], str] = {}
    for key in sorted(shapes):
        m = _TENSOR_KEY.match(key)
        if m is None:
            format_problems.append(f"unexpected tensor {key}: not a LoRA lora_A/lora_B weight")
            continue
        name = m.group("name")
        if name not in modules:
            format_problems.append(f"tensor {key}: the base model has no module {name}")
        elif modules[name] is None:
            format_problems.append(f"tensor {key}: LoRA on {name} is not supported")
        elif not is_targeted(config, name):
            format_problems.append(f"tensor {key}: {name} is not selected by adapter_config.json")
        else:
            found[(name, m.group("half"))] = key
    dims = base.module_shapes()
    use_rslora = config.get("use_rslora", False)
    plans, shape_problems = [], []
    for layer, module in targeted:
        name = module_name(layer, module)
        rank = pattern_value(config.get("rank_pattern") or {}, name, config["r"])
        alpha = float(pattern_value(config.get("alpha_pattern") or {}, name,
                                    config.get("lora_alpha", 8)))
        fan_in, fan_out = dims[module]
        keys = {}
        for half, expected, what in (
                ("A", (rank, fan_in), f"rank {rank} x {module} in_features {fan_in}"),
                ("B", (fan_out, rank), f"{module} out_features {fan_out} x rank {rank}")):
            key = found.get((name, half))
            if key is None:
                format_problems.append(f"missing tensor {PEFT_KEY_PREFIX}{name}.lora_{half}.weight")
                continue
            actual = tuple(shapes[key])
            if actual != expected:
                shape_problems.append(f"tensor {key} has shape {list(actual)}, expected "
                                      f"{list(expected)} ({what})")
            keys[half] = key
        if len(keys) == 2:
            scale = alpha / math.sqrt(rank) if use_rslora else alpha / rank
            plans.append(ModulePlan(layer, module, rank, scale, keys["A"], keys["B"], alpha,
                                    fan_in, fan_out))
    return plans, format_problems, shape_problems


def _summary(problems: list[str], limit: int = 5) -> str:
    more = len(problems) - limit
    return "; ".join(problems[:limit]) + (f"; and {more} more" if more > 0 else "")


def plan_adapter(config: dict[str, Any], shapes: dict[str, tuple[int, ...]], base: LlamaConfig
                 ) -> list[ModulePlan]:
    """Every (layer, module) the adapter changes, with its rank and scale, in layer order.

    Raises AdapterFormatError (bad config, unsupported modules, missing or unexpected
    tensors) or else AdapterShapeError (a tensor of the wrong shape, named).
    """
    plans, format_problems, shape_problems = _plan_and_problems(config, shapes, base)
    if format_problems:
        raise AdapterFormatError(_summary(format_problems))
    if shape_problems:
        raise AdapterShapeError(_summary(shape_problems))
    return plans


def validate_peft_adapter(config: dict, tensor_shapes: dict[str, tuple[int, ...]],
                          base: LlamaConfig) -> list[str]:
    """Every problem that stops this adapter from being served on `base` (empty: it fits)."""
    _, format_problems, shape_problems = _plan_and_problems(config, tensor_shapes, base)
    return format_problems + shape_problems
