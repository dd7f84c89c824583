"""The store's synthetic catalog for live-sim runs: described adapters, no weights."""
from __future__ import annotations

import asyncio

import pytest

from adapter_store.core.catalog import AdapterNotFound
from adapter_store.core.refs import InvalidAdapterId
from adapter_store.core.sim_catalog import SimCatalog, adapters_by_count, adapters_from_trace
from adapter_store.main import StoreConfig
from sim.cost_model import CostModel
from sim.workload import Workload, WorkloadConfig


def test_adapters_are_listed_with_the_profile_models_sizes():
    cost = CostModel.from_profile("a40-llama7b")
    cat = SimCatalog.for_profile(adapters_by_count(10), "a40-llama7b")
    recs = asyncio.run(cat.list())
    assert len(recs) == 10 and {r.rank for r in recs} == {8, 16, 32, 64, 128}
    r = asyncio.run(cat.stat("r128-000"))
    assert r.valid and r.size_bytes == cost.adapter_bytes(128) == 128 * 2 * 32 * 4 * 8192
    assert r.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"] and len(r.sha256) == 64
    with pytest.raises(AdapterNotFound):
        asyncio.run(cat.stat("nope"))
    with pytest.raises(AdapterNotFound):
        asyncio.run(cat.stat("r128-000@1"))     # synthetic adapters have no versions
    with pytest.raises(InvalidAdapterId):
        asyncio.run(cat.stat("../x"))
    with pytest.raises(ValueError, match="twice"):
        SimCatalog([("a", 8), ("a", 16)], ["q_proj"], 10)


def test_a_trace_names_its_adapters(tmp_path):
    wl = Workload.generate(WorkloadConfig(rps=1, duration_s=5, num_adapters=15, seed=1))
    wl.save_jsonl(tmp_path / "t.jsonl")
    assert adapters_from_trace(str(tmp_path / "t.jsonl")) == [(a.adapter_id, a.rank) for a in wl.adapters]


def test_store_flags_need_one_source_of_synthetic_adapters(tmp_path):
    StoreConfig(adapters=None, base_model=None, sim_profile="a40-llama7b", sim_adapters=5)
    with pytest.raises(ValueError, match="no --adapters"):
        StoreConfig(adapters=tmp_path, base_model=None, sim_profile="a40-llama7b", sim_adapters=5)
    with pytest.raises(ValueError, match="exactly one"):
        StoreConfig(adapters=None, base_model=None, sim_profile="a40-llama7b")
    with pytest.raises(ValueError, match="need --sim-profile"):
        StoreConfig(adapters=tmp_path, base_model=tmp_path, sim_adapters=5)
    with pytest.raises(ValueError, match="required"):
        StoreConfig(adapters=None, base_model=None)
    with pytest.raises(ValueError, match="unknown device profile"):
        StoreConfig(adapters=None, base_model=None, sim_profile="z80", sim_adapters=5)
