"""Prometheus metrics plumbing shared by the three services.

Each service keeps its own CollectorRegistry: event counters and histograms are
updated where the event happens, and state (queues, pool pages, cache counters) is
read at scrape time by a `StateCollector` from the same objects GetStatus reads,
so /metrics and GetStatus never disagree. `--metrics-port N` serves
http://host:N/metrics (0 picks a free port; with --port-file the bound port is
written to <port file>.metrics).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric

# TTFT / TBT histogram buckets, seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RANK_CLASS_BOUNDS = (8, 16, 32, 64, 128)


def rank_class(rank: int) -> str:
    """Histogram label for an adapter's rank: base, r<=8, r<=16, ..., r>128."""
    if rank <= 0:
        return "base"
    for b in RANK_CLASS_BOUNDS:
        if rank <= b:
            return f"r<={b}"
    return f"r>{RANK_CLASS_BOUNDS[-1]}"


class StateCollector:
    """Yields metric families computed by `fn` at every scrape."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]):
        self._fn = fn

    def collect(self) -> Iterable[Metric]:
        yield from self._fn()

    def describe(self) -> list:
        return []   # families are known only at scrape time: do not collect on registration


def add_metrics_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--metrics-port", type=int, default=None,
                    help="serve Prometheus metrics on http://HOST:PORT/metrics (0: a free port; "
                         "default: off)")


def check_metrics_port(port: int | None) -> None:
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"--metrics-port must be in [0, 65535], got {port}")


def serve_metrics(registry: CollectorRegistry, port: int | None, host: str,
                  port_file: str | None = None) -> int | None:
    """Start the /metrics HTTP server on a daemon thread; returns the bound port (None: off)."""
    if port is None:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_port
    if port_file:
        target = Path(f"{port_file}.metrics")
        tmp = target.with_suffix(".tmp-metrics")
        tmp.write_text(str(bound))
        os.replace(tmp, target)
    return bound
