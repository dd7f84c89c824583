"""Trace-driven simulation of one worker's unified pool under each cache policy.

Nothing here touches a GPU: a simulated clock, a simple engine cost model and
the real `AdapterCache` / `PagePool` from gpu_worker.core.memory. Results are
simulated, and are labelled so wherever they are printed.

Workload (after the paper's setup, §5): 100 adapters, 20 per rank in
{8, 16, 32, 64, 128}; a request picks a rank uniformly, then an adapter within
the rank by a power law (weight 1/(i+1)^zipf_alpha); Poisson arrivals; input
and output lengths drawn from log-normal distributions shaped like a chat
("conversation") trace, scaled down (medians `input_median`/`output_median`).

Memory: Llama-7B geometry (32 layers, K/V width 4096, fp16) with 16-token
pages (8 MiB each); adapters target q/k/v/o, so a rank-r adapter takes r/4
pages and r * 2 MiB of weights, placed by the real row layout.

Engine: FIFO admission (head-of-line blocking, as in S-LoRA) when the request's
adapter is loaded and pages for its whole prompt + output fit; every step
prefills new requests and decodes one token for each running one; step time =
`step_base_ms` + `step_per_seq_ms` * running + `prefill_per_token_ms` * prompt
tokens. Adapter loads share one PCIe link (FIFO) at `pcie_gb_per_s`, so a load
takes bytes / bandwidth after the loads ahead of it. The first
`prefetch_depth` queued requests' adapters are prefetched, as in S-LoRA.
"""
from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from gpu_worker.core.memory import (AdapterCache, AdapterShape, CacheConfig, PageGeometry, PagePool,
                                    pages_needed)

RANKS = (8, 16, 32, 64, 128)
NUM_LAYERS, KV_DIM, HIDDEN, DTYPE_BYTES, BLOCK_SIZE = 32, 4096, 4096, 2, 16
PAGE_BYTES = 2 * BLOCK_SIZE * KV_DIM * DTYPE_BYTES * NUM_LAYERS
TARGET_MODULES = {m: (HIDDEN, HIDDEN) for m in ("q_proj", "k_proj", "v_proj", "o_proj")}


@dataclass(frozen=True)
class TraceConfig:
    num_requests: int = 3000
    rate_rps: float = 10.0
    adapters_per_rank: int = 20
    zipf_alpha: float = 1.0
    input_median: int = 256
    input_sigma: float = 0.8
    output_median: int = 128
    output_sigma: float = 0.7
    max_input: int = 1024
    max_output: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_requests <= 0 or self.adapters_per_rank <= 0:
            raise ValueError("num_requests and adapters_per_rank must be positive")
        if not self.rate_rps > 0 or self.zipf_alpha < 0:
            raise ValueError("rate_rps must be positive and zipf_alpha >= 0")


@dataclass(frozen=True)
class EngineConfig:
    num_pages: int = 1600
    max_running: int = 64
    step_base_ms: float = 20.0
    step_per_seq_ms: float = 0.15
    prefill_per_token_ms: float = 0.08
    pcie_gb_per_s: float = 10.0
    prefetch_depth: int = 8
    # vLLM-style lru: slots of max-rank size taking this share of the pool. 0.4 gave lru its
    # best TTFT on the default trace (a sweep of 0.1-0.6): fewer slots cap how many distinct
    # adapters can run at once, more starve the KV cache
    lru_reserve_fraction: float = 0.4
    frequency_window_s: float = 60.0
    # run AdapterCache.check() every step (slow; for tests on small pools)
    check_invariants: bool = False

    def __post_init__(self) -> None:
        if self.num_pages <= 0 or self.max_running <= 0 or self.prefetch_depth < 0:
            raise ValueError("num_pages and max_running must be positive, prefetch_depth >= 0")
        if not (self.pcie_gb_per_s > 0 and 0 < self.lru_reserve_fraction < 1):
            raise ValueError("pcie_gb_per_s must be positive and lru_reserve_fraction in (0, 1)")


@dataclass(frozen=True)
class Adapter:
    adapter_id: str
    rank: int
    pages: int
    nbytes: int


@dataclass
class Request:
    request_id: str
    arrival: float
    adapter: Adapter
    input_len: int
    output_len: int
    head_since: float | None = None
    started: float | None = None
    generated: int = 0
    load_wait_s: float = 0.0
    ttft_s: float = 0.0


def make_adapters(per_rank: int) -> list[Adapter]:
    geometry = PageGeometry.for_kv_block(BLOCK_SIZE, KV_DIM, row_width=HIDDEN)
    out = []
    for rank in RANKS:
        shape = AdapterShape.uniform(NUM_LAYERS, rank, TARGET_MODULES)
        pages = pages_needed(geometry, shape)
        for i in range(per_rank):
            out.append(Adapter(f"r{rank}-{i:02d}", rank, pages, shape.weight_elements() * DTYPE_BYTES))
    return out


