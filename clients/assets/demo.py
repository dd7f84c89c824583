"""Preparing the on-disk assets of the demo (SmolLM2 + many adapters) and of fast tests
(a tiny Llama + a few adapters + a broken adapter).

Both preparations are idempotent: a marker file in `root` records the format version and the
parameters; a second call with the same ones returns at once.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clients.assets.adapters import (
    ALL_MODULES,
    ATTENTION_MODULES,
    MLP_MODULES,
    make_misshaped_adapter,
    make_peft_adapter,
    module_name,
)
from clients.assets.gguf_to_hf import convert_gguf_to_hf, find_smollm2_gguf
from clients.assets.hf_folder import CONFIG_FILE, TOKENIZER_FILE, read_json, write_json
from clients.assets.tiny import make_tiny_llama

# Bump when the content of generated assets changes, so old asset folders get rebuilt.
ASSETS_FORMAT_VERSION = 1
DEMO_MARKER = ".chameleon-demo-assets.json"
BENCH_MARKER = ".chameleon-bench-assets.json"
BENCH_ADAPTERS_DIR = "bench-adapters"
BENCH_RANKS = (8, 16, 32, 64)
TINY_MARKER = ".chameleon-tiny-assets.json"
SMOLLM2_DIR = "models/smollm2-135m"
TINY_DIR = "models/tiny-llama"
ADAPTERS_DIR = "adapters"
TINY_ADAPTERS_DIR = "tiny-adapters"
BAD_ADAPTERS_DIR = "bad_adapters"
MISSHAPED_ADAPTER = "misshaped-lora"

DEMO_RANKS = (8, 16, 32, 64, 128)
DEMO_TARGET_SETS: dict[str, tuple[str, ...]] = {
    "qv": ("q_proj", "v_proj"),
    "qkvo": ATTENTION_MODULES,
    "mlp": MLP_MODULES,
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "all": ALL_MODULES,
    "o": ("o_proj",),
}

Progress = Callable[[str], None] | None


@dataclass(frozen=True)
class AdapterSpec:
    """Everything needed to (re)generate one adapter deterministically."""

    name: str
    rank: int
    target_modules: tuple[str, ...]
    lora_alpha: float
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    layers: tuple[int, ...] | None = None
    seed: int = 0

    def write(self, base_config: Mapping[str, Any], out_dir: Path, dtype: torch.dtype) -> Path:
        return make_peft_adapter(
            base_config,
            out_dir,
            rank=self.rank,
            target_modules=self.target_modules,
            lora_alpha=self.lora_alpha,
            use_rslora=self.use_rslora,
            rank_pattern=self.rank_pattern or None,
            alpha_pattern=self.alpha_pattern or None,
            layers=self.layers,
            seed=self.seed,
            dtype=dtype,
        )


def demo_adapter_specs(n_adapters: int) -> list[AdapterSpec]:
    """n adapters for SmolLM2; adapter i depends only on i, so smaller sets are prefixes.

    Ranks cycle fastest and target sets advance every len(DEMO_RANKS) adapters, so the first
    30 adapters cover every (rank, target set) pair once. Every 7th uses rsLoRA and every 8th
    carries a rank/alpha pattern.
    """
    if n_adapters < 0:
        raise ValueError(f"n_adapters must be >= 0, got {n_adapters}")
    set_names = list(DEMO_TARGET_SETS)
    specs = []
    for i in range(n_adapters):
        rank = DEMO_RANKS[i % len(DEMO_RANKS)]
        set_name = set_names[(i // len(DEMO_RANKS)) % len(set_names)]
        targets = DEMO_TARGET_SETS[set_name]
        use_rslora = i % 7 == 3
        rank_pattern, alpha_pattern = {}, {}
        if i % 8 == 5:
            # A layer-specific key and a suffix key, the two forms PEFT users write.
            rank_pattern = {module_name(0, targets[0]).removeprefix("model."): max(4, rank // 2)}
            alpha_pattern = {targets[-1]: float(rank)}
        suffix = "-rslora" if use_rslora else "-pattern" if rank_pattern else ""
        specs.append(
            AdapterSpec(
                name=f"lora-{i:03d}-r{rank}-{set_name}{suffix}",
                rank=rank,
                target_modules=targets,
                lora_alpha=float(2 * rank if i % 2 == 0 else 16),
                use_rslora=use_rslora,
                rank_pattern=rank_pattern,
                alpha_pattern=alpha_pattern,
                seed=1000 + i,
            )
        )
    return specs


def tiny_adapter_specs() -> list[AdapterSpec]:
    """Eight adapters for the tiny Llama covering the variants the server must handle."""
    return [
        AdapterSpec("tiny-r8-qv", 8, ("q_proj", "v_proj"), 16, seed=1),
        AdapterSpec("tiny-r16-qkvo", 16, ATTENTION_MODULES, 32, seed=2),
        AdapterSpec("tiny-r4-mlp", 4, MLP_MODULES, 8, seed=3),
        AdapterSpec("tiny-r32-all", 32, ALL_MODULES, 16, seed=4),
        AdapterSpec("tiny-r8-qkvo-rslora", 8, ATTENTION_MODULES, 16, use_rslora=True, seed=5),
        AdapterSpec(
            "tiny-r16-qv-pattern",
            16,
            ("q_proj", "v_proj"),
            16,
            rank_pattern={"layers.0.self_attn.q_proj": 4, "v_proj": 8},
            alpha_pattern={"q_proj": 32},
            seed=6,
        ),
        AdapterSpec("tiny-r12-kdown", 12, ("k_proj", "down_proj"), 24, seed=7),
        AdapterSpec("tiny-r24-qkvo-layer1", 24, ATTENTION_MODULES, 48, layers=(1,), seed=8),
    ]


def _read_marker(path: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result if the marker matches version and parameters and its paths exist."""
    if not path.is_file():
        return None
    try:
        marker = read_json(path)
    except ValueError:
        return None
    if marker.get("format_version") != ASSETS_FORMAT_VERSION or marker.get("params") != params:
        return None
    result = _absolute(path.parent, marker.get("result", {}))
    if not all(p.exists() for p in _paths_in(result)):
        return None
    return result


