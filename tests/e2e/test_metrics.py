"""Each service serves Prometheus metrics; after a few requests they add up, and GetStatus
reports the same numbers."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients.client import ChameleonClient
from clients.launcher import Cluster, ClusterSpec

pytestmark = pytest.mark.e2e


def scrape(url: str) -> dict[str, list]:
    """{sample name: [(labels, value)]}"""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(m: dict, name: str, **labels) -> float:
    return sum(v for lab, v in m.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


async def test_metrics_from_every_service_add_up(tiny_assets):
    adapters = sorted(p.name for p in Path(tiny_assets["adapters"]).iterdir() if p.is_dir())[:3]
    spec = ClusterSpec(model=Path(tiny_assets["model"]), adapters=Path(tiny_assets["adapters"]),
                       policy="chameleon", worker_args=["--metrics-port", "0"],
                       scheduler_args=["--metrics-port", "0"], store_args=["--metrics-port", "0"])
    load = [adapters[0], adapters[0], None, adapters[1], adapters[0], adapters[2], adapters[1], None]
    with Cluster(spec) as cluster:
        async with ChameleonClient(cluster.address) as c:
            for i, a in enumerate(load):   # one at a time: each repeat of an adapter is a hit
                await c.complete(f"Request {i}", adapter=a, max_tokens=3)
            await asyncio.sleep(0.6)   # the worker's state stream ticks every 0.25 s
            status = await c.status()
        cli = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "clients.cli", "status",
                                                       "--address", cluster.address],
                                      capture_output=True, text=True, timeout=60)
        sched = scrape(cluster.scheduler.metrics_url)
        worker = scrape(cluster.workers[0].metrics_url)
        store = scrape(cluster.store.metrics_url)

    n, with_adapter = len(load), sum(a is not None for a in load)
    # scheduler: requests by status, TTFT by rank class, queues, predictor
    assert total(sched, "chameleon_scheduler_requests_total", status="OK") == n
    assert total(sched, "chameleon_ttft_seconds_count") == n
    assert total(sched, "chameleon_ttft_seconds_count", rank_class="base") == n - with_adapter
    assert total(sched, "chameleon_tbt_seconds_count") > 0
    assert sched["chameleon_queue_length"] and sched["chameleon_queue_quota_tokens"]
    assert total(sched, "chameleon_queue_quota_tokens") > 0
    assert total(sched, "chameleon_predictor", stat="samples") == n
    assert status.requests_by_status["OK"] == n
    assert [q.quota_tokens for q in status.queues] == [
        v for _, v in sorted(sched["chameleon_queue_quota_tokens"], key=lambda x: x[0]["queue"])]

    # worker: every adapter request was a hit or a miss; the pages add up to the pool
    hits = total(worker, "chameleon_adapter_cache_hits_total")
    misses = total(worker, "chameleon_adapter_cache_misses_total")
    assert hits + misses == with_adapter and misses == len(set(a for a in load if a)) and hits > 0
    pages = {lab["use"]: v for lab, v in worker["chameleon_pool_pages"]}
    assert set(pages) == {"kv", "adapter_active", "adapter_idle", "free"}
    assert sum(pages.values()) == total(worker, "chameleon_pool_pages_total") > 0
    assert total(worker, "chameleon_adapter_cache_loaded_bytes_total") > 0
    assert total(worker, "chameleon_worker_requests_total") == n
    w = status.workers[0]
    assert (w.cache_hits, w.cache_misses) == (hits, misses)
    assert w.kv_pages == pages["kv"] and w.free_pages == pages["free"]

    # store: the fetches the worker made, and their bytes
    fetched = total(worker, "chameleon_adapter_fetches_total")
    assert total(store, "chameleon_store_requests_total", method="FetchAdapter", status="OK") == fetched
    assert total(store, "chameleon_store_fetch_bytes_total") > 0
    assert total(store, "chameleon_store_fetch_errors_total") == 0
    assert total(store, "chameleon_store_requests_total", method="StatAdapter") >= with_adapter
    # the CLI shows the same figures
    assert f"requests: OK {n}" in cli.stdout and "pool pages:" in cli.stdout, cli.stdout + cli.stderr
    assert "queue 0 (" in cli.stdout
