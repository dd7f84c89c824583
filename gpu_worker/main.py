"""Worker process: load the model, size the KV cache, serve the Worker API."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from chameleon_common import security as sec

log = logging.getLogger("gpu_worker")


@dataclass
class WorkerConfig:
    model: Path | None                     # None only with sim_profile
    store: str
    host: str = "127.0.0.1"
    port: int = 0
    port_file: str | None = None
    worker_id: str = ""
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    dtype: str = "auto"                    # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    block_size: int = 16
    gpu_memory_fraction: float = 0.8       # CUDA: fraction of free memory for the pool
    max_running: int = 32
    max_context: int = 2048
    # tokens one engine step may run (decodes first, then prompt chunks); 0 = 2048 on CUDA,
    # 128 on the CPU, where a step of many prompt tokens stalls every running request
    max_step_tokens: int = 0
    pool_memory_bytes: int = 512 * 1024 * 1024  # CPU: bytes of the unified pool (KV + adapters)
    cache_policy: str = "chameleon"         # slora | lru | chameleon | chameleon-lru | chameleon-fairshare
    lru_slots: int = 8                      # --cache-policy lru: adapter slots reserved at max rank
    lru_max_rank: int = 128                 # --cache-policy lru: the rank a slot is sized for
    predictive_prefetch: bool = False       # histogram-based prefetch of adapters expected soon
    lora_backend: str = "auto"              # auto (triton on CUDA, torch elsewhere) | torch | triton
    adapter_fetch_deadline_s: float = 30.0  # a fetch retrying past this fails its requests (UNAVAILABLE)
    grace_s: float = 10.0
    admission: str = "reserve"              # reserve | slora-peak (memory/admission.py)
    sim_profile: str | None = None          # live-sim: modelled model and pool (sim/profiles)

    metrics_port: int | None = None        # Prometheus /metrics (None: off)
    security: sec.SecurityConfig = field(default_factory=sec.SecurityConfig)

    def __post_init__(self) -> None:
        from chameleon_common.metrics import check_metrics_port

        check_metrics_port(self.metrics_port)
        if self.sim_profile is not None:
            from sim.cost_model import profile_path
            profile_path(self.sim_profile)      # raises ValueError naming the known profiles
        elif self.model is None:
            raise ValueError("--model is required (unless --sim-profile models one)")
        if self.model is not None:
            self.model = Path(self.model)
            if not (self.model / "config.json").exists():
                raise ValueError(f"--model {self.model}: no config.json there (run `chameleon prepare-demo`?)")
        from gpu_worker.core.memory.admission import ADMISSION_NAMES
        if self.admission not in ADMISSION_NAMES:
            raise ValueError(f"unknown --admission {self.admission!r}; choose from "
                             f"{', '.join(ADMISSION_NAMES)}")
        if self.block_size <= 0 or self.max_running <= 0 or self.max_context <= 1:
            raise ValueError("block_size and max_running must be positive, max_context > 1")
        if self.max_step_tokens < 0 or 0 < self.max_step_tokens < self.max_running:
            raise ValueError(f"max_step_tokens must be 0 (auto) or >= max_running "
                             f"({self.max_running}), got {self.max_step_tokens}")
        if self.pool_memory_bytes <= 0:
            raise ValueError("pool_memory_bytes must be positive")
        if not 0 < self.gpu_memory_fraction < 1:
            raise ValueError("gpu_memory_fraction must be in (0, 1)")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"unknown dtype {self.dtype!r}")
        from gpu_worker.core.memory import POLICY_NAMES
        if self.cache_policy not in POLICY_NAMES:
            raise ValueError(f"unknown --cache-policy {self.cache_policy!r}; choose from "
                             f"{', '.join(POLICY_NAMES)}")
        if self.adapter_fetch_deadline_s <= 0:
            raise ValueError("adapter_fetch_deadline_s must be positive")
        if self.lru_slots < 1 or self.lru_max_rank < 1:
            raise ValueError("lru_slots and lru_max_rank must be >= 1")
        from gpu_worker.lora.backend import BACKENDS
        if self.lora_backend not in BACKENDS:
            raise ValueError(f"unknown --lora-backend {self.lora_backend!r}; choose from "
                             f"{', '.join(BACKENDS)}")
        self.worker_id = self.worker_id or f"{socket.gethostname()}-{os.getpid()}"


def cache_config(cfg: WorkerConfig, mc):
    """The cache policy; `lru` slots are sized for an adapter of `lru_max_rank` on every module."""
    from gpu_worker.core.memory import CacheConfig, layout_adapter
    from gpu_worker.core.memory.layout import AdapterShape
    from gpu_worker.core.unified_pool import row_geometry

    if cfg.cache_policy != "lru":
        return CacheConfig(cfg.cache_policy)
    shape = AdapterShape.uniform(mc.num_layers, cfg.lru_max_rank, mc.module_shapes())
    slot_pages = layout_adapter(row_geometry(mc, cfg.block_size), shape).num_pages
    return CacheConfig("lru", lru_slots=cfg.lru_slots, lru_slot_pages=slot_pages)


def default_step_tokens(device: str, max_running: int) -> int:
    """The engine step's token budget when --max-step-tokens is 0 (auto)."""
    return max(max_running, 2048 if device.startswith("cuda") else 128)


