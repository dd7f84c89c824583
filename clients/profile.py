"""`chameleon profile`: measure a device profile (sim/profiles schema) on this machine's device.

Runs the worker's real engine (gpu_worker/core/engine.py) on a model folder and times:

* prefill: one request of n prompt tokens, for each n in --prefill-tokens;
* decode: one step of b running requests of c context tokens each, for each (b, c);
* LoRA: the same prefill with a rank-r adapter on q/k/v/o (PEFT files written for the
  model, installed in the unified pool), for each r in --ranks;
* the host-to-device link: copies of --copy-bytes from (pinned) host memory to the device
  (on CPU: a host-to-host copy, the nearest thing).

Each time is the median of --repeats runs after a warm-up. The profile's two fitted
numbers follow the cost model (sim/cost_model.py): a straight line through the prefill
times, t(n) = a + b n, gives the achieved FLOP rate F = 2 * params / b and the achieved
weight-read bandwidth weights / a; the link rate is the copies' bytes / time. The raw
measurements go into the profile too, so a reader can check the model against them.
`peak_fp16_tensor_flops` is a measured large matmul in the model's dtype, not a spec.

    chameleon profile --device cuda --model .assets/models/smollm2-135m --out sim/profiles/mine.json
    chameleon profile --device cpu --model DIR --out p.json --quick   # tiny sizes

Nothing here has been run on a GPU yet (none was available): the CUDA path is unmeasured.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

QUICK = {"prefill_tokens": [8, 32, 64], "decode": [(1, 32), (4, 32)],
         "ranks": [8, 16], "copy_bytes": 4 << 20, "repeats": 2}
FULL = {"prefill_tokens": [128, 256, 512, 1024], "decode": [(1, 512), (8, 512), (32, 512), (32, 1024)],
        "ranks": [8, 16, 32, 64, 128], "copy_bytes": 256 << 20, "repeats": 5}
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", required=True, choices=["cuda", "cpu"])
    ap.add_argument("--model", type=Path, default=None,
                    help="Hugging Face Llama folder (default: the demo's SmolLM2-135M under --assets)")
    ap.add_argument("--assets", type=Path, default=Path(".assets"))
    ap.add_argument("--out", type=Path, required=True, help="write the profile JSON here")
    ap.add_argument("--name", default=None, help="profile name (default: from the device and model)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a profile)")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16")


def _median_time(fn, repeats: int, sync) -> float:
    fn()                                   # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def _num_params(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                n = 1
                for d in sf.get_slice(k).get_shape():
                    n *= d
                total += n
    return total


class Profiler:
    def __init__(self, model_dir: Path, device: str, dtype: str, sizes: dict):
        import torch
        from tokenizers import Tokenizer

        from gpu_worker.core.engine import Engine, EngineConfig
        from gpu_worker.core.model import LlamaModel

        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available here")
        self.torch = torch
        self.device = device
        self.dtype = (getattr(torch, dtype) if dtype != "auto"
                      else torch.bfloat16 if device == "cuda" else torch.float32)
        self.model_dir = model_dir
        self.sizes = sizes
        self.model = LlamaModel.load(model_dir, device=torch.device(device), dtype=self.dtype)
        cfg = self.model.config
        self.context = min(cfg.max_position_embeddings, 2048)
        need = max(max(sizes["prefill_tokens"]), max(b * (c + 4) for b, c in sizes["decode"]))
        pages = need // 16 + 64 + len(sizes["ranks"]) * 512
        self.engine = Engine(self.model, Tokenizer.from_file(str(model_dir / "tokenizer.json")),
                             EngineConfig(block_size=16, num_blocks=pages, max_running=256,
                                          max_step_tokens=max(2048, self.context, need),
                                          max_context=self.context, lora_backend="torch"))
        self._n = 0

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def _seq(self, tokens: int, max_tokens: int, adapter: str | None = None):
        from gpu_worker.core.sequence import SamplingSpec, Sequence

        self._n += 1
        ids = [(7 * i + 3) % (self.model.config.vocab_size - 1) + 1 for i in range(tokens)]
        return Sequence(f"p{self._n}", ids, SamplingSpec(max_tokens=max_tokens, ignore_eos=True),
                        adapter_id=adapter)

    def prefill(self, tokens: int, adapter: str | None = None) -> float:
        def once():
            s = self._seq(tokens, 1, adapter)
            self.engine.add(s)
            while s.finish is None:
                self.engine.step()
        return _median_time(once, self.sizes["repeats"], self.sync)

    def decode(self, batch: int, context: int) -> float:
        seqs = [self._seq(context, 4 * (self.sizes["repeats"] + 2)) for _ in range(batch)]
        for s in seqs:
            self.engine.add(s)
        while len(self.engine.planner.running) < batch or any(s.num_computed < len(s.prompt_ids) for s in seqs):
            self.engine.step()
        t = _median_time(self.engine.step, self.sizes["repeats"], self.sync)
        for s in seqs:
            self.engine.abort(s.request_id)
        return t

    def install_adapter(self, rank: int, folder: Path) -> str:
        from clients.assets.adapters import make_peft_adapter
        from gpu_worker.core.lora import LoraAdapter
        from gpu_worker.core.unified_pool import stage_adapter

        base = json.loads((self.model_dir / "config.json").read_text())
        name = f"profile-r{rank}"
        make_peft_adapter(base, folder / name, rank=rank, target_modules=list(LORA_MODULES),
                          lora_alpha=2 * rank, seed=rank)
        adapter = LoraAdapter.from_peft_dir(folder / name, self.model.config, "cpu", self.dtype,
                                            adapter_id=name)
        self.engine.install(stage_adapter(adapter, self.model.config, f"profile:{name}"))
        return name

    def h2d(self, nbytes: int) -> float:
        torch = self.torch
        n = nbytes // 2
        host = torch.empty(n, dtype=torch.float16)
        if self.device == "cuda":
            host = host.pin_memory()
        dev = torch.device(self.device)
        t = _median_time(lambda: host.to(dev, non_blocking=True) if self.device == "cuda" else host.clone(),
                         self.sizes["repeats"], self.sync)
        return n * 2 / t

    def gemm_flops(self) -> float:
        torch = self.torch
        n = 4096 if self.device == "cuda" else 512
        a = torch.randn(n, n, device=self.device, dtype=self.dtype)
        b = torch.randn(n, n, device=self.device, dtype=self.dtype)
        return 2 * n ** 3 / _median_time(lambda: a @ b, self.sizes["repeats"], self.sync)

    def device_facts(self) -> tuple[str, int]:
        if self.device == "cuda":
            p = self.torch.cuda.get_device_properties(0)
            return p.name, int(p.total_memory)
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)", int(mem)


def measure(model_dir: Path, device: str, dtype: str = "auto", quick: bool = False,
            name: str | None = None, progress=print) -> dict:
    """Measure and return a profile dict in sim/profiles' schema."""
    sizes = QUICK if quick else FULL
    p = Profiler(model_dir, device, dtype, sizes)
    cfg = p.model.config
    elem = p.torch.empty((), dtype=p.dtype).element_size()
    params = _num_params(model_dir)
    progress(f"[profile] {model_dir.name} on {device} ({p.dtype}), {params / 1e6:.0f} M parameters")
    prefill = {n: p.prefill(n) for n in sizes["prefill_tokens"]}
    progress("[profile] prefill " + ", ".join(f"{n}: {t * 1e3:.2f} ms" for n, t in prefill.items()))
    decode = [{"batch": b, "context": c, "seconds": p.decode(b, c)} for b, c in sizes["decode"]]
    progress("[profile] decode " + ", ".join(f"b{d['batch']} c{d['context']}: {d['seconds'] * 1e3:.2f} ms"
                                             for d in decode))
    ref = sizes["prefill_tokens"][len(sizes["prefill_tokens"]) // 2]
    lora = {}
    with tempfile.TemporaryDirectory(prefix="chameleon-profile-") as tmp:
        for r in sizes["ranks"]:
            aid = p.install_adapter(r, Path(tmp))
            lora[r] = p.prefill(ref, adapter=aid)
    progress("[profile] LoRA prefill of %d tokens " % ref
             + ", ".join(f"r{r}: {t * 1e3:.2f} ms" for r, t in lora.items()))
    h2d = p.h2d(sizes["copy_bytes"])
    peak = p.gemm_flops()
    progress(f"[profile] link {h2d / 1e9:.2f} GB/s, matmul {peak / 1e12:.3f} TFLOPS")
    a, b = _fit_line([float(n) for n in prefill], list(prefill.values()))
    achieved = 2 * params / b if b > 0 else peak
    weight_bytes = params * elem
    mem_bw = weight_bytes / a if a > 0 else float(weight_bytes) / min(prefill.values())
    dev_name, mem_bytes = p.device_facts()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    shapes = cfg.module_shapes()
    return {
        "schema": 1,
        "name": name or f"{device}-{model_dir.name}",
        "measured_by": f"chameleon profile --device {device} on {dev_name}, {when}"
                       + (" (--quick: tiny sizes, a smoke test)" if quick else ""),
        "model": {
            "name": model_dir.name, "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_kv_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim, "num_params": params, "dtype_bytes": elem,
            "max_context": p.context,
            "lora_target_modules": {m: list(shapes[m]) for m in LORA_MODULES},
            "source": f"{model_dir}/config.json; parameters counted in its safetensors files",
        },
        "device": {
            "name": dev_name, "memory_bytes": mem_bytes,
            "memory_bandwidth_bytes_per_s": mem_bw, "peak_fp16_tensor_flops": peak,
            "host_to_device_link": "measured" if device == "cuda" else "host memory copy (CPU)",
            "host_to_device_spec_bytes_per_s": h2d, "memory_utilization": 0.9,
            "source": "measured here: bandwidth = weight bytes / the prefill fit's intercept, peak = "
                      "a large matmul in the model's dtype, link = (pinned) host-to-device copies; "
                      "memory_utilization 0.9 = vLLM's default",
        },
        "calibration": {
            "achieved_flops": achieved, "h2d_bytes_per_s": h2d, "reference_prompt_tokens": ref,
            "source": "fitted here: F = 2 * params / slope of prefill time vs tokens"
                      + ("" if b > 0 else "; the slope was not positive (steps too small to "
                         "time the compute), so F is the measured matmul rate instead"),
            "prefill_fit": {"intercept_s": a, "slope_s_per_token": b},
            "measurements": {
                "prefill_s": {str(n): t for n, t in prefill.items()},
                "decode_s": decode,
                "lora_prefill_s": {"tokens": ref, "by_rank": {str(r): t for r, t in lora.items()}},
                "copy_bytes": sizes["copy_bytes"],
            },
        },
    }


def run(a: argparse.Namespace) -> int:
    model = a.model
    if model is None:
        from clients.assets.demo import prepare_demo

        model = Path(prepare_demo(a.assets, progress=lambda m: print(f"[assets] {m}"))["model"])
    prof = measure(Path(model), a.device, a.dtype, a.quick, a.name)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(prof, indent=2) + "\n")
    from sim.cost_model import CostModel

    cm = CostModel(prof)
    meas = prof["calibration"]["measurements"]["prefill_s"]
    worst = max(abs(cm.prefill_s(int(n)) - t) / t for n, t in meas.items())
    print(f"[profile] wrote {a.out}; the cost model reproduces the measured prefill times within "
          f"{worst:.0%}")
    return 0
