"""LoRA adapters in PEFT format and their batched application (torch path).

`LoraAdapter` holds, per (layer, module), A [r, in], B [out, r] and the scale.
`LoraBatch` applies the adapters of one engine step: tokens are grouped by
adapter (a gather through an index per adapter), each group runs two small
matmuls at its own rank, and the deltas are scattered back. Ranks therefore
mix freely in a batch without padding every adapter to the largest rank;
tokens of base-model requests get no delta at all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .model_config import LlamaConfig
from .peft_format import AdapterFormatError, AdapterShapeError, plan_adapter  # noqa: F401 (re-export)

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
        self.max_rank = max(w.a.shape[0] for w in weights.values())

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


class LoraBatch:
    """The adapters of one forward pass; `adapters[i]` serves sequence i (None = base)."""

    def __init__(self, adapters: list[LoraAdapter | None], query_lens: list[int],
                 device: torch.device | str | None = None):
        starts, pos = [], 0
        for q in query_lens:
            starts.append(pos)
            pos += q
        rows: dict[int, tuple[LoraAdapter, list[int]]] = {}
        for ad, s, q in zip(adapters, starts, query_lens):
            if ad is None:
                continue
            rows.setdefault(id(ad), (ad, []))[1].extend(range(s, s + q))
        if device is None:
            device = next((next(iter(a.weights.values())).a.device for a in adapters if a), "cpu")
        self.groups = [(ad, torch.tensor(idx, dtype=torch.long, device=device))
                       for ad, idx in rows.values()]

    def apply(self, layer: int, module: str, x: torch.Tensor) -> torch.Tensor | None:
        """x [T, in] -> the LoRA delta [T, out], or None when no adapter touches this module."""
        out = None
        for ad, idx in self.groups:
            w = ad.weights.get((layer, module))
            if w is None:
                continue
            delta = (x.index_select(0, idx) @ w.a.t()) @ w.b.t()
            if out is None:
                out = x.new_zeros(x.shape[0], w.b.shape[0])
            out.index_add_(0, idx, delta * w.scale)
        return out