def make_trace(cfg: TraceConfig) -> list[Request]:
    rng = random.Random(cfg.seed)
    adapters = make_adapters(cfg.adapters_per_rank)
    by_rank = {r: [a for a in adapters if a.rank == r] for r in RANKS}
    within = [1.0 / (i + 1) ** cfg.zipf_alpha for i in range(cfg.adapters_per_rank)]
    t = 0.0
    trace = []
    for n in range(cfg.num_requests):
        t += rng.expovariate(cfg.rate_rps)
        adapter = rng.choices(by_rank[rng.choice(RANKS)], weights=within)[0]
        inp = min(cfg.max_input, max(8, round(rng.lognormvariate(math.log(cfg.input_median), cfg.input_sigma))))
        out = min(cfg.max_output, max(4, round(rng.lognormvariate(math.log(cfg.output_median), cfg.output_sigma))))
        trace.append(Request(f"q{n}", t, adapter, inp, out))
    return trace


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class PolicyResult:
    policy: str
    hits: int
    misses: int
    loads: int
    evictions: int
    bytes_loaded: int
    load_waits_s: list[float] = field(default_factory=list)
    ttfts_s: list[float] = field(default_factory=list)
    # time-averaged idle memory (free pages + idle cached adapters' pages) / all adapters' pages
    idle_fraction_mean: float = 0.0
    sim_seconds: float = 0.0


def _pages_for_tokens(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


def cache_config_for(policy: str, eng: EngineConfig) -> CacheConfig:
    if policy == "lru":
        slot_pages = max(a.pages for a in make_adapters(1))
        slots = max(1, int(eng.lru_reserve_fraction * eng.num_pages) // slot_pages)
        return CacheConfig("lru", frequency_window_s=eng.frequency_window_s, lru_slots=slots,
                           lru_slot_pages=slot_pages)
    return CacheConfig(policy, frequency_window_s=eng.frequency_window_s)


def simulate(policy: str, trace: list[Request], eng: EngineConfig) -> PolicyResult:
    """Replay `trace` (copied, the input is left untouched) under one cache policy."""
    reqs = [Request(r.request_id, r.arrival, r.adapter, r.input_len, r.output_len) for r in trace]
    clock = SimClock()
    cache = AdapterCache(PagePool(eng.num_pages), cache_config_for(policy, eng), clock)
    all_adapter_pages = sum({r.adapter.adapter_id: r.adapter.pages for r in reqs}.values())
    queue: deque[Request] = deque()
    running: list[Request] = []
    loads: deque[tuple[float, str]] = deque()  # (done_at, adapter id), FIFO on the link
    link_free_at = 0.0
    bytes_per_s = eng.pcie_gb_per_s * 1e9
    next_arrival = finished = 0
    idle_area = 0.0
    result = PolicyResult(policy, 0, 0, 0, 0, 0)

    def start_load(a: Adapter, keep: set[str]) -> bool:
        nonlocal link_free_at
        if cache.reserve_for_load(a.adapter_id, a.pages, digest="d", nbytes=a.nbytes, rank=a.rank,
                                  keep=keep) is None:
            return False
        link_free_at = max(clock.now, link_free_at) + a.nbytes / bytes_per_s
        loads.append((link_free_at, a.adapter_id))
        return True

    while finished < len(reqs):
        while next_arrival < len(reqs) and reqs[next_arrival].arrival <= clock.now:
            r = reqs[next_arrival]
            cache.lookup(r.adapter.adapter_id)
            queue.append(r)
            next_arrival += 1
        while loads and loads[0][0] <= clock.now:
            cache.mark_loaded(loads.popleft()[1])
        cache.set_queued_demand(r.adapter.adapter_id for r in queue)

        admitted: list[Request] = []
        while queue and len(running) < eng.max_running:
            r = queue[0]
            aid = r.adapter.adapter_id
            if r.head_since is None:
                r.head_since = clock.now
            if not cache.is_resident(aid):
                if not cache.is_loading(aid):
                    start_load(r.adapter, keep=set())
                break  # FIFO: the head waits for its adapter
            if cache.allocate_kv(r.request_id, _pages_for_tokens(r.input_len + r.output_len),
                                 keep={aid}) is None:
                break
            r.load_wait_s = cache.acquire(aid, r.request_id, wanted_at=r.head_since)
            r.started = clock.now
            queue.popleft()
            running.append(r)
            admitted.append(r)
        wanted = {r.adapter.adapter_id for r in queue}
        for r in list(queue)[:eng.prefetch_depth]:
            a = r.adapter
            if not cache.is_resident(a.adapter_id) and not cache.is_loading(a.adapter_id):
                if not start_load(a, keep=wanted):
                    break

        if running:
            dt = (eng.step_base_ms + eng.step_per_seq_ms * len(running)
                  + eng.prefill_per_token_ms * sum(r.input_len for r in admitted)) / 1000.0
        else:
            # idle engine: jump to the next arrival or load completion
            events = [reqs[next_arrival].arrival] if next_arrival < len(reqs) else []
            if loads:
                events.append(loads[0][0])
            if not events:
                raise RuntimeError(f"simulation stuck under {policy}: nothing running, nothing to wait for")
            dt = max(0.0, min(events) - clock.now)
        idle_area += (cache.pool.num_free + cache.idle_adapter_pages()) * dt
        clock.now += dt
        still: list[Request] = []
        for r in running:
            r.generated += 1
            if r.generated == 1:
                r.ttft_s = clock.now - r.arrival
            if r.generated >= r.output_len:
                cache.free_kv(r.request_id)
                cache.release(r.adapter.adapter_id, r.request_id)
                finished += 1
            else:
                still.append(r)
        running = still
        if eng.check_invariants:
            cache.check()

    s = cache.stats()
    result.hits, result.misses, result.loads = s.hits, s.misses, s.loads
    result.evictions, result.bytes_loaded = s.evictions, s.bytes_loaded
    result.load_waits_s = [r.load_wait_s for r in reqs]
    result.ttfts_s = [r.ttft_s for r in reqs]
    result.sim_seconds = clock.now
    result.idle_fraction_mean = idle_area / clock.now / all_adapter_pages if clock.now else 0.0
    return result
