"""Adapter store process: a registry of adapters on a local folder or S3-compatible storage,
validated against the base model, streamed to workers."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass, field

from chameleon_common import security as sec
from pathlib import Path

log = logging.getLogger("adapter_store")

# LoRA weights are floating point; integer or boolean tensors cannot be an adapter's A/B
LORA_DTYPES = ("F16", "BF16", "F32")


@dataclass
class StoreConfig:
    base_model: Path | None                 # None only with a sim catalog
    adapters: Path | None = None            # local folder backend
    s3_bucket: str | None = None            # S3 backend (one of the two)
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_prefix: str = ""
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    port_file: str | None = None
    chunk_bytes: int = 1 << 20
    grace_s: float = 5.0
    metrics_port: int | None = None        # Prometheus /metrics (None: off)
    hot_cache_bytes: int = 1 << 30
    backend_requests_per_s: int = 200
    backend_max_concurrent: int = 8
    stat_ttl_s: float = 1.0
    max_adapter_bytes: int = 2 << 30
    admin_token: str | None = field(default=None, repr=False)
    sim_profile: str | None = None          # live-sim: synthetic adapters sized for this profile
    sim_catalog: Path | None = None         # ... the adapters of this workload trace (JSONL)
    sim_adapters: int = 0                   # ... or this many, spread over ranks 8-128
    security: sec.SecurityConfig = field(default_factory=sec.SecurityConfig)

    def __post_init__(self) -> None:
        from chameleon_common.metrics import check_metrics_port

        check_metrics_port(self.metrics_port)
        if self.sim_profile is not None:
            self._check_sim()
            return
        if self.sim_catalog is not None or self.sim_adapters:
            raise ValueError("--sim-catalog and --sim-adapters need --sim-profile")
        if self.base_model is None:
            raise ValueError("--base-model is required (unless --sim-profile)")
        self.base_model = Path(self.base_model)
        if (self.adapters is None) == (self.s3_bucket is None):
            raise ValueError("give exactly one backend: --adapters DIR or --s3-bucket NAME")
        if self.adapters is not None:
            self.adapters = Path(self.adapters)
            if not self.adapters.is_dir():
                raise ValueError(f"--adapters {self.adapters}: not a folder")
        if not (self.base_model / "config.json").exists():
            raise ValueError(f"--base-model {self.base_model}: no config.json there")
        if not 0 < self.chunk_bytes <= 16 << 20:
            raise ValueError("chunk_bytes must be in (0, 16 MiB]")
        if self.hot_cache_bytes < 0 or self.max_adapter_bytes <= 0 or self.stat_ttl_s < 0:
            raise ValueError("--hot-cache-bytes, --stat-ttl-s must be >= 0 and "
                             "--max-adapter-bytes > 0")
        if self.admin_token is not None and not self.admin_token:
            raise ValueError("the admin token file is empty")


    def _check_sim(self) -> None:
        from sim.cost_model import profile_path

        profile_path(self.sim_profile)          # ValueError naming the known profiles
        if (self.sim_catalog is None) == (self.sim_adapters <= 0):
            raise ValueError("--sim-profile needs exactly one of --sim-catalog TRACE.jsonl and "
                             "--sim-adapters N")
        if self.sim_catalog is not None and not Path(self.sim_catalog).is_file():
            raise ValueError(f"--sim-catalog {self.sim_catalog}: no such file")
        if self.adapters is not None or self.s3_bucket is not None:
            raise ValueError("--sim-profile serves synthetic adapters: no --adapters or --s3-bucket")


def make_validator(base_model: Path):
    from chameleon_common.model_config import LlamaConfig
    from chameleon_common.peft_format import validate_peft_adapter

    base = LlamaConfig.from_hf_dir(base_model)

    def validate(config: dict, tensors) -> list[str]:
        problems = [f"tensor {n!r} has dtype {t.dtype}; LoRA weights must be one of "
                    f"{', '.join(LORA_DTYPES)}" for n, t in tensors.items() if t.dtype not in LORA_DTYPES]
        return problems + validate_peft_adapter(config, {n: t.shape for n, t in tensors.items()}, base)
    return validate


def make_backend(cfg: StoreConfig):
    from adapter_store.core.backends import LocalFolderBackend

    if cfg.adapters is not None:
        return LocalFolderBackend(cfg.adapters)
    from adapter_store.s3_backend import S3Backend, S3Config

    return S3Backend(S3Config(bucket=cfg.s3_bucket, endpoint=cfg.s3_endpoint, region=cfg.s3_region,
                              prefix=cfg.s3_prefix, access_key_id=cfg.s3_access_key_id,
                              secret_access_key=cfg.s3_secret_access_key))


async def serve(cfg: StoreConfig) -> None:
    from adapter_store.core.catalog import AdapterCatalog, PushLimits
    from adapter_store.core.hot_cache import HotCache
    from adapter_store.core.throttle import ThrottleConfig, ThrottledBackend
    from adapter_store.service import AdapterStoreService
    from chameleon_common.server import Server
    from chameleon.v1 import store_pb2_grpc

    if cfg.sim_profile is not None:
        from adapter_store.core.sim_catalog import SimCatalog, adapters_by_count, adapters_from_trace
        from adapter_store.sim_store import SimStoreService

        ids = (adapters_from_trace(str(cfg.sim_catalog)) if cfg.sim_catalog is not None
               else adapters_by_count(cfg.sim_adapters))
        server = Server(cfg.host, cfg.port, ["chameleon.v1.AdapterStore"])
        store_pb2_grpc.add_AdapterStoreServicer_to_server(
            SimStoreService(SimCatalog.for_profile(ids, cfg.sim_profile)), server.server)
        log.info("adapter store: %d synthetic adapters sized for %s (sim catalog: descriptions "
                 "only, no weights)", len(ids), cfg.sim_profile)
        await server.run(port_file=cfg.port_file, grace_s=cfg.grace_s)
        return
    backend = ThrottledBackend(make_backend(cfg), ThrottleConfig(cfg.backend_requests_per_s,
                                                                 cfg.backend_max_concurrent))
    catalog = AdapterCatalog(backend, make_validator(cfg.base_model), chunk_bytes=cfg.chunk_bytes,
                             stat_ttl_s=cfg.stat_ttl_s,
                             limits=PushLimits(max_weights_bytes=cfg.max_adapter_bytes))
    from chameleon_common.tracing import setup_tracing, shutdown_tracing

    service = AdapterStoreService(catalog, HotCache(cfg.hot_cache_bytes), admin_token=cfg.admin_token,
                                  tracer=setup_tracing("chameleon-store"))
    server = Server(cfg.host, cfg.port, ["chameleon.v1.AdapterStore"], security=cfg.security)
    from chameleon_common.metrics import serve_metrics

    serve_metrics(service.metrics.registry, cfg.metrics_port, cfg.host, cfg.port_file)
    service.add_to_server(server.server)
    log.info("adapter store: %s (base model %s)", backend.describe(), cfg.base_model)
    try:  # registration scan: pin every plain adapter's digest, check its values, once
        recs = await catalog.list()
        log.info("registered %d adapters (%d valid)", len(recs), sum(r.valid for r in recs))
    except Exception as e:  # an object store that is away: adapters register on first use
        log.warning("registration scan failed (%s); adapters register when first used", e)
    try:
        await server.run(port_file=cfg.port_file, grace_s=cfg.grace_s)
    finally:
        shutdown_tracing()


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--adapters", type=Path, help="folder of PEFT adapter folders (the default backend)")
    ap.add_argument("--s3-bucket", help="serve from this S3 bucket instead of a folder")
    ap.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (MinIO, SeaweedFS, R2...)")
    ap.add_argument("--s3-region", default="us-east-1")
    ap.add_argument("--s3-prefix", default="", help="keys live under this prefix in the bucket")
    ap.add_argument("--s3-access-key-id", help="default: AWS_ACCESS_KEY_ID")
    ap.add_argument("--s3-secret-file", type=Path,
                    help="file holding the S3 secret access key (default: AWS_SECRET_ACCESS_KEY)")
    ap.add_argument("--base-model", type=Path, help="base model folder (config.json)")
    ap.add_argument("--sim-profile", metavar="PROFILE",
                    help="live-sim: serve synthetic adapters instead of a backend, listed with their "
                         "rank, the profile model's LoRA modules and the size their fp16 weights "
                         "would have; no weights are stored or streamed (FetchAdapter fails "
                         "FAILED_PRECONDITION), for --sim-profile workers")
    ap.add_argument("--sim-catalog", type=Path, metavar="TRACE.jsonl",
                    help="with --sim-profile: the adapters of this workload trace (sim/workload.py)")
    ap.add_argument("--sim-adapters", type=int, default=0, metavar="N",
                    help="with --sim-profile: N adapters spread evenly over ranks 8/16/32/64/128")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--port-file")
    ap.add_argument("--chunk-bytes", type=int, default=1 << 20)
    from chameleon_common.metrics import add_metrics_argument

    add_metrics_argument(ap)
    ap.add_argument("--hot-cache-bytes", type=int, default=1 << 30,
                    help="host memory for hot adapters' bytes (0: none)")
    ap.add_argument("--backend-requests-per-s", type=int, default=200,
                    help="object-store requests started per second, at most")
    ap.add_argument("--backend-max-concurrent", type=int, default=8,
                    help="object-store requests in flight, at most")
    ap.add_argument("--stat-ttl-s", type=float, default=1.0,
                    help="how long a listing of an adapter is trusted without asking the backend")
    ap.add_argument("--max-adapter-bytes", type=int, default=2 << 30, help="largest push accepted")
    ap.add_argument("--admin-token-file", type=Path,
                    help="push and delete then need this token (chameleon-admin-token: Bearer ...)")
    sec.add_arguments(ap)


def config_from_args(a: argparse.Namespace) -> StoreConfig:
    secret = a.s3_secret_file.read_text().strip() if a.s3_secret_file else \
        os.environ.get("AWS_SECRET_ACCESS_KEY") if a.s3_bucket else None
    key_id = a.s3_access_key_id or (os.environ.get("AWS_ACCESS_KEY_ID") if a.s3_bucket else None)
    token = a.admin_token_file.read_text().strip() if a.admin_token_file else None
    return StoreConfig(adapters=a.adapters, base_model=a.base_model, s3_bucket=a.s3_bucket,
                       s3_endpoint=a.s3_endpoint, s3_region=a.s3_region, s3_prefix=a.s3_prefix,
                       s3_access_key_id=key_id, s3_secret_access_key=secret, host=a.host,
                       port=a.port, port_file=a.port_file, chunk_bytes=a.chunk_bytes,
                       hot_cache_bytes=a.hot_cache_bytes,
                       backend_requests_per_s=a.backend_requests_per_s,
                       backend_max_concurrent=a.backend_max_concurrent, stat_ttl_s=a.stat_ttl_s,
                       max_adapter_bytes=a.max_adapter_bytes, admin_token=token,
                       metrics_port=a.metrics_port, sim_profile=a.sim_profile,
                       sim_catalog=a.sim_catalog, sim_adapters=a.sim_adapters,
                       security=sec.config_from_args(a))


def main(argv: list[str] | None = None) -> None:
    from chameleon_common.server import setup_logging

    ap = argparse.ArgumentParser(prog="chameleon serve store", description=__doc__)
    add_arguments(ap)
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    setup_logging(a.log_level)
    try:
        cfg = config_from_args(a)
    except (ValueError, OSError) as e:
        ap.error(str(e))
    asyncio.run(serve(cfg))


if __name__ == "__main__":
    main()
