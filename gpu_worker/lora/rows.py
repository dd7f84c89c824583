"""Row tables: where each LoRA row of a resident adapter sits in the unified pool.

Built once when an adapter's weights are copied into its pages (UnifiedPool.install).
For every (layer, module) the table holds the slot index, within the layer's storage,
where row j of A (matrix 0) and of B^T (matrix 1) starts; a row of width w is the w
elements from `slot * slot_width` on. The kernels and the torch path read rows through
these tables where they sit: an adapter is never copied into a contiguous buffer.
"""
from __future__ import annotations

import itertools

import torch

# The LoRA-targetable linear layers, in the order of the tables' module axis.
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULE_INDEX = {m: i for i, m in enumerate(LORA_MODULES)}
A, B = 0, 1  # the matrix axis: rows of A [r, in] and of B^T [r, out]

_uids = itertools.count()


class PooledLora:
    """One resident adapter's row table.

    rows   int32 [layers, modules, 2, R]: slot where row j of A / B^T starts, R = the
           adapter's largest rank; entries past a module's rank repeat its row 0 (real
           weights, so a padded read is finite), 0 where the module has no LoRA
    ranks  int32 [layers, modules]: rank of each module (0 = no LoRA there)
    scales float32 [layers, modules]
    """

    def __init__(self, adapter_id: str, rows: torch.Tensor, ranks: torch.Tensor,
                 scales: torch.Tensor, ready: "torch.cuda.Event | None" = None):
        self.adapter_id = adapter_id
        self.rows, self.ranks, self.scales = rows, ranks, scales
        self.rank = int(rows.shape[-1])
        self.uid = next(_uids)  # identity that is never reused, unlike id()
        self.ready = ready      # None: the copy is done; else an event recorded after the copy

    def is_ready(self) -> bool:
        return self.ready is None or self.ready.query()

    @classmethod
    def from_starts(cls, adapter_id: str, num_layers: int,
                    starts: dict[tuple[int, str], tuple[list[int], list[int], float]],
                    device: torch.device, ready: "torch.cuda.Event | None" = None) -> "PooledLora":
        """`starts`: (layer, module) -> (slots of A's rows, slots of B^T's rows, scale)."""
        if not starts:
            raise ValueError(f"adapter {adapter_id!r} has no LoRA modules")
        R = max(len(a) for a, _b, _s in starts.values())
        rows = torch.zeros(num_layers, len(LORA_MODULES), 2, R, dtype=torch.int32)
        ranks = torch.zeros(num_layers, len(LORA_MODULES), dtype=torch.int32)
        scales = torch.zeros(num_layers, len(LORA_MODULES), dtype=torch.float32)
        for (layer, module), (a, b, scale) in starts.items():
            if len(a) != len(b) or not a:
                raise ValueError(f"{module} in layer {layer}: A has {len(a)} rows, B {len(b)}")
            m, r = MODULE_INDEX[module], len(a)
            for mat, slots in ((A, a), (B, b)):
                rows[layer, m, mat, :r] = torch.tensor(slots, dtype=torch.int32)
                rows[layer, m, mat, r:] = slots[0]
            ranks[layer, m], scales[layer, m] = r, scale
        return cls(adapter_id, rows.to(device), ranks.to(device), scales.to(device), ready)
