"""Scheduler process: the client-facing API in front of one or more workers."""
from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass, field

from chameleon_common import security as sec
from scheduler_svc.core.policies import POLICY_NAMES, make_policy
from scheduler_svc.intake import IntakeLimits

# the public entry point: messages up to this size are parsed (larger ones get grpc's
# RESOURCE_EXHAUSTED), then a prompt over --max-prompt-bytes gets INVALID_ARGUMENT
SCHEDULER_MAX_MESSAGE_BYTES = 16 << 20

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
    # Requests dispatched to a worker that have shown no token yet, at most (0: no window).
    # Without it the queue forms in the worker's FIFO, where no policy orders it; 8 is the
    # window the simulator's tail fix was measured with (sim/engine.py WorkerSpec).
    admission_window: int = 8
    metrics_port: int | None = None        # Prometheus /metrics (None: off)
    public_plaintext: bool = False   # serve clients without TLS even when --tls-* secure the links
    limits: IntakeLimits = field(default_factory=IntakeLimits)
    security: sec.SecurityConfig = field(
        default_factory=lambda: sec.SecurityConfig(max_message_bytes=SCHEDULER_MAX_MESSAGE_BYTES))

    def __post_init__(self) -> None:
        from scheduler_svc.core.hints import HintConfig

        from chameleon_common.metrics import check_metrics_port

        HintConfig(self.prefetch_hints, self.hint_interval_s)   # validates
        check_metrics_port(self.metrics_port)
        if self.admission_window < 0:
            raise ValueError(f"--admission-window must be >= 0, got {self.admission_window}")
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
                               hints=HintConfig(cfg.prefetch_hints, cfg.hint_interval_s),
                               limits=cfg.limits, security=cfg.security,
                               admission_window=cfg.admission_window)
    # the public port: TLS (mTLS with --tls-ca) as configured unless --public-plaintext; the
    # token is what this scheduler presents on its links, clients are not asked for it
    tls = {} if cfg.public_plaintext else dict(tls_cert=cfg.security.tls_cert,
                                               tls_key=cfg.security.tls_key, tls_ca=cfg.security.tls_ca)
    public = sec.SecurityConfig(max_message_bytes=cfg.security.max_message_bytes, **tls)
    server = Server(cfg.host, cfg.port, ["chameleon.v1.Scheduler"], security=public)
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
    ap.add_argument("--admission-window", type=int, default=8,
                    help="requests dispatched to a worker that have not produced a token yet, at "
                         "most (default 8; 0 = as many as the worker's memory takes). Keeps the "
                         "queue in the scheduler, where the policy orders it")
    d = IntakeLimits()
    g = ap.add_argument_group("limits")
    g.add_argument("--max-prompt-bytes", type=int, default=d.max_prompt_bytes,
                   help="longest prompt in UTF-8 bytes; longer ones get INVALID_ARGUMENT before tokenizing")
    g.add_argument("--max-queued", type=int, default=d.max_queued,
                   help="requests waiting for a worker; past it RESOURCE_EXHAUSTED with a retry hint")
    g.add_argument("--max-queued-tokens", type=int, default=d.max_queued_tokens,
                   help="prompt + max_tokens of waiting requests (0 = no bound)")
    g.add_argument("--retry-after-s", type=float, default=d.retry_after_s,
                   help="the retry hint (trailing metadata retry-after-ms) sent with RESOURCE_EXHAUSTED")
    g.add_argument("--tokenizer-threads", type=int, default=d.tokenizer_threads)
    g.add_argument("--max-tokenizing", type=int, default=d.max_tokenizing,
                   help="prompts being or waiting to be tokenized; past it RESOURCE_EXHAUSTED")
    g.add_argument("--adapter-meta-ttl-s", type=float, default=d.adapter_meta_ttl_s,
                   help="trust the store's answer about an adapter this long without asking again "
                        "(default 0: ask every time; with a TTL the store's WatchAdapters stream "
                        "still drops pushed and deleted names at once)")
    g.add_argument("--adapter-meta-max-stale-s", type=float, default=d.adapter_meta_max_stale_s,
                   help="while the store is unreachable, serve adapters a worker holds on the "
                        "scheduler's last answer about them, up to this old")
    sec.add_arguments(ap, max_message_bytes=SCHEDULER_MAX_MESSAGE_BYTES)
    ap.add_argument("--public-plaintext", action="store_true",
                    help="serve the client API without TLS; --tls-* then secure only the links "
                         "to workers and store")


def config_from_args(a: argparse.Namespace) -> SchedulerConfig:
    limits = IntakeLimits(max_prompt_bytes=a.max_prompt_bytes, max_queued=a.max_queued,
                          max_queued_tokens=a.max_queued_tokens, retry_after_s=a.retry_after_s,
                          tokenizer_threads=a.tokenizer_threads, max_tokenizing=a.max_tokenizing,
                          adapter_meta_ttl_s=a.adapter_meta_ttl_s,
                          adapter_meta_max_stale_s=a.adapter_meta_max_stale_s)
    return SchedulerConfig(store=a.store, workers=a.workers, policy=a.policy, host=a.host,
                           port=a.port, port_file=a.port_file, grace_s=a.grace_s,
                           prefetch_hints=a.prefetch_hints, hint_interval_s=a.hint_interval_s,
                           admission_window=a.admission_window, metrics_port=a.metrics_port, public_plaintext=a.public_plaintext,
                           limits=limits,
                           security=sec.config_from_args(a))


def main(argv: list[str] | None = None) -> None:
    from chameleon_common.server import setup_logging

    ap = argparse.ArgumentParser(prog="chameleon serve scheduler", description=__doc__)
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
