import json
import re
from pathlib import Path

import pytest

from sim.cost_model import PROFILE_DIR, CostModel, load_profile

PAPER_TTFT_MS = {8: 74.0, 16: 78.0, 32: 88.0, 64: 107.0, 128: 144.0}


def _policy_names() -> set[str]:
    from gpu_worker.core.memory import POLICY_NAMES as CACHE
    from scheduler_svc.core.policies import POLICY_NAMES as SCHED
    names = set(CACHE) | set(SCHED)
    try:
        from sim.policies import POLICIES
        names |= set(POLICIES)
    except ImportError:
        pass
    return names | {"slora", "vllm-lru", "chameleon", "fifo", "sjf", "lru", "fairshare"}


def test_no_policy_name_appears_in_the_cost_model_or_any_profile():
    files = [Path(__file__).parents[2] / "sim" / "cost_model.py", *PROFILE_DIR.glob("*.json")]
    assert len(files) >= 3
    for f in files:
        text = f.read_text().lower()
        for name in _policy_names():
            assert not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (f.name, name)


@pytest.mark.parametrize("rank", sorted(PAPER_TTFT_MS))
def test_single_request_ttft_matches_the_paper_within_5_percent(rank):
    cm = CostModel.from_profile("a40-llama7b")
    got = cm.single_request_ttft_s(cm.fitted.reference_prompt_tokens, rank) * 1000
    assert abs(got - PAPER_TTFT_MS[rank]) <= 0.05 * PAPER_TTFT_MS[rank], (rank, got)


def test_every_profile_names_its_sources_and_who_measured_it():
    for f in PROFILE_DIR.glob("*.json"):
        p = json.loads(f.read_text())
        assert p["name"] == f.stem and p["measured_by"]
        for part in ("model", "device", "calibration"):
            assert p[part]["source"], (f.name, part)


def test_fitted_rates_are_physically_plausible():
    cm = CostModel.from_profile("a40-llama7b")
    assert 0.1 < cm.fitted.compute_efficiency < 0.9      # achieved / peak FLOP rate
    assert 0.01 < cm.fitted.link_efficiency <= 1.0       # achieved / PCIe spec rate
    assert cm.fitted.max_rel_error < 0.02


def test_step_time_grows_with_batch_context_rank_and_h100_is_faster():
    a40, h100 = CostModel.from_profile("a40-llama7b"), CostModel.from_profile("h100-llama7b")
    base = a40.decode_s(8, 8 * 200, [16] * 8)
    assert a40.decode_s(16, 8 * 200, [16] * 8 + [0] * 8) > base
    assert a40.decode_s(8, 16 * 200, [16] * 8) > base
    assert a40.decode_s(8, 8 * 200, [128] * 8) > base
    assert a40.prefill_s(400, 8) > a40.prefill_s(200, 8)
    assert h100.decode_s(8, 8 * 200, [16] * 8) < base
    assert h100.copy_s(a40.adapter_bytes(64)) < a40.copy_s(a40.adapter_bytes(64))
    assert a40.step_s() == 0.0


def test_sizes_follow_llama7b_shapes():
    cm = CostModel.from_profile("a40-llama7b")
    assert cm.kv_bytes_per_token == 512 * 1024            # 2 x 32 layers x 4096 x fp16
    assert cm.adapter_bytes(1) == 2 * 1024 * 1024         # q/k/v/o, A and B, 32 layers, fp16
    assert cm.page_bytes(16) == 8 * 1024 * 1024
    pages = cm.pool_pages(16)
    assert pages * cm.page_bytes(16) <= 48 * 2**30 * 0.9 - cm.weight_bytes
    assert 3000 < pages < 5000


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="a40-llama7b"):
        load_profile("no-such-gpu")