def _begin(root: Path, marker_name: str, params: dict[str, Any],
           force: bool) -> tuple[Path, dict[str, Any] | None]:
    """The marker's path, and the stored result when a matching preparation is complete;
    otherwise the root exists and the marker is gone, so an interrupted run is never ready."""
    marker = root / marker_name
    if not force:
        ready = _read_marker(marker, params)
        if ready is not None:
            return marker, ready
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    return marker, None


def _write_marker(path: Path, params: dict[str, Any], result: dict[str, Any]) -> None:
    payload = {"format_version": ASSETS_FORMAT_VERSION, "params": params, "result": _relative(path.parent, result)}
    write_json(path, payload)


def _relative(root: Path, value: Any) -> Any:
    if isinstance(value, Path):
        return {"path": value.relative_to(root).as_posix()}
    if isinstance(value, dict):
        return {k: _relative(root, v) for k, v in value.items()}
    return value


def _absolute(root: Path, value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"path"}:
            return root / value["path"]
        return {k: _absolute(root, v) for k, v in value.items()}
    return value


def _paths_in(value: Any) -> list[Path]:
    if isinstance(value, Path):
        return [value]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    return []


def _write_adapters(
    specs: Sequence[AdapterSpec],
    base_config: Mapping[str, Any],
    folder: Path,
    dtype: torch.dtype,
    report: Callable[[str], None],
) -> None:
    # The folder is ours alone; clearing it drops adapters of an older, larger set.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    report(f"writing {len(specs)} adapters into {folder}")
    for spec in specs:
        spec.write(base_config, folder / spec.name, dtype)


