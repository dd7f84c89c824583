"""LoRA kernels on Llama-7B shapes: time, bytes moved and GB/s per case (`chameleon bench kernels`).

One layer's LoRA on all seven modules (q/k/v fused, o, gate/up fused, down) at rank 16,
adapters read where they sit in a unified pool, for decode batches of 1-256 tokens (one
token per request) and prefills of 128-8192 tokens split evenly over the requests, with
1-64 distinct adapters. Backends, in the same run: `reference` (lora/reference.py, the
per-adapter loop the kernels are checked against), `torch` (the batched torch path) and, on
CUDA only, `triton`; without CUDA the kernels are not run and the output says so. "bytes" counts what the op must move at least: activations in and
out, the intermediate z, and each distinct adapter's rows once.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from chameleon_common.model_config import LlamaConfig
from gpu_worker.core.unified_pool import StagedAdapter, UnifiedPool, adapter_shape
from gpu_worker.lora.backend import LoraRunner
from gpu_worker.lora.reference import lora_expand_ref, lora_shrink_ref
from gpu_worker.lora.rows import LORA_MODULES, MODULE_INDEX
from clients.bench._io import write_json

RANK = 16
GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))
DECODE = (1, 16, 64, 256)
PREFILL = (128, 1024, 8192)
ADAPTERS = (1, 8, 64)
QUICK = {"decode": (1, 16, 64), "prefill": (128, 512), "adapters": (1, 8)}


def llama7b_one_layer() -> LlamaConfig:
    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=1,
                       num_heads=32, num_kv_heads=32, head_dim=128)


def _random_staged(cfg: LlamaConfig, i: int, gen: torch.Generator) -> StagedAdapter:
    weights = {}
    for m, (n_in, n_out) in cfg.module_shapes().items():
        a = torch.randn(RANK, n_in, generator=gen) / n_in ** 0.5
        b = torch.randn(n_out, RANK, generator=gen) / RANK
        weights[(0, m)] = (a, b, 2.0)
    nbytes = sum((a.numel() + b.numel()) * 2 for a, b, _s in weights.values())
    return StagedAdapter(f"bench-{i}", "", adapter_shape(cfg, weights), weights, nbytes)


def device_bandwidth_gbps(device: torch.device) -> float | None:
    """Peak memory bandwidth from the device's memory clock and bus width, if torch reports them."""
    if device.type != "cuda":
        return None
    p = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(p, "memory_clock_rate", 0), getattr(p, "memory_bus_width", 0)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate


def _bytes_moved(cfg: LlamaConfig, tokens: int, adapters: int, elem: int) -> int:
    total = 0
    dims = cfg.module_shapes()
    for group in GROUPS:
        k = dims[group[0]][0]
        n = sum(dims[m][1] for m in group)
        total += tokens * k * elem                        # x
        total += 2 * tokens * RANK * len(group) * 4       # z written and read (float32)
        total += 2 * tokens * n * elem                    # y read and written
        total += adapters * RANK * (k * len(group) + n) * elem  # A and B^T rows
    return total


