"""A tiny random Llama in Hugging Face layout, for fast tests of the serving stack.

It uses the real SmolLM2 tokenizer (read from the GGUF metadata, never its weights), so text
in and text out look like the demo model's, while the network itself is small enough to run
on a CPU in milliseconds.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch

from clients.assets.gguf_to_hf import find_smollm2_gguf
from clients.assets.gguf_tokenizer import read_tokenizer_spec_from_file, write_tokenizer_files
from clients.assets.hf_folder import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    LlamaShape,
    generation_config,
    llama_config,
    read_json,
    save_tensors,
    staged_dir,
    write_json,
)

TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_HEAD_DIM = 16
TINY_INTERMEDIATE = 160
TINY_MAX_POSITIONS = 256
TINY_ROPE_THETA = 10000.0


def tiny_llama_shape(vocab_size: int, rope_scaling: dict[str, Any] | None = None) -> LlamaShape:
    return LlamaShape(
        vocab_size=vocab_size,
        hidden_size=TINY_HIDDEN,
        intermediate_size=TINY_INTERMEDIATE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_KV_HEADS,
        head_dim=TINY_HEAD_DIM,
        max_position_embeddings=TINY_MAX_POSITIONS,
        rms_norm_eps=1e-5,
        rope_theta=TINY_ROPE_THETA,
        rope_scaling=rope_scaling,
        tie_word_embeddings=True,
    )


def random_llama_weights(shape: LlamaShape, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic weights for `seed`, drawn in a fixed order from one generator.

    Scales are chosen so the logits spread widely (std ~ sqrt(hidden)): greedy decoding then
    has clear winners, and two correct implementations agree on the argmax.
    """
    generator = torch.Generator().manual_seed(seed)

    def matrix(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=generator) / math.sqrt(cols)

    def norm() -> torch.Tensor:
        # Not all ones, so an implementation that skips a norm weight gives other results.
        return 1.0 + 0.1 * torch.randn(shape.hidden_size, generator=generator)

    h, inter = shape.hidden_size, shape.intermediate_size
    tensors = {"model.embed_tokens.weight": torch.randn(shape.vocab_size, h, generator=generator)}
    for i in range(shape.num_hidden_layers):
        prefix = f"model.layers.{i}"
        tensors[f"{prefix}.input_layernorm.weight"] = norm()
        tensors[f"{prefix}.self_attn.q_proj.weight"] = matrix(shape.q_size, h)
        tensors[f"{prefix}.self_attn.k_proj.weight"] = matrix(shape.kv_size, h)
        tensors[f"{prefix}.self_attn.v_proj.weight"] = matrix(shape.kv_size, h)
        tensors[f"{prefix}.self_attn.o_proj.weight"] = matrix(h, shape.q_size)
        tensors[f"{prefix}.post_attention_layernorm.weight"] = norm()
        tensors[f"{prefix}.mlp.gate_proj.weight"] = matrix(inter, h)
        tensors[f"{prefix}.mlp.up_proj.weight"] = matrix(inter, h)
        tensors[f"{prefix}.mlp.down_proj.weight"] = matrix(h, inter)
    tensors["model.norm.weight"] = norm()
    if not shape.tie_word_embeddings:
        tensors["lm_head.weight"] = matrix(shape.vocab_size, h)
    return tensors


def make_tiny_llama(
    out_dir: Path | str,
    seed: int = 0,
    *,
    rope_scaling: dict[str, Any] | None = None,
    tokenizer_dir: Path | str | None = None,
) -> Path:
    """Write a tiny random Llama folder into `out_dir` (replaced if present).

    rope_scaling: optional HF rope scaling dict, e.g. {"rope_type": "linear", "factor": 2.0}.
    tokenizer_dir: a folder holding the SmolLM2 tokenizer.json/tokenizer_config.json to copy
    (e.g. the converted SmolLM2); by default the tokenizer is rebuilt from the GGUF metadata.
    """
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as scratch:
        if tokenizer_dir is not None:
            source = Path(tokenizer_dir)
            shutil.copyfile(source / TOKENIZER_FILE, scratch / TOKENIZER_FILE)
            tokenizer_settings = read_json(source / TOKENIZER_CONFIG_FILE)
            tokenizer_settings["model_max_length"] = TINY_MAX_POSITIONS
            write_json(scratch / TOKENIZER_CONFIG_FILE, tokenizer_settings)
            source_config = read_json(source / CONFIG_FILE)
            vocab_size = int(source_config["vocab_size"])
            ids = {k: source_config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        else:
            spec = read_tokenizer_spec_from_file(find_smollm2_gguf())
            write_tokenizer_files(spec, scratch, TINY_MAX_POSITIONS)
            vocab_size = spec.vocab_size
            ids = {
                "bos_token_id": spec.bos_token_id,
                "eos_token_id": spec.eos_token_id,
                "pad_token_id": spec.pad_token_id,
            }
        shape = tiny_llama_shape(vocab_size, rope_scaling)
        save_tensors(random_llama_weights(shape, seed), scratch / WEIGHTS_FILE)
        write_json(scratch / CONFIG_FILE, llama_config(shape, **ids))
        write_json(scratch / GENERATION_CONFIG_FILE, generation_config(**ids))
    return out_dir
