"""#3: the cache policy changes where adapters live and when they load, never the tokens.

A pool too small to keep every adapter forces loads, evictions and waiting
requests; every policy must still produce the tokens of an unconstrained run.
"""
from __future__ import annotations

import pytest

from gpu_worker.core.engine import Engine, EngineConfig
from gpu_worker.core.memory import POLICY_NAMES, CacheConfig, layout_adapter
from gpu_worker.core.sequence import SamplingSpec, Sequence
from gpu_worker.core.unified_pool import row_geometry, stage_adapter

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def parts(engine_parts):
    _, model, tok, adapters, _ = engine_parts
    return model, tok, adapters


def adapter_pages(model, adapters, block_size: int = 4) -> dict[str, int]:
    """Pool pages each adapter takes at this block size."""
    geometry = row_geometry(model.config, block_size)
    return {n: layout_adapter(geometry, stage_adapter(a, model.config).shape).num_pages
            for n, a in adapters.items()}


def run(model, tok, adapters, cache: CacheConfig, num_blocks: int):
    eng = Engine(model, tok, EngineConfig(block_size=4, num_blocks=num_blocks, max_running=4,
                                          max_step_tokens=128, max_context=128, cache=cache))
    names = sorted(adapters)
    seqs = [Sequence(str(i), tok.encode(PROMPTS[i % 4], add_special_tokens=False).ids,
                     SamplingSpec(max_tokens=6), adapter_id=names[(i * 3) % len(names)] if i % 5 else None)
            for i in range(24)]
    pending = list(seqs)
    steps = 0
    while pending or not eng.idle():
        if pending:
            for aid in eng.add(pending.pop(0)):
                eng.install(stage_adapter(adapters[aid], model.config))
        eng.step()
        steps += 1
        assert steps < 5000, "the engine stopped making progress"
    return [s.output_ids for s in seqs], eng.memory.stats()


def test_every_policy_generates_the_same_tokens(parts):
    model, tok, adapters = parts
    reference, _ = run(model, tok, adapters, CacheConfig("chameleon"), num_blocks=2048)
    largest = max(adapter_pages(model, adapters).values())
    # room for a few running requests plus two or three adapters: loads and evictions happen
    small = 4 * 8 + 3 * largest
    seen_evictions = 0
    for policy in POLICY_NAMES:
        cache = (CacheConfig(policy, lru_slots=2, lru_slot_pages=largest) if policy == "lru"
                 else CacheConfig(policy))
        blocks = small + (2 * largest if policy == "lru" else 0)
        tokens, stats = run(model, tok, adapters, cache, num_blocks=blocks)
        assert tokens == reference, policy
        seen_evictions += stats.evictions
    assert seen_evictions > 0, "the pool was large enough that nothing was evicted: the test shows nothing"


