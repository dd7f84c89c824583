"""Per-step LoRA metadata, shared by the torch path and the Triton kernels.

Preallocated once at its largest size (the step's token budget, one slot per running
request) and refreshed every step:

- `order` [n_active]: the step's tokens that have an adapter, sorted by adapter slot
  (stable, so a sequence's tokens stay in order); tokens with no adapter are left out;
- `token_slot` [n_active]: the slot of each of them;
- `seg_start` [n_segments + 1], `seg_slot` [n_segments]: segments of `order` that
  share one adapter and that adapter's slot;
- `rows` [slots, layers, modules, 2, R], `ranks` and `scales` [slots, layers,
  modules]: the row tables of the adapters in the step, stacked. An adapter's table
  (built once at install time, lora/rows.py) is copied into a free slot when the
  adapter joins the running set and stays there while it keeps being used, so
  steady decoding copies nothing.
"""
from __future__ import annotations

import torch

from .rows import LORA_MODULES, PooledLora


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class LoraKernelMeta:
    def __init__(self, num_layers: int, max_slots: int, max_tokens: int, device: torch.device,
                 max_rank: int = 16):
        if num_layers <= 0 or max_slots <= 0 or max_tokens <= 0 or max_rank <= 0:
            raise ValueError("num_layers, max_slots, max_tokens and max_rank must be positive")
        self.num_layers, self.max_slots, self.max_tokens = num_layers, max_slots, max_tokens
        self.device = torch.device(device)
        M = len(LORA_MODULES)
        self.rows = torch.zeros(max_slots, num_layers, M, 2, _pow2(max_rank), dtype=torch.int32,
                                device=self.device)
        self.ranks = torch.zeros(max_slots, num_layers, M, dtype=torch.int32, device=self.device)
        self.scales = torch.zeros(max_slots, num_layers, M, dtype=torch.float32, device=self.device)
        self._order = torch.zeros(max_tokens, dtype=torch.int32, device=self.device)
        self._token_slot = torch.zeros(max_tokens, dtype=torch.int32, device=self.device)
        self._seg_start = torch.zeros(max_slots + 1, dtype=torch.int32, device=self.device)
        self._seg_slot = torch.zeros(max_slots, dtype=torch.int32, device=self.device)
        self._slot_uid: list[int | None] = [None] * max_slots
        self._slot_of: dict[int, int] = {}
        self._last_used: list[int] = [-1] * max_slots
        self._step = 0
        self.copies = 0  # row tables copied into slots so far (observability, tests)
        self._clear()

    def _clear(self) -> None:
        self.num_tokens = self.n_active = self.n_segments = self.max_seg_len = self.max_rank = 0
        self.decode = False
        self.seg_bounds: list[tuple[int, int]] = []   # host copy of the segments
        self.seg_slots: list[int] = []
        self.seg_ranks: list[int] = []                # each segment's adapter's largest rank
        self.order_host = torch.zeros(0, dtype=torch.long)

    def slot_uid(self, slot: int) -> int | None:
        """The install id of the adapter whose row table is in `slot`."""
        return self._slot_uid[slot]

    @property
    def table_rank(self) -> int:
        return int(self.rows.shape[-1])

    # -- slots ------------------------------------------------------------
    def _grow_rank(self, rank: int) -> None:
        R = _pow2(rank)
        rows = torch.zeros(*self.rows.shape[:-1], R, dtype=torch.int32, device=self.device)
        rows[..., :self.table_rank] = self.rows
        self.rows = rows

    def _slot(self, ad: PooledLora, in_step: set[int]) -> int:
        slot = self._slot_of.get(ad.uid)
        if slot is None:
            # a slot no adapter of this step uses, least recently used first
            free = [s for s in range(self.max_slots) if self._slot_uid[s] not in in_step]
            if not free:
                raise ValueError(f"a step uses more than {self.max_slots} distinct adapters")
            slot = min(free, key=lambda s: self._last_used[s])
            old = self._slot_uid[slot]
            if old is not None:
                del self._slot_of[old]
            if ad.rank > self.table_rank:
                self._grow_rank(ad.rank)
            R = ad.rank
            self.rows[slot, :, :, :, :R] = ad.rows
            # past the adapter's rank: its row 0, so every read stays on real weights
            self.rows[slot, :, :, :, R:] = ad.rows[..., :1]
            self.ranks[slot] = ad.ranks
            self.scales[slot] = ad.scales
            self._slot_uid[slot], self._slot_of[ad.uid] = ad.uid, slot
            self.copies += 1
        self._last_used[slot] = self._step
        return slot

    # -- per step ---------------------------------------------------------
    def refresh(self, adapters: list[PooledLora | None], query_lens: list[int]) -> bool:
        """Fill in this step's segments; False when no token of the step has an adapter."""
        if len(adapters) != len(query_lens):
            raise ValueError("one adapter entry per sequence")
        self._step += 1
        self._clear()
        T = sum(query_lens)
        if T > self.max_tokens:
            raise ValueError(f"step has {T} tokens, the metadata holds {self.max_tokens}")
        self.num_tokens = T
        self.decode = all(q == 1 for q in query_lens)
        in_step = {a.uid for a in adapters if a is not None}
        if not in_step:
            return False
        none = self.max_slots  # sorts after every slot
        seq_slots = [self._slot(a, in_step) if a is not None else none for a in adapters]
        counts: dict[int, int] = {}
        ranks: dict[int, int] = {}
        for a, s, q in zip(adapters, seq_slots, query_lens):
            if a is not None:
                counts[s] = counts.get(s, 0) + q
                ranks[s] = a.rank
        key = torch.repeat_interleave(torch.tensor(seq_slots), torch.tensor(query_lens))
        sorted_key, order = torch.sort(key, stable=True)
        n = T - sum(q for a, q in zip(adapters, query_lens) if a is None)
        self.order_host = order[:n]
        self._order[:n].copy_(order[:n], non_blocking=True)
        self._token_slot[:n].copy_(sorted_key[:n], non_blocking=True)
        pos, starts = 0, [0]
        for s in sorted(counts):
            self.seg_bounds.append((pos, pos + counts[s]))
            self.seg_slots.append(s)
            self.seg_ranks.append(ranks[s])
            pos += counts[s]
            starts.append(pos)
        S = len(self.seg_slots)
        self._seg_start[:S + 1].copy_(torch.tensor(starts, dtype=torch.int32), non_blocking=True)
        self._seg_slot[:S].copy_(torch.tensor(self.seg_slots, dtype=torch.int32), non_blocking=True)
        self.n_active, self.n_segments = n, S
        self.max_seg_len = max(counts.values())
        self.max_rank = max(ranks.values())
        return True

    # device views of the current step
    @property
    def order(self) -> torch.Tensor:
        return self._order[:self.n_active]

    @property
    def token_slot(self) -> torch.Tensor:
        return self._token_slot[:self.n_active]

    @property
    def seg_start(self) -> torch.Tensor:
        return self._seg_start[:self.n_segments + 1]

    @property
    def seg_slot(self) -> torch.Tensor:
        return self._seg_slot[:self.n_segments]
