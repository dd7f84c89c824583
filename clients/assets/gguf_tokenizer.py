"""Rebuilding a Hugging Face `tokenizer.json` from the tokenizer metadata of a GGUF file.

llama.cpp stores a byte-level BPE ("gpt2") tokenizer as three arrays (tokens, token types,
merges), the special token ids, and the name of the pre-tokenizer regex set it uses. We turn
that back into a `tokenizers.Tokenizer` equal to the model's original tokenizer.json.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from clients.assets.hf_folder import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, write_json

# llama.cpp's token type enum: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

_MISSING = object()


def field_value(reader: GGUFReader, key: str, default: Any = _MISSING) -> Any:
    """The decoded value of one metadata key (scalars as Python values, arrays as lists)."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise KeyError(f"GGUF metadata has no key {key!r}")
        return default
    return field.contents()


@dataclass(frozen=True)
class GGUFTokenizerSpec:
    """What a GGUF says about its tokenizer."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_token_id: int | None
    eos_token_id: int | None
    unk_token_id: int | None
    pad_token_id: int | None
    add_bos_token: bool
    add_eos_token: bool
    chat_template: str | None

    def __post_init__(self) -> None:
        if self.model != "gpt2":
            raise ValueError(f"only byte-level BPE ('gpt2') GGUF tokenizers are supported, got {self.model!r}")
        if self.pre not in _PRE_TOKENIZERS:
            raise ValueError(f"unsupported GGUF pre-tokenizer {self.pre!r}; known: {sorted(_PRE_TOKENIZERS)}")
        if self.token_types and len(self.token_types) != len(self.tokens):
            raise ValueError("token_types and tokens differ in length")

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.tokens[token_id]


def read_tokenizer_spec(reader: GGUFReader) -> GGUFTokenizerSpec:
    def optional_id(key: str) -> int | None:
        value = field_value(reader, f"tokenizer.ggml.{key}", None)
        return None if value is None else int(value)

    return GGUFTokenizerSpec(
        model=str(field_value(reader, "tokenizer.ggml.model")),
        pre=str(field_value(reader, "tokenizer.ggml.pre", "default")),
        tokens=list(field_value(reader, "tokenizer.ggml.tokens")),
        token_types=[int(t) for t in field_value(reader, "tokenizer.ggml.token_type", [])],
        merges=list(field_value(reader, "tokenizer.ggml.merges")),
        bos_token_id=optional_id("bos_token_id"),
        eos_token_id=optional_id("eos_token_id"),
        unk_token_id=optional_id("unknown_token_id"),
        pad_token_id=optional_id("padding_token_id"),
        add_bos_token=bool(field_value(reader, "tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(field_value(reader, "tokenizer.ggml.add_eos_token", False)),
        chat_template=field_value(reader, "tokenizer.chat_template", None),
    )


@functools.lru_cache(maxsize=4)
def read_tokenizer_spec_from_file(gguf_path: Path) -> GGUFTokenizerSpec:
    """Cached per process: parsing the metadata of a GGUF takes seconds."""
    return read_tokenizer_spec(GGUFReader(str(gguf_path)))


def _byte_level_only() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)


def _digits_then_byte_level() -> pre_tokenizers.PreTokenizer:
    # llama.cpp's "smollm" regex set is "\p{N}" followed by GPT-2's regex; HF's SmolLM
    # tokenizer.json says the same with a Digits(individual) step before ByteLevel.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level_only()])


_PRE_TOKENIZERS = {
    "default": _byte_level_only,
    "gpt2": _byte_level_only,
    "smollm": _digits_then_byte_level,
}


def build_tokenizer(spec: GGUFTokenizerSpec) -> Tokenizer:
    vocab = {token: index for index, token in enumerate(spec.tokens)}
    if len(vocab) != len(spec.tokens):
        raise ValueError("GGUF vocabulary holds duplicate tokens")
    merges = []
    for merge in spec.merges:
        left, sep, right = merge.partition(" ")
        if not sep or not left or not right:
            raise ValueError(f"malformed merge {merge!r}")
        merges.append((left, right))
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = _PRE_TOKENIZERS[spec.pre]()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)

    special, user_defined = [], []
    for token, token_type in zip(spec.tokens, spec.token_types):
        if token_type == TOKEN_TYPE_CONTROL:
            special.append(AddedToken(token, special=True, normalized=False))
        elif token_type == TOKEN_TYPE_USER_DEFINED:
            # llama.cpp matches user-defined tokens (e.g. "<think>") whole, never via merges.
            user_defined.append(AddedToken(token, special=False, normalized=False))
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user_defined)
    if tokenizer.get_vocab_size(with_added_tokens=True) != spec.vocab_size:
        raise ValueError("added tokens changed the vocabulary size; GGUF token table is inconsistent")
    return tokenizer


def tokenizer_config(spec: GGUFTokenizerSpec, tokenizer: Tokenizer, model_max_length: int) -> dict[str, Any]:
    added = tokenizer.get_added_tokens_decoder()
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": spec.add_bos_token,
        "add_eos_token": spec.add_eos_token,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "bos_token": spec.token(spec.bos_token_id),
        "eos_token": spec.token(spec.eos_token_id),
        "unk_token": spec.token(spec.unk_token_id),
        "pad_token": spec.token(spec.pad_token_id),
        "additional_special_tokens": [t.content for _, t in sorted(added.items()) if t.special],
        "added_tokens_decoder": {
            str(index): {
                "content": t.content,
                "lstrip": t.lstrip,
                "rstrip": t.rstrip,
                "normalized": t.normalized,
                "single_word": t.single_word,
                "special": t.special,
            }
            for index, t in sorted(added.items())
        },
    }
    if spec.chat_template:
        config["chat_template"] = spec.chat_template
    return config


def write_tokenizer_files(spec: GGUFTokenizerSpec, out_dir: Path, model_max_length: int) -> Tokenizer:
    """Write tokenizer.json and tokenizer_config.json into `out_dir`; return the tokenizer."""
    tokenizer = build_tokenizer(spec)
    tokenizer.save(str(Path(out_dir) / TOKENIZER_FILE))
    write_json(Path(out_dir) / TOKENIZER_CONFIG_FILE, tokenizer_config(spec, tokenizer, model_max_length))
    return tokenizer