def prepare_demo(
    root: Path | str,
    n_adapters: int = 48,
    force: bool = False,
    progress: Progress = None,
) -> dict[str, Any]:
    """Convert SmolLM2 into root/models/smollm2-135m and write n adapters into root/adapters.

    Returns {"root", "model", "adapters" (the folder holding one folder per adapter, named as
    in demo_adapter_specs), "n_adapters"}. Adapters are stored in float16 (half the disk of
    float32): 48 adapters take ~550 MB, the model ~540 MB.
    """
    root = Path(root)
    report = progress or (lambda _message: None)
    params = {"n_adapters": n_adapters}
    marker, ready = _begin(root, DEMO_MARKER, params, force)
    if ready is not None:
        return ready
    specs = demo_adapter_specs(n_adapters)
    model_dir = root / SMOLLM2_DIR
    # staged_dir only ever leaves complete folders, so an existing one can be reused.
    if force or not (model_dir / CONFIG_FILE).is_file():
        report("converting SmolLM2-135M GGUF to a float32 HF folder")
        convert_gguf_to_hf(find_smollm2_gguf(), model_dir, progress=report)
    base_config = read_json(model_dir / CONFIG_FILE)
    _write_adapters(specs, base_config, root / ADAPTERS_DIR, torch.float16, report)
    result: dict[str, Any] = {
        "root": root,
        "model": model_dir,
        "adapters": root / ADAPTERS_DIR,
        "n_adapters": len(specs),
    }
    _write_marker(marker, params, result)
    return result


def bench_adapter_specs() -> list[AdapterSpec]:
    """The 16 adapters of `chameleon bench engine`: ranks 8/16/32/64 on q/k/v/o, four of each."""
    return [AdapterSpec(f"bench-{i:02d}-r{BENCH_RANKS[i % 4]}-qkvo", BENCH_RANKS[i % 4],
                        ATTENTION_MODULES, float(2 * BENCH_RANKS[i % 4]), seed=2000 + i)
            for i in range(16)]


def prepare_bench(root: Path | str, force: bool = False, progress: Progress = None) -> dict[str, Any]:
    """SmolLM2 (shared with the demo, in root/models/smollm2-135m) and the 16 float32
    adapters of bench_adapter_specs in root/bench-adapters. Returns {"root", "model", "adapters"}."""
    root = Path(root)
    report = progress or (lambda _message: None)
    params: dict[str, Any] = {"bench": 1}
    marker, ready = _begin(root, BENCH_MARKER, params, force)
    if ready is not None:
        return ready
    model_dir = root / SMOLLM2_DIR
    if force or not (model_dir / CONFIG_FILE).is_file():
        report("converting SmolLM2-135M GGUF to a float32 HF folder")
        convert_gguf_to_hf(find_smollm2_gguf(), model_dir, progress=report)
    base_config = read_json(model_dir / CONFIG_FILE)
    _write_adapters(bench_adapter_specs(), base_config, root / BENCH_ADAPTERS_DIR, torch.float32,
                    report)
    result: dict[str, Any] = {"root": root, "model": model_dir, "adapters": root / BENCH_ADAPTERS_DIR}
    _write_marker(marker, params, result)
    return result


def prepare_tiny(
    root: Path | str,
    force: bool = False,
    progress: Progress = None,
) -> dict[str, Any]:
    """Write root/models/tiny-llama, 8 float32 adapters in root/tiny-adapters and one
    misshaped adapter in root/bad_adapters.

    Returns {"root", "model", "adapters" (folder of the 8 good adapters, named as in
    tiny_adapter_specs), "bad_adapters" (folder holding only the misshaped one)}. The tiny
    adapters live apart from the demo's root/adapters so both can share one root.
    """
    root = Path(root)
    report = progress or (lambda _message: None)
    params: dict[str, Any] = {}
    marker, ready = _begin(root, TINY_MARKER, params, force)
    if ready is not None:
        return ready
    converted = root / SMOLLM2_DIR
    # Copying the tokenizer of an already converted SmolLM2 saves parsing the GGUF again.
    tokenizer_dir = converted if (converted / TOKENIZER_FILE).is_file() else None
    model_dir = root / TINY_DIR
    report("writing tiny Llama")
    make_tiny_llama(model_dir, seed=0, tokenizer_dir=tokenizer_dir)
    base_config = read_json(model_dir / CONFIG_FILE)
    specs = tiny_adapter_specs()
    _write_adapters(specs, base_config, root / TINY_ADAPTERS_DIR, torch.float32, report)
    bad_dir = root / BAD_ADAPTERS_DIR
    if bad_dir.exists():
        shutil.rmtree(bad_dir)
    make_misshaped_adapter(base_config, bad_dir / MISSHAPED_ADAPTER, rank=8, seed=99)
    result: dict[str, Any] = {
        "root": root,
        "model": model_dir,
        "adapters": root / TINY_ADAPTERS_DIR,
        "bad_adapters": bad_dir,
    }
    _write_marker(marker, params, result)
    return result