def _time_ms(fn, device: torch.device, reps: int) -> float:
    fn()  # warm-up (and the kernels' compilation on CUDA)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def run_kernels_bench(quick: bool, device: str | None = None, reps: int | None = None) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    backends = (["triton"] if dev.type == "cuda" else []) + ["torch", "reference"]
    decode = QUICK["decode"] if quick else DECODE
    prefill = QUICK["prefill"] if quick else PREFILL
    n_adapters = QUICK["adapters"] if quick else ADAPTERS
    reps = reps or (3 if dev.type == "cpu" else 20)
    cfg = llama7b_one_layer()
    gen = torch.Generator().manual_seed(0)
    staged = [_random_staged(cfg, i, gen) for i in range(max(n_adapters))]
    probe = UnifiedPool(cfg, 1, 16, torch.device("cpu"), dtype)
    layouts = [probe.layout(s) for s in staged]
    pages = sum(l.num_pages for l in layouts)
    max_tokens = max(max(decode), max(prefill))
    pool = UnifiedPool(cfg, pages + 1, 16, dev, dtype)
    pooled, next_page = [], 1  # page 0 stays free: no adapter starts at the pool's first slot
    for s, layout in zip(staged, layouts):
        ids = list(range(next_page, next_page + layout.num_pages))
        next_page += layout.num_pages
        pooled.append(pool.install(s, layout, ids))
    dims = cfg.module_shapes()
    bw = device_bandwidth_gbps(dev)
    cases = []
    for phase, sizes in (("decode", decode), ("prefill", prefill)):
        for tokens in sizes:
            for n in n_adapters:
                if n > tokens:
                    continue
                runner_by = {b: LoraRunner("torch" if b == "reference" else b, pool.storage, pool.geometry.row_width, cfg,
                                           max(tokens, n) if phase == "decode" else n, max_tokens)
                             for b in backends}
                if phase == "decode":
                    qlens = [1] * tokens
                    ads = [pooled[i % n] for i in range(tokens)]
                else:
                    qlens = [tokens // n + (1 if i < tokens % n else 0) for i in range(n)]
                    ads = pooled[:n]
                xs = {g: torch.randn(tokens, dims[g[0]][0], device=dev, dtype=dtype) for g in GROUPS}
                ys = {g: torch.zeros(tokens, sum(dims[m][1] for m in g), device=dev, dtype=dtype)
                      for g in GROUPS}
                nbytes = _bytes_moved(cfg, tokens, n, torch.empty((), dtype=dtype).element_size())
                for b, runner in runner_by.items():
                    def one_layer(runner=runner, b=b):
                        step = runner.step(ads, qlens)
                        for g in GROUPS:
                            if b == "reference":
                                ids = tuple(MODULE_INDEX[m] for m in g)
                                z = lora_shrink_ref(xs[g], pool.storage, runner.meta, 0, ids,
                                                    pool.geometry.row_width)
                                lora_expand_ref(z, ys[g], pool.storage, runner.meta, 0, ids,
                                                tuple(dims[m][1] for m in g), pool.geometry.row_width)
                            else:
                                step.add(0, g, xs[g], ys[g])
                    ms = _time_ms(one_layer, dev, reps)
                    gbps = nbytes / (ms / 1000.0) / 1e9
                    cases.append({"phase": phase, "tokens": tokens, "adapters": n, "backend": b,
                                  "ms": ms, "gbps": gbps, "bytes": nbytes,
                                  "bandwidth_ratio": gbps / bw if bw else None})
    label = "GPU" if dev.type == "cuda" else "live on CPU"
    return {"label": label, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "dtype": str(dtype).removeprefix("torch."), "rank": RANK, "modules": list(LORA_MODULES),
            "device_bandwidth_gbps": bw, "backends": backends, "reps": reps, "cases": cases}


def format_table(result: dict) -> str:
    lines = [f"LoRA of one Llama-7B layer (7 modules, rank {result['rank']}, {result['dtype']}) on "
             f"{result['device']} [{result['label']}]; median of {result['reps']} runs"]
    if "triton" not in result["backends"]:
        lines.append("no CUDA device: the Triton kernels are not run; the torch paths only")
    bw = result["device_bandwidth_gbps"]
    lines.append("vs ref = the reference loop's time / this backend's time, same case, same run")
    lines.append(f"device memory bandwidth: {f'{bw:.0f} GB/s' if bw else 'unknown'}")
    lines.append(f"{'phase':<8}{'tokens':>7}{'adapters':>9}{'backend':>10}{'ms':>10}{'MB moved':>10}"
                 f"{'GB/s':>8}{'of peak':>8}{'vs ref':>8}")
    ref_ms = {(c["phase"], c["tokens"], c["adapters"]): c["ms"] for c in result["cases"]
              if c["backend"] == "reference"}
    for c in result["cases"]:
        ratio = c["bandwidth_ratio"]
        speed = ref_ms[(c["phase"], c["tokens"], c["adapters"])] / c["ms"]
        lines.append(f"{c['phase']:<8}{c['tokens']:>7}{c['adapters']:>9}{c['backend']:>10}"
                     f"{c['ms']:>10.3f}{c['bytes'] / 1e6:>10.1f}{c['gbps']:>8.1f}"
                     f"{(f'{ratio:.2f}' if ratio else '-'):>8}{speed:>7.2f}x")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="decode 1/16/64, prefill 128/512, 1 and 8 adapters (CPU-sized)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")


def run(args: argparse.Namespace) -> int:
    result = run_kernels_bench(args.quick, args.device, args.reps)
    print(format_table(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
