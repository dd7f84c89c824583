"""The Triton kernels against the reference ops (in the CPU interpreter without CUDA), and
the reference against LoRA computed from the dense weights."""
from __future__ import annotations

import pytest
import torch

from gpu_worker.lora.reference import lora_expand_ref, lora_shrink_ref

from .lora_cases import GROUPS, SLOT_WIDTH, dense_delta, make_case, module_ids, widths

triton = pytest.importorskip("triton")
from gpu_worker.lora.lora_expand import lora_expand  # noqa: E402
from gpu_worker.lora.lora_shrink import lora_shrink  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-2, 2e-2), torch.bfloat16: (6e-2, 6e-2)}
# small tiles keep the interpreter quick and exercise the masks (dims 24..56, ranks to 256)
SMALL = {"shrink": {"BLOCK_M": 16, "BLOCK_R": 16, "BLOCK_K": 16},
         "expand": {"BLOCK_M": 16, "BLOCK_R": 16, "BLOCK_N": 16}}
BF16 = pytest.param(torch.bfloat16, id="bf16-fp32acc",
                    marks=pytest.mark.interpreter_upcast)  # see _triton.upcast: triton #11584


def run_both(case, group, dtype, layer=1, config=True):
    mods = GROUPS[group]
    K = 56 if group == "down" else 40
    gen = torch.Generator().manual_seed(7)
    dev = case.pool.device
    x = torch.randn(case.meta.num_tokens, K, generator=gen).to(dev, dtype)
    y0 = torch.randn(case.meta.num_tokens, sum(widths(mods)), generator=gen).to(dev, dtype)
    ids, w = module_ids(mods), widths(mods)
    z_ref = lora_shrink_ref(x, case.pool, case.meta, layer, ids, SLOT_WIDTH)
    y_ref = y0.clone()
    lora_expand_ref(z_ref, y_ref, case.pool, case.meta, layer, ids, w, SLOT_WIDTH)
    cfg_s = SMALL["shrink"] if config else None
    cfg_e = SMALL["expand"] if config else None
    if case.meta.decode and config:
        cfg_s = {k: v for k, v in cfg_s.items() if k != "BLOCK_M"}
        cfg_e = {k: v for k, v in cfg_e.items() if k != "BLOCK_M"}
    meta = case.meta
    z = lora_shrink(x, case.pool, meta, layer, ids, SLOT_WIDTH, config=cfg_s)
    y = y0.clone()
    lora_expand(z, y, case.pool, meta, layer, ids, w, SLOT_WIDTH, config=cfg_e)
    return x, y0, z_ref, y_ref, z, y


def none_tokens(case):
    out, pos = [], 0
    for ad, q in zip(case.adapters, case.query_lens):
        if ad is None:
            out += range(pos, pos + q)
        pos += q
    return out


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("popularity", ["distinct", "uniform", "zipf", "identical"])
@pytest.mark.parametrize("ranks", [[1], [3, 17], [8, 16, 64, 256], [5, 7, 11, 13, 31, 100]],
                         ids=["r1", "r3-17", "r8-256", "r5-100"])
def test_kernels_match_reference_fp32(ranks, popularity, phase):
    case = make_case(len(ranks) * 10 + len(popularity), ranks, n_seqs=9, popularity=popularity,
                     phase=phase, device=DEVICE)
    for group in ("qkv", "down"):
        x, y0, z_ref, y_ref, z, y = run_both(case, group, torch.float32)
        torch.testing.assert_close(z, z_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
        base = none_tokens(case)
        assert torch.equal(y[base], y0[base]), "a token without adapter was changed"


@pytest.mark.parametrize("dtype", [torch.float16, BF16])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_kernels_match_reference_half(dtype, phase):
    case = make_case(3, [4, 24, 130], n_seqs=7, popularity="uniform", phase=phase, dtype=dtype, device=DEVICE)
    for group in ("qkv", "gate_up"):
        _x, y0, z_ref, y_ref, z, y = run_both(case, group, dtype)
        rtol, atol = TOL[dtype]
        torch.testing.assert_close(z, z_ref, rtol=rtol, atol=atol)
        torch.testing.assert_close(y.float(), y_ref.float(), rtol=rtol, atol=atol)
        base = none_tokens(case)
        assert torch.equal(y[base], y0[base])


def test_default_launch_configs_match_reference():
    """The launch configs the engine uses (the data in configs.py), not just the test tiles."""
    for phase in ("prefill", "decode"):
        case = make_case(11, [2, 40, 256], n_seqs=6, popularity="zipf", phase=phase, device=DEVICE)
        _x, _y0, z_ref, y_ref, z, y = run_both(case, "gate_up", torch.float32, layer=0, config=False)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_reference_equals_dense_lora(phase):
    case = make_case(5, [1, 6, 33, 256], n_seqs=10, popularity="zipf", phase=phase, device=DEVICE)
    for group in GROUPS:
        x, y0, _z, y_ref, *_ = run_both(case, group, torch.float32, layer=0)
        expected = y0 + dense_delta(case, 0, GROUPS[group], x)
        torch.testing.assert_close(y_ref, expected, rtol=1e-4, atol=1e-4)


def test_step_without_adapters_leaves_y_alone():
    case = make_case(2, [8], n_seqs=3, popularity="identical", phase="prefill", base_every=1,
                     device=DEVICE)
    assert case.meta.n_active == 0
    _x, y0, _zr, y_ref, z, y = run_both(case, "qkv", torch.float32)
    assert torch.equal(y, y0) and torch.equal(y_ref, y0) and not z.any()


def test_launchers_check_their_arguments():
    case = make_case(1, [4], n_seqs=2, popularity="identical", phase="decode", device=DEVICE)
    x = torch.randn(2, 40, device=DEVICE)
    ids = module_ids(GROUPS["qkv"])
    with pytest.raises(ValueError, match="contiguous"):
        lora_shrink(torch.randn(40, 2, device=DEVICE).t(), case.pool, case.meta, 0, ids, SLOT_WIDTH)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        lora_shrink(x.double(), case.pool, case.meta, 0, ids, SLOT_WIDTH)
    with pytest.raises(ValueError, match="pool is"):
        lora_shrink(x.half(), case.pool, case.meta, 0, ids, SLOT_WIDTH)
    with pytest.raises(ValueError, match="tokens"):
        lora_shrink(torch.randn(3, 40, device=DEVICE), case.pool, case.meta, 0, ids, SLOT_WIDTH)
    z = lora_shrink(x, case.pool, case.meta, 0, ids, SLOT_WIDTH)
    with pytest.raises(ValueError, match="out_widths"):
        lora_expand(z, torch.zeros(2, 88, device=DEVICE), case.pool, case.meta, 0, ids, (40, 24), SLOT_WIDTH)
    with pytest.raises(ValueError, match="z must be"):
        lora_expand(z[:2], torch.zeros(2, 88, device=DEVICE), case.pool, case.meta, 0, ids, (40, 24, 24), SLOT_WIDTH)