def test_adapter_loads_never_take_pages_running_requests_will_grow_into(parts):
    """Two base requests reserve their whole context at admission and grow into it step by
    step. An adapter arriving meanwhile fits in the pages they have not touched yet, but must
    wait for them to finish rather than take those pages."""
    model, tok, adapters = parts
    sizes = adapter_pages(model, adapters)
    name = min(sizes, key=sizes.get)
    prompt = tok.encode(PROMPTS[0], add_special_tokens=False).ids
    per_request = -(-(len(prompt) + 24) // 4)
    pool = 2 * per_request + sizes[name] - 4   # both base requests' reservations + all but 4 of the adapter
    eng = Engine(model, tok, EngineConfig(block_size=4, num_blocks=pool, max_running=4,
                                          max_step_tokens=64, max_context=64))
    seqs = [Sequence(str(i), prompt, SamplingSpec(max_tokens=24), adapter_id=aid)
            for i, aid in enumerate([None, None, name])]
    fetch = [aid for s in seqs for aid in eng.add(s)]
    assert fetch == [name]
    eng.step()
    eng.step()
    eng.install(stage_adapter(adapters[name], model.config))  # arrives mid-generation
    steps = 0
    while not eng.idle():
        eng.step()
        steps += 1
        assert steps < 500
    assert all(s.finish is not None and len(s.output_ids) > 0 for s in seqs)
    assert eng.memory.kv_available_pages() == pool


def test_a_waiting_adapter_is_not_starved_by_later_requests(parts):
    """Base requests keep arriving; the adapter request that came first still runs before them."""
    model, tok, adapters = parts
    sizes = adapter_pages(model, adapters)
    name = min(sizes, key=sizes.get)
    prompt = tok.encode(PROMPTS[0], add_special_tokens=False).ids
    per_request = -(-(len(prompt) + 8) // 4)
    eng = Engine(model, tok, EngineConfig(block_size=4, num_blocks=2 * per_request + sizes[name] - 1,  # fits beside <= 1 request
                                          max_running=4, max_step_tokens=64, max_context=64))
    for i in range(3):  # staggered: some base request is always mid-generation
        eng.add(Sequence(f"b{i}", prompt, SamplingSpec(max_tokens=8)))
        for _ in range(3):
            eng.step()
    lora = Sequence("lora", prompt, SamplingSpec(max_tokens=8), adapter_id=name)
    eng.add(lora)
    eng.install(stage_adapter(adapters[name], model.config))
    lates: list[Sequence] = []
    steps = 0
    while lora.finish is None:
        if len(eng.planner.waiting) + len(eng.planner.running) < 3:  # keep base load coming
            lates.append(Sequence(f"late{len(lates)}", prompt, SamplingSpec(max_tokens=8)))
            eng.add(lates[-1])
        eng.step()
        steps += 1
        if not lora.output_ids:   # the adapter request came first: no later request may start first
            started = [s.request_id for s in lates if s.output_ids]
            assert not started, f"{started} started before the adapter request that came first"
        assert steps < 200, "the adapter request starved behind later base requests"
    assert lates, "no later request arrived while the adapter request waited: the test shows nothing"


def test_an_adapter_larger_than_the_pool_fails_its_requests_clearly(parts):
    from gpu_worker.core.worker_memory import AdapterTooLargeError

    model, tok, adapters = parts
    name = max(adapters, key=lambda n: adapters[n].nbytes)
    eng = Engine(model, tok, EngineConfig(block_size=4, num_blocks=16, max_context=64, max_step_tokens=64))
    s = Sequence("x", tok.encode("hi").ids, SamplingSpec(max_tokens=4), adapter_id=name)
    assert eng.add(s) == [name]
    with pytest.raises(AdapterTooLargeError, match="pool-memory-bytes"):
        eng.install(stage_adapter(adapters[name], model.config))
    assert eng.adapter_failed(name) == [s] and eng.idle()


def test_pinning_an_idle_cached_adapter_leaves_running_requests_their_pages(parts):
    """An idle cached adapter's pages count as available to KV; a hit that pins it must wait
    if running requests will need those pages."""
    model, tok, adapters = parts
    sizes = adapter_pages(model, adapters)
    name = min(sizes, key=sizes.get)
    prompt = tok.encode(PROMPTS[0], add_special_tokens=False).ids
    per_request = -(-(len(prompt) + 24) // 4)
    pool = 2 * per_request + sizes[name] - 4
    eng = Engine(model, tok, EngineConfig(block_size=4, num_blocks=pool, max_running=4,
                                          max_step_tokens=64, max_context=64))

    def drain():
        for _ in range(500):
            if eng.idle():
                return
            eng.step()
            for aid in eng.take_fetches():  # evicted for KV meanwhile: load it again
                eng.install(stage_adapter(adapters[aid], model.config))
        raise AssertionError("no progress")

    warm = Sequence("warm", prompt, SamplingSpec(max_tokens=4), adapter_id=name)
    assert eng.add(warm) == [name]
    eng.install(stage_adapter(adapters[name], model.config))
    drain()
    assert eng.memory.stats().cached_adapters == (name,)  # cached, idle
    base = [Sequence(f"b{i}", prompt, SamplingSpec(max_tokens=24)) for i in range(2)]
    for s in base:
        eng.add(s)
    eng.step()
    eng.step()
    hit = Sequence("hit", prompt, SamplingSpec(max_tokens=24), adapter_id=name)
    assert eng.add(hit) == []  # a hit: nothing to fetch, but it has to wait for room
    drain()
    assert all(s.finish is not None for s in base + [hit])
    assert eng.memory.stats().hits >= 1


def test_predictive_prefetch_loads_an_adapter_before_its_request(parts):
    from gpu_worker.core.memory import PrefetcherConfig

    model, tok, adapters = parts
    now = [0.0]
    name = sorted(adapters)[0]
    eng = Engine(model, tok, EngineConfig(block_size=4, num_blocks=1024, max_context=64, max_step_tokens=64,
                                          prefetch=PrefetcherConfig(bin_s=0.5, horizon_s=0.5, min_samples=3)),
                 clock=lambda: now[0])
    prompt = tok.encode(PROMPTS[0], add_special_tokens=False).ids

    def serve(i):
        s = Sequence(f"r{i}", prompt, SamplingSpec(max_tokens=2), adapter_id=name)
        for aid in eng.add(s):
            eng.install(stage_adapter(adapters[aid], model.config))
        while not eng.idle():
            eng.step()
        return s

    for i in range(4):  # one request a second
        now[0] = float(i)
        serve(i)
    assert eng.take_fetches() == []  # cached: nothing to prefetch
    eng.memory.cache.flush()          # the adapter leaves the cache
    now[0] = 3.2
    assert eng.take_fetches() == []   # the next request is not due yet
    now[0] = 3.6
    assert eng.take_fetches() == [name]
    eng.install(stage_adapter(adapters[name], model.config))  # speculative: cached, idle
    assert eng.memory.stats().cached_adapters == (name,)
    hits = eng.memory.stats().hits
    now[0] = 4.0
    serve(4)
    assert eng.memory.stats().hits == hits + 1


class _SlowCopy:
    """Stands in for a CUDA event on a side-stream copy that lands after a few polls."""

    def __init__(self, polls: int):
        self.polls = polls

    def query(self) -> bool:
        self.polls -= 1
        return self.polls < 0


def test_requests_wait_for_an_asynchronous_adapter_copy_and_others_keep_running(parts):
    model, tok, adapters = parts
    name = sorted(adapters)[0]
    prompt = tok.encode(PROMPTS[1], add_special_tokens=False).ids
    eng = Engine(model, tok, EngineConfig(block_size=4, num_blocks=2048, max_context=64, max_step_tokens=64))
    install = eng.pool.install

    def slow_install(*args, **kwargs):
        pooled = install(*args, **kwargs)
        pooled.ready = _SlowCopy(polls=3)
        return pooled

    eng.pool.install = slow_install
    base = Sequence("base", prompt, SamplingSpec(max_tokens=6))
    lora = Sequence("lora", prompt, SamplingSpec(max_tokens=6), adapter_id=name)
    eng.add(base)
    assert eng.add(lora) == [name]
    eng.install(stage_adapter(adapters[name], model.config))
    assert eng.memory.copying() and eng.memory.stats().loading_adapters == (name,)
    eng.step()  # the copy is in flight: only the base request runs
    assert base.num_computed > 0 and lora.num_computed == 0
    steps = 0
    while not eng.idle():
        eng.step()
        steps += 1
        assert steps < 100
    assert not eng.memory.copying() and lora.output_ids and lora.finish is not None

    alone = Engine(model, tok, EngineConfig(block_size=4, num_blocks=2048, max_context=64, max_step_tokens=64))
    same = Sequence("same", prompt, SamplingSpec(max_tokens=6), adapter_id=name)
    alone.add(same)
    alone.install(stage_adapter(adapters[name], model.config))
    while not alone.idle():
        alone.step()
    assert lora.output_ids == same.output_ids
