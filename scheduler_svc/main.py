"""Scheduler process: the client-facing API in front of one or more workers."""
from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass, field

from scheduler_svc.core.policies import POLICY_NAMES, make_policy

log = logging.getLogger("scheduler_svc")


@dataclass
class SchedulerConfig:
    store: str
    workers: list[str] = field(default_factory=list)
    policy: str = "fifo"
    host: str = "127.0.0.1"
    port: int = 0
    port_file: str | None = None
    grace_s: float = 30.0
    prefetch_hints: int = 8                # adapters per prefetch hint to a worker (0: none)
    hint_interval_s: float = 0.1           # at most one hint per worker per interval
    metrics_port: int | None = None        # Prometheus /metrics (None: off)

    def __post_init__(self) -> None:
        from scheduler_svc.core.hints import HintConfig

        from chameleon_common.metrics import check_metrics_port

        HintConfig(self.prefetch_hints, self.hint_interval_s)   # validates
        check_metrics_port(self.metrics_port)
        if not self.workers:
            raise ValueError("give at least one --worker host:port")
        for a in [self.store, *self.workers]:
            if ":" not in a:
                raise ValueError(f"address {a!r} must be host:port")
        if self.policy not in POLICY_NAMES:
            raise ValueError(f"--sched-policy {self.policy!r}: choose one of "
                             f"{', '.join(POLICY_NAMES)}")


async def serve(cfg: SchedulerConfig) -> None:
    import time

    from chameleon_common.server import Server
    from chameleon.v1 import scheduler_pb2_grpc
    from scheduler_svc.service import SchedulerService

    from chameleon_common.tracing import setup_tracing, shutdown_tracing
    from scheduler_svc.core.hints import HintConfig

    tracer = setup_tracing("chameleon-scheduler")
    service = SchedulerService(make_policy(cfg.policy, time.monotonic), cfg.store, cfg.workers,
                               tracer=tracer,
                               hints=HintConfig(cfg.prefetch_hints, cfg.hint_interval_s))
    server = Server(cfg.host, cfg.port, ["chameleon.v1.Scheduler"])
    from chameleon_common.metrics import serve_metrics

    serve_metrics(service.metrics.registry, cfg.metrics_port, cfg.host, cfg.port_file)
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(service, server.server)
    await service.start()
    log.info("scheduler: policy %s, workers %s, store %s", cfg.policy, cfg.workers, cfg.store)
    try:
        await server.run(port_file=cfg.port_file, grace_s=cfg.grace_s, drain=service.drain)
    finally:
        await service.stop()
        shutdown_tracing()


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--store", required=True, help="adapter store address host:port")
    ap.add_argument("--worker", action="append", dest="workers", default=[],
                    help="worker address host:port (repeat for several workers)")
    ap.add_argument("--sched-policy", "--policy", dest="policy", default="fifo",
                    help=f"admission policy: {', '.join(POLICY_NAMES)} (default fifo, the "
                         "S-LoRA baseline; --policy is an alias)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--port-file")
    ap.add_argument("--grace-s", type=float, default=30.0)
    from chameleon_common.metrics import add_metrics_argument

    add_metrics_argument(ap)
    ap.add_argument("--prefetch-hints", type=int, default=8, metavar="N",
                    help="tell each worker the adapters of the next N distinct adapters its queued "
                         "requests need, so it can prefetch them into free or idle memory "
                         "(PrefetchHint on the worker stream; sent on change only; 0: off)")
    ap.add_argument("--hint-interval-s", type=float, default=0.1,
                    help="at most one prefetch hint per worker per this many seconds")


def main(argv: list[str] | None = None) -> None:
    from chameleon_common.server import setup_logging

    ap = argparse.ArgumentParser(prog="chameleon serve scheduler", description=__doc__)
    add_arguments(ap)
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    setup_logging(a.log_level)
    try:
        cfg = SchedulerConfig(store=a.store, workers=a.workers, policy=a.policy, host=a.host,
                              port=a.port, port_file=a.port_file, grace_s=a.grace_s,
                              prefetch_hints=a.prefetch_hints, hint_interval_s=a.hint_interval_s,
                              metrics_port=a.metrics_port)
    except ValueError as e:
        ap.error(str(e))
    asyncio.run(serve(cfg))


if __name__ == "__main__":
    main()
