"""Adapter store process: validate adapters against the base model and serve them."""
from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("adapter_store")


@dataclass
class StoreConfig:
    adapters: Path
    base_model: Path
    host: str = "127.0.0.1"
    port: int = 0
    port_file: str | None = None
    chunk_bytes: int = 1 << 20
    grace_s: float = 5.0

    def __post_init__(self) -> None:
        self.adapters, self.base_model = Path(self.adapters), Path(self.base_model)
        if not self.adapters.is_dir():
            raise ValueError(f"--adapters {self.adapters}: not a folder")
        if not (self.base_model / "config.json").exists():
            raise ValueError(f"--base-model {self.base_model}: no config.json there")
        if not 0 < self.chunk_bytes <= 16 << 20:
            raise ValueError("chunk_bytes must be in (0, 16 MiB]")


def make_validator(base_model: Path):
    from chameleon_common.model_config import LlamaConfig
    from chameleon_common.peft_format import validate_peft_adapter

    base = LlamaConfig.from_hf_dir(base_model)
    return lambda config, shapes: validate_peft_adapter(config, shapes, base)


async def serve(cfg: StoreConfig) -> None:
    from adapter_store.core.catalog import AdapterCatalog, LocalFolderBackend
    from adapter_store.service import AdapterStoreService
    from chameleon_common.server import Server
    from chameleon.v1 import store_pb2_grpc

    catalog = AdapterCatalog(LocalFolderBackend(cfg.adapters), make_validator(cfg.base_model),
                             chunk_bytes=cfg.chunk_bytes)
    server = Server(cfg.host, cfg.port, ["chameleon.v1.AdapterStore"])
    store_pb2_grpc.add_AdapterStoreServicer_to_server(AdapterStoreService(catalog), server.server)
    log.info("adapter store: %s (base model %s)", cfg.adapters, cfg.base_model)
    await server.run(port_file=cfg.port_file, grace_s=cfg.grace_s)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--adapters", type=Path, required=True, help="folder of PEFT adapter folders")
    ap.add_argument("--base-model", type=Path, required=True, help="base model folder (config.json)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--port-file")
    ap.add_argument("--chunk-bytes", type=int, default=1 << 20)


def main(argv: list[str] | None = None) -> None:
    from chameleon_common.server import setup_logging

    ap = argparse.ArgumentParser(prog="chameleon serve store", description=__doc__)
    add_arguments(ap)
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    setup_logging(a.log_level)
    try:
        cfg = StoreConfig(adapters=a.adapters, base_model=a.base_model, host=a.host, port=a.port,
                          port_file=a.port_file, chunk_bytes=a.chunk_bytes)
    except ValueError as e:
        ap.error(str(e))
    asyncio.run(serve(cfg))


if __name__ == "__main__":
    main()
