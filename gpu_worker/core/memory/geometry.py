"""Page sizes of the unified pool, from the model's shape alone (no torch).

A page is one KV block: `block_size` tokens of K and V in every layer. The same
page seen from the LoRA side is `rows_per_page` slots of `row_width` elements
(layout.py). The torch pool (unified_pool.py) and the simulator's stand-in
(sim_pool.py) both size pages from here, so a rank-r adapter takes the same
pages in both.
"""
from __future__ import annotations

import math

from chameleon_common.model_config import LlamaConfig
from .layout import PageGeometry


def page_elements(cfg: LlamaConfig, block_size: int) -> int:
    """Elements of one page in one layer: K and V of `block_size` tokens."""
    return 2 * block_size * cfg.num_kv_heads * cfg.head_dim


def page_bytes_for(cfg: LlamaConfig, block_size: int, element_bytes: int) -> int:
    """Bytes of one page over all layers, for elements of `element_bytes` bytes."""
    if element_bytes <= 0:
        raise ValueError(f"element_bytes must be positive, got {element_bytes}")
    return cfg.num_layers * page_elements(cfg, block_size) * element_bytes


def row_geometry(cfg: LlamaConfig, block_size: int) -> PageGeometry:
    """Slots as wide as the greatest common divisor of every LoRA row length and the page, so
    rows of every width pack without padding (SmolLM2: 192-element slots for rows of 192, 576
    and 1536)."""
    page_elems = page_elements(cfg, block_size)
    lengths = {n for dims in cfg.module_shapes().values() for n in dims}
    longest = max(lengths)
    if longest > page_elems:
        raise ValueError(f"a KV page of {block_size} tokens ({page_elems} elements per layer) cannot "
                         f"hold a LoRA row of {longest} elements: raise --block-size to at least "
                         f"{-(-longest // (2 * cfg.num_kv_heads * cfg.head_dim))}")
    width = math.gcd(page_elems, *lengths)
    return PageGeometry(rows_per_page=page_elems // width, row_width=width)
