"""Hugging Face transformers + PEFT greedy generation: the parity reference (test-only)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=4)
def _base(model_dir: str):
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def hf_greedy(model_dir: Path, adapter_dir: Path | None, prompt: str, max_new_tokens: int) -> list[int]:
    """Generated token ids, stopping before the first EOS (the service does not emit EOS ids)."""
    from peft import PeftModel

    base, tok = _base(str(model_dir))
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    model = base
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.eos_token_id or 0)
    finally:
        if adapter_dir is not None:
            model.unload()  # restore the shared base model for the next reference
    gen = out[0, ids.shape[1]:].tolist()
    eos = set(base.generation_config.eos_token_id if isinstance(base.generation_config.eos_token_id, list)
              else [base.generation_config.eos_token_id])
    for i, t in enumerate(gen):
        if t in eos:
            return gen[:i]
    return gen