def step_tokens(cfg: WorkerConfig, device: str) -> int:
    return cfg.max_step_tokens or default_step_tokens(device, cfg.max_running)


def cache_reserved(cache) -> int:
    return cache.lru_slots * cache.lru_slot_pages if cache.policy == "lru" else 0


def add_arguments(ap: argparse.ArgumentParser) -> None:
    d = WorkerConfig.__dataclass_fields__
    ap.add_argument("--model", help="Hugging Face Llama model folder (not with --sim-profile)")
    ap.add_argument("--store", required=True, help="adapter store address host:port")
    ap.add_argument("--host", default=d["host"].default)
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--port-file", help="write the bound port here once serving")
    ap.add_argument("--worker-id", default="")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--block-size", type=int, default=d["block_size"].default)
    ap.add_argument("--pool-memory-bytes", dest="pool_memory_bytes", type=int,
                    default=d["pool_memory_bytes"].default,
                    help="CPU: bytes of the unified pool shared by KV pages and cached adapters")
    ap.add_argument("--gpu-memory-fraction", type=float, default=d["gpu_memory_fraction"].default)
    ap.add_argument("--max-running", type=int, default=d["max_running"].default)
    ap.add_argument("--max-context", type=int, default=d["max_context"].default)
    ap.add_argument("--max-step-tokens", type=int, default=d["max_step_tokens"].default,
                    help="token budget of one engine step: running requests' decode tokens "
                         "first, then prompts in chunks (0: 2048 on CUDA, 128 on the CPU)")
    ap.add_argument("--cache-policy", default=d["cache_policy"].default,
                    help="slora | lru | chameleon | chameleon-lru | chameleon-fairshare")
    ap.add_argument("--lru-slots", type=int, default=d["lru_slots"].default)
    ap.add_argument("--lru-max-rank", type=int, default=d["lru_max_rank"].default)
    ap.add_argument("--predictive-prefetch", action="store_true",
                    help="prefetch adapters whose requests an inter-arrival histogram expects "
                         "within 2 s into free pages (never evicts; off by default)")
    ap.add_argument("--lora-backend", default=d["lora_backend"].default,
                    help="auto (triton on CUDA, torch elsewhere) | torch | triton (on CPU only "
                         "with TRITON_INTERPRET=1, the slow interpreter)")
    ap.add_argument("--adapter-fetch-deadline-s", type=float,
                    default=d["adapter_fetch_deadline_s"].default,
                    help="how long a fetch from the adapter store may retry (with backoff) before "
                         "the requests waiting for it fail with UNAVAILABLE")
    ap.add_argument("--grace-s", type=float, default=d["grace_s"].default)
    ap.add_argument("--admission", default=d["admission"].default,
                    help="when a request may take memory: reserve (prompt + max_tokens up front) | "
                         "slora-peak (S-LoRA's peak-memory estimate)")
    ap.add_argument("--sim-profile", metavar="PROFILE",
                    help="live-sim: run the real engine loop, memory pool bookkeeping, cache, "
                         "admission, prefetch and gRPC streams, but MODEL the device: each step "
                         "waits the profile's modelled step time (sim/cost_model.py) instead of "
                         "running a model and yields placeholder tokens (EOS as the request's "
                         "sim_output_tokens-th token), the pool has the profile's pages, and an "
                         "adapter load asks the store only for the adapter's rank and modules and "
                         "waits its modelled host-to-device copy on one shared link. PROFILE: a "
                         "name in sim/profiles (a40-llama7b, h100-llama7b) or a JSON path. "
                         "--model, --device, --dtype, --pool-memory-bytes and --lora-backend are "
                         "then unused")
    from chameleon_common.metrics import add_metrics_argument

    add_metrics_argument(ap)
    sec.add_arguments(ap)


