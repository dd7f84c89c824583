"""Synthetic adapters for live-sim runs at paper scale (`--sim-catalog` / `--sim-adapters`).

The paper's setups (100 Llama-7B adapters of ranks 8-128 on q/k/v/o: ~1.6 GB at rank 128
alone, many GB in all) cannot be served as real files on a small machine. A `SimCatalog`
lists adapters by id, rank and target modules, with the byte size their fp16 weights
would have on the device profile's model, and serves no weights: StatAdapter and
ListAdapters answer as for real adapters (valid, with a digest over the description),
FetchAdapter fails with FAILED_PRECONDITION. `--sim-profile` workers only need the
description (their adapter copies are modelled); a model-running worker pointed at this
store gets that clear error instead of weights.

Reads answer like `AdapterCatalog`'s (async `list` / `stat`); `adapter_store/sim_store.py`
is the servicer that refuses fetches, pushes and deletes with that clear error.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

from .catalog import AdapterNotFound, AdapterRecord, FileRecord
from .refs import parse_ref


class SimCatalog:
    def __init__(self, adapters: Iterable[tuple[str, int]], target_modules: list[str],
                 bytes_per_rank: int):
        """`adapters`: (adapter id, rank); `bytes_per_rank`: weight bytes per unit of rank
        (A and B of every target module in every layer, at the profile's dtype)."""
        if bytes_per_rank <= 0 or not target_modules:
            raise ValueError("bytes_per_rank must be positive and target_modules non-empty")
        self._records: dict[str, AdapterRecord] = {}
        self.chunk_bytes = 1 << 20
        for aid, rank in adapters:
            if parse_ref(aid).version is not None:
                raise ValueError(f"a synthetic adapter is named without a version, got {aid!r}")
            if rank <= 0:
                raise ValueError(f"adapter {aid!r}: rank must be positive, got {rank}")
            if aid in self._records:
                raise ValueError(f"adapter {aid!r} is listed twice")
            digest = hashlib.sha256(f"sim:{aid}:r{rank}:{','.join(target_modules)}".encode()).hexdigest()
            self._records[aid] = AdapterRecord(
                adapter_id=aid, name=aid, rank=rank, lora_alpha=float(2 * rank), target_modules=list(target_modules),
                size_bytes=rank * bytes_per_rank, sha256=digest, valid=True,
                files=[FileRecord("synthetic (no weights)", 0, digest)])
        if not self._records:
            raise ValueError("a sim catalog needs at least one adapter")

    @classmethod
    def for_profile(cls, adapters: Iterable[tuple[str, int]], profile: str) -> "SimCatalog":
        """Sizes and modules of the device profile's model (sim/profiles)."""
        from sim.cost_model import CostModel

        cost = CostModel.from_profile(profile)
        return cls(adapters, list(cost.lora_modules), cost.adapter_bytes(1))

    async def list(self) -> list[AdapterRecord]:
        return [self._records[k] for k in sorted(self._records)]

    async def stat(self, ref_text: str) -> AdapterRecord:
        ref = parse_ref(ref_text)             # InvalidAdapterId for a malformed reference
        rec = self._records.get(ref.name) if ref.version is None else None
        if rec is None:
            raise AdapterNotFound(ref_text)
        return rec


NO_WEIGHTS = ("is synthetic (this store runs with a sim catalog): it has no weights to serve; "
              "only --sim-profile workers can use it")


def adapters_from_trace(path: str) -> list[tuple[str, int]]:
    """(id, rank) of every adapter in a workload trace (sim/workload.py JSONL)."""
    from sim.workload import Workload

    return [(a.adapter_id, a.rank) for a in Workload.load_jsonl(path).adapters]


def adapters_by_count(n: int) -> list[tuple[str, int]]:
    """`n` adapters spread evenly over the paper's ranks, named as the workload names them."""
    from sim.workload import WorkloadConfig, make_adapters

    return [(a.adapter_id, a.rank) for a in make_adapters(WorkloadConfig(num_adapters=n))]
