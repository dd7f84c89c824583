"""LoRA adapters in PEFT format, parsed on the host.

`LoraAdapter` holds, per (layer, module), A [r, in], B [out, r] and the scale.
The worker stages it (unified_pool.stage_adapter) and copies it into pool
pages; unified_pool.PooledLoraBatch applies adapters where they sit there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from chameleon_common.model_config import LlamaConfig
from chameleon_common.peft_format import AdapterFormatError, plan_adapter

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass
class LoraWeights:
    a: torch.Tensor      # [r, in]
    b: torch.Tensor      # [out, r]
    scale: float


class LoraAdapter:
    def __init__(self, adapter_id: str, weights: dict[tuple[int, str], LoraWeights], nbytes: int):
        self.adapter_id = adapter_id
        self.weights = weights
        self.nbytes = nbytes

    @classmethod
    def from_peft_dir(cls, path: Path | str, cfg: LlamaConfig, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32, adapter_id: str | None = None) -> "LoraAdapter":
        path = Path(path)
        try:
            config = json.loads((path / CONFIG_FILE).read_text())
        except (OSError, ValueError) as e:
            raise AdapterFormatError(f"cannot read {CONFIG_FILE}: {e}") from e
        with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            plans = plan_adapter(config, shapes, cfg)
            weights, nbytes = {}, 0
            for p in plans:
                a = f.get_tensor(p.a_key).to(device=device, dtype=dtype)
                b = f.get_tensor(p.b_key).to(device=device, dtype=dtype)
                nbytes += a.numel() * a.element_size() + b.numel() * b.element_size()
                weights[(p.layer, p.module)] = LoraWeights(a.contiguous(), b.contiguous(), p.scale)
        return cls(adapter_id or path.name, weights, nbytes)

    @classmethod
    def from_peft_bytes(cls, config_json: bytes, safetensors_bytes: bytes, cfg: LlamaConfig,
                        adapter_id: str, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> "LoraAdapter":
        """The same as from_peft_dir, from the files' bytes in host staging memory."""
        from safetensors.torch import load

        try:
            config = json.loads(config_json)
        except ValueError as e:
            raise AdapterFormatError(f"cannot read {CONFIG_FILE}: {e}") from e
        tensors = load(bytes(safetensors_bytes))
        plans = plan_adapter(config, {k: tuple(t.shape) for k, t in tensors.items()}, cfg)
        weights, nbytes = {}, 0
        for p in plans:
            a = tensors[p.a_key].to(device=device, dtype=dtype)
            b = tensors[p.b_key].to(device=device, dtype=dtype)
            nbytes += a.numel() * a.element_size() + b.numel() * b.element_size()
            weights[(p.layer, p.module)] = LoraWeights(a.contiguous(), b.contiguous(), p.scale)
        return cls(adapter_id, weights, nbytes)

