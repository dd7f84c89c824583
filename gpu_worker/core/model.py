"""A Llama-family decoder in torch over a paged KV cache.

RMSNorm, rotary position embeddings (with the config's rope scaling), grouped
query attention and a SwiGLU MLP; embeddings may be tied to the LM head. One
forward runs a flat batch in which prefill chunks and single decode tokens of
different sequences are mixed; linear layers (and LoRA) see all tokens at
once, and attention runs batched over every sequence's pages (attention.py).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open

from .attention import AttentionMeta, paged_attention
from .kv_cache import PagedKVCache
from .packed_linear import PackedWeights, available as packing_available
from chameleon_common.model_config import LlamaConfig
from .profiling import ATTENTION, BASE_LINEAR, LORA, scope


QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")


class LoraDelta(Protocol):
    """The LoRA of one forward pass (gpu_worker.lora.backend.LoraStep)."""

    def add(self, layer: int, modules: Sequence[str], x: torch.Tensor, y: torch.Tensor) -> None:
        """y [T, sum of the modules' outputs] += each token's adapter's LoRA of x [T, in]."""


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor        # [T] sequences concatenated
    positions: torch.Tensor        # [T]
    query_lens: list[int]          # tokens of each sequence in this step
    context_lens: list[int]        # tokens of each sequence in the cache after this step
    block_tables: list[list[int]]  # pages of each sequence
    slot_mapping: torch.Tensor     # [T] flat cache slot of each token


def rope_inv_freq(cfg: LlamaConfig) -> torch.Tensor:
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    kind, s = cfg.rope_type, cfg.rope_scaling or {}
    if kind == "linear":
        inv = inv / float(s["factor"])
    elif kind == "llama3":
        factor, lo, hi = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
        old = float(s["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


class LlamaModel:
    def __init__(self, config: LlamaConfig, weights: dict[str, torch.Tensor], device: torch.device,
                 dtype: torch.dtype, pack_weights: bool | None = None):
        """`pack_weights`: pre-pack the linear layers for MKL at a steady decode batch size
        (packed_linear.py); None = wherever that is available (fp32 on an MKL CPU build)."""
        self.config, self.device, self.dtype = config, torch.device(device), dtype

        def w(name: str) -> torch.Tensor:
            if name not in weights:
                raise ValueError(f"model weights lack {name}")
            return weights[name].to(device=self.device, dtype=dtype).contiguous()

        self.embed = w("model.embed_tokens.weight")
        self.lm_head = (self.embed if config.tie_word_embeddings or "lm_head.weight" not in weights
                        else w("lm_head.weight"))
        self.norm = w("model.norm.weight")
        self.layers = []
        for i in range(config.num_layers):
            p = f"model.layers.{i}."
            self.layers.append({
                "in_norm": w(p + "input_layernorm.weight"), "post_norm": w(p + "post_attention_layernorm.weight"),
                **{m: w(p + f"self_attn.{m}.weight") for m in ("q_proj", "k_proj", "v_proj", "o_proj")},
                **{m: w(p + f"mlp.{m}.weight") for m in ("gate_proj", "up_proj", "down_proj")}})
            lw = self.layers[-1]
            # q/k/v and gate/up share their input: one matmul each (the views stay valid)
            lw["qkv_proj"] = torch.cat([lw.pop(m) for m in QKV])
            lw["gate_up_proj"] = torch.cat([lw.pop(m) for m in GATE_UP])
        self.inv_freq = rope_inv_freq(config).to(self.device)
        if pack_weights is None:
            pack_weights = dtype == torch.float32 and packing_available(self.device)
        self.packed: PackedWeights | None = None
        if pack_weights:
            self.packed = PackedWeights(
                {**{f"{i}.{n}": lw[n] for i, lw in enumerate(self.layers)
                    for n in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")},
                 "lm_head": self.lm_head})

    @classmethod
    def load(cls, model_dir: Path | str, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, pack_weights: bool | None = None) -> "LlamaModel":
        model_dir = Path(model_dir)
        cfg = LlamaConfig.from_hf_dir(model_dir)
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise ValueError(f"{model_dir} holds no *.safetensors weights")
        weights: dict[str, torch.Tensor] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    weights[k] = sf.get_tensor(k)
        return cls(cfg, weights, torch.device(device), dtype, pack_weights)

    def _linear(self, x: torch.Tensor, layer: int, name: str, lora: LoraDelta | None,
                modules: Sequence[str] | None = None) -> torch.Tensor:
        """x @ W^T plus LoRA; `modules` name the LoRA modules a fused weight stacks."""
        with scope(BASE_LINEAR):
            y = (self.packed.linear(x, f"{layer}.{name}") if self.packed is not None
                 else x @ self.layers[layer][name].t())
        if lora is not None:
            with scope(LORA):
                lora.add(layer, modules or (name,), x, y)
        return y

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, kv: PagedKVCache, lora: LoraDelta | None = None) -> torch.Tensor:
        """Logits of each sequence's last token in this step: [num_seqs, vocab]."""
        c = self.config
        nh, kvh, hd = c.num_heads, c.num_kv_heads, c.head_dim
        x = self.embed[batch.input_ids]
        T = x.shape[0]
        if self.packed is not None:
            self.packed.observe(T)
        freqs = batch.positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(self.dtype)[:, None, :], emb.sin().to(self.dtype)[:, None, :]
        # RoPE's rotate_half(x) = cat(-x2, x1) is roll(x, hd/2) with the first half negated, so
        # rotate_half(x) * sin == roll(x) * sin_signed exactly (a sign flip rounds nothing),
        # one op per layer instead of a negation and a concatenation
        h2 = hd // 2
        sin_signed = torch.cat((-sin[..., :h2], sin[..., h2:]), dim=-1)
        with scope(ATTENTION):
            meta = AttentionMeta.build(batch.query_lens, batch.context_lens, batch.block_tables,
                                       kv.block_size, nh // kvh, self.device)
            # the cache slots of this step's tokens, the same in every layer
            where = kv.slots(batch.slot_mapping)
        for i, lw in enumerate(self.layers):
            h = rms_norm(x, lw["in_norm"], c.rms_norm_eps)
            qkv = self._linear(h, i, "qkv_proj", lora, QKV)
            with scope(ATTENTION):  # rotary embeddings, the cache write and attention
                # q and k rotate together: one view over their columns of the fused output
                qk = qkv[:, :(nh + kvh) * hd].view(T, nh + kvh, hd)
                qk = qk * cos + qk.roll(h2, dims=-1) * sin_signed
                q, k = qk[:, :nh], qk[:, nh:]
                v = qkv[:, (nh + kvh) * hd:].view(T, kvh, hd)
                kv.write_at(i, where, k, v)
                attn = paged_attention(q, kv, i, meta)
            x = x + self._linear(attn, i, "o_proj", lora)
            h = rms_norm(x, lw["post_norm"], c.rms_norm_eps)
            g, u = self._linear(h, i, "gate_up_proj", lora, GATE_UP).chunk(2, dim=-1)
            x = x + self._linear(F.silu(g) * u, i, "down_proj", lora)
        last = torch.tensor(list(itertools.accumulate(batch.query_lens)), device=self.device) - 1
        h = rms_norm(x[last], self.norm, c.rms_norm_eps)
        with scope(BASE_LINEAR):
            logits = (self.packed.linear(h, "lm_head") if self.packed is not None
                      else h @ self.lm_head.t())
            return logits.float()