def config_from_args(a: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(model=a.model, store=a.store, host=a.host, port=a.port,
                        port_file=a.port_file, worker_id=a.worker_id, device=a.device,
                        dtype=a.dtype, block_size=a.block_size, pool_memory_bytes=a.pool_memory_bytes,
                        gpu_memory_fraction=a.gpu_memory_fraction, max_running=a.max_running,
                        max_context=a.max_context, max_step_tokens=a.max_step_tokens,
                        cache_policy=a.cache_policy,
                        lru_slots=a.lru_slots, lru_max_rank=a.lru_max_rank,
                        predictive_prefetch=a.predictive_prefetch, lora_backend=a.lora_backend,
                        adapter_fetch_deadline_s=a.adapter_fetch_deadline_s, grace_s=a.grace_s,
                        metrics_port=a.metrics_port, admission=a.admission,
                        sim_profile=a.sim_profile, security=sec.config_from_args(a))


async def serve(cfg: WorkerConfig) -> None:
    if cfg.sim_profile is not None:
        from gpu_worker.sim_worker import serve_sim
        return await serve_sim(cfg)
    import torch
    from tokenizers import Tokenizer

    from chameleon_common.server import Server
    from chameleon.v1 import worker_pb2
    from gpu_worker.adapter_fetcher import AdapterFetcher, RetryPolicy
    from gpu_worker.core import unified_pool
    from gpu_worker.core.engine import Engine, EngineConfig
    from gpu_worker.core.memory import PrefetcherConfig
    from gpu_worker.core.model import LlamaModel
    from gpu_worker.service import WorkerService

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, cfg.dtype)
    from gpu_worker.lora.backend import resolve_backend
    try:
        resolve_backend(cfg.lora_backend, device)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    model = LlamaModel.load(cfg.model, device=torch.device(device), dtype=dtype)
    mc = model.config
    max_context = min(cfg.max_context, mc.max_position_embeddings)
    page_bytes = unified_pool.page_bytes(mc, cfg.block_size, dtype)
    budget = cfg.pool_memory_bytes
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        budget = int(free * cfg.gpu_memory_fraction)
    cache = cache_config(cfg, mc)
    reserved = cache_reserved(cache)
    if reserved and budget // page_bytes < reserved + -(-max_context // cfg.block_size):
        raise SystemExit(f"--cache-policy lru: {cfg.lru_slots} slots of rank {cfg.lru_max_rank} need "
                         f"{reserved} pages ({reserved * page_bytes / 2**20:.0f} MiB) plus room for "
                         f"one full-context request, but the pool holds {budget // page_bytes} pages: "
                         f"lower --lru-slots or --lru-max-rank, or raise the pool size")
    # at least one full-context request always fits
    need = -(-max_context // cfg.block_size) + reserved
    num_pages = max(budget // page_bytes, need)
    if num_pages > budget // page_bytes:
        log.warning("one full-context request needs %d pages (%.1f MiB), more than the %.1f MiB "
                    "budget holds: the pool grows to %.1f MiB", need, need * page_bytes / 2**20,
                    budget / 2**20, num_pages * page_bytes / 2**20)
    engine = Engine(model, Tokenizer.from_file(str(cfg.model / "tokenizer.json")),
                    EngineConfig(block_size=cfg.block_size, num_blocks=int(num_pages),
                                 max_running=cfg.max_running,
                                 max_step_tokens=step_tokens(cfg, device),
                                 admission=cfg.admission,
                                 max_context=max_context, cache=cache,
                                 prefetch=PrefetcherConfig() if cfg.predictive_prefetch else None,
                                 lora_backend=cfg.lora_backend))
    info = worker_pb2.WorkerInfo(
        worker_id=cfg.worker_id, model_name=cfg.model.name, max_context=max_context,
        vocab_size=mc.vocab_size, block_size=cfg.block_size, total_pages=int(num_pages),
        max_running=cfg.max_running, tokenizer_json=(cfg.model / "tokenizer.json").read_bytes(),
        eos_token_ids=list(mc.eos_token_ids), device=device, page_bytes=engine.pool.page_bytes,
        cache_policy=cfg.cache_policy)
    fetcher = AdapterFetcher(cfg.store, retry=RetryPolicy(deadline_s=cfg.adapter_fetch_deadline_s),
                             channel_factory=lambda a: sec.aio_channel(
                                 a, cfg.security, sec.internal_channel_options(cfg.security)))
    from chameleon_common.tracing import setup_tracing, shutdown_tracing

    service = WorkerService(engine, fetcher, info, tracer=setup_tracing("chameleon-worker"))
    server = Server(cfg.host, cfg.port, ["chameleon.v1.Worker"], security=cfg.security)
    from chameleon_common.metrics import serve_metrics

    serve_metrics(service.metrics.registry, cfg.metrics_port, cfg.host, cfg.port_file)
    from chameleon.v1 import worker_pb2_grpc
    worker_pb2_grpc.add_WorkerServicer_to_server(service, server.server)
    service.start()
    log.info("worker %s: %s on %s (%s), unified pool of %d pages of %d tokens, cache policy %s",
             cfg.worker_id, cfg.model.name, device, dtype, num_pages, cfg.block_size, cfg.cache_policy)
    try:
        await server.run(port_file=cfg.port_file, grace_s=cfg.grace_s, drain=service.drain)
    finally:
        service.thread.stop()
        await fetcher.close()
        shutdown_tracing()


def main(argv: list[str] | None = None) -> None:
    from chameleon_common.server import setup_logging

    ap = argparse.ArgumentParser(prog="chameleon serve worker", description=__doc__)
    add_arguments(ap)
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    setup_logging(a.log_level)
    try:
        cfg = config_from_args(a)
    except ValueError as e:
        ap.error(str(e))
    asyncio.run(serve(cfg))


if __name__ == "__main__":
    main()
