"""Random admit/grow/finish/load/evict sequences against every cache policy."""
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gpu_worker.core.memory import POLICY_NAMES, AdapterCache, CacheConfig, PagePool

POOL_PAGES = 14
ADAPTER_PAGES = {"a1": 1, "a2": 2, "a3": 3, "a4": 4, "a5": 2, "a6": 4}
ADAPTERS = sorted(ADAPTER_PAGES)
LRU_SLOTS = 2


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


class CacheMachine(RuleBasedStateMachine):
    policy = "chameleon"

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        extra = {"lru_slots": LRU_SLOTS, "lru_slot_pages": 4} if self.policy == "lru" else {}
        self.cache = AdapterCache(PagePool(POOL_PAGES), CacheConfig(self.policy, frequency_window_s=5.0,
                                                                    **extra), self.clock)
        self.queued: dict[str, str] = {}  # request -> adapter
        self.running: dict[str, str] = {}
        self.next_id = 0

    # -- helpers ----------------------------------------------------------
    def resident(self) -> set[str]:
        return {a for a in ADAPTERS if self.cache.is_resident(a)}

    def publish_demand(self) -> None:
        self.cache.set_queued_demand(set(self.queued.values()))

    def check_eviction_order(self, before: set[str], keep: set[str]) -> None:
        """Evict no more than needed; adapters of queued requests only after every other idle one."""
        gone = before - self.resident()
        if gone and self.policy == "lru":
            assert len(gone) == 1  # a slot for one adapter
        elif gone:
            # the last victim was needed: without it the allocation would have fallen short
            assert self.cache.pool.num_free < max(ADAPTER_PAGES[a] for a in gone)
        wanted = set(self.queued.values())
        if gone & wanted:
            idle_unwanted = {a for a in before if a not in wanted and a not in keep
                             and a not in self.running.values()}
            assert idle_unwanted <= gone

    # -- rules ------------------------------------------------------------
    @rule(adapter=st.sampled_from(ADAPTERS))
    def arrive(self, adapter):
        rid = f"r{self.next_id}"
        self.next_id += 1
        self.cache.lookup(adapter)
        self.queued[rid] = adapter
        self.publish_demand()

    @rule(adapter=st.sampled_from(ADAPTERS), may_evict=st.booleans(),
          keep=st.sets(st.sampled_from(ADAPTERS), max_size=2), complete=st.booleans())
    def start_load(self, adapter, may_evict, keep, complete):
        if self.cache.entry(adapter) is not None:
            return
        n = ADAPTER_PAGES[adapter]
        before = self.resident()
        possible = self.cache.pool.num_free >= n
        if self.policy == "lru":
            entries = len(self.cache.stats().cached_adapters) + len(self.cache.stats().loading_adapters)
            has_idle = bool(self.cache._idle(keep | {adapter}))
            possible = entries < LRU_SLOTS or (may_evict and has_idle)
        elif may_evict:
            possible = self.cache.pool.num_free + self.cache.idle_adapter_pages(keep | {adapter}) >= n
        pages = self.cache.reserve_for_load(adapter, n, digest="d", nbytes=n * 10, keep=keep,
                                            may_evict=may_evict)
        assert (pages is not None) == possible
        if pages is None:
            assert self.resident() == before
        else:
            assert all(self.cache.pool.owner_of(p) == f"adapter:{adapter}" for p in pages)
            assert not (before - self.resident()) & keep
            self.check_eviction_order(before, keep | {adapter})
            if complete:
                self.cache.mark_loaded(adapter)

    def loading(self) -> list[str]:
        return [a for a in ADAPTERS if self.cache.is_loading(a)]

    @precondition(lambda self: self.loading())
    @rule(i=st.integers(0, 100), fail=st.booleans())
    def finish_load(self, i, fail):
        adapters = self.loading()
        adapter = adapters[i % len(adapters)]
        if fail:
            self.cache.cancel_load(adapter)
        else:
            self.cache.mark_loaded(adapter)

    @precondition(lambda self: self.queued)
    @rule(i=st.integers(0, 100), n=st.integers(0, 10))
    def admit(self, i, n):
        rid = sorted(self.queued)[i % len(self.queued)]
        adapter = self.queued[rid]
        if not self.cache.is_resident(adapter):
            return
        self.try_kv(rid, n, keep={adapter})
        if self.cache.kv_pages_of(rid) or n == 0:
            self.cache.acquire(adapter, rid, wanted_at=self.clock.t)
            del self.queued[rid]
            self.running[rid] = adapter
            self.publish_demand()

    @precondition(lambda self: self.running)
    @rule(i=st.integers(0, 100), n=st.integers(1, 6))
    def grow(self, i, n):
        rid = sorted(self.running)[i % len(self.running)]
        self.try_kv(rid, n, keep=set())

    @rule(n=st.integers(1, POOL_PAGES))
    def activations(self, n):
        self.try_kv("activations", n, keep=set())
        self.cache.free_kv("activations")

    def try_kv(self, owner, n, keep):
        available = self.cache.kv_available_pages(keep)
        before = self.resident()
        pages = self.cache.allocate_kv(owner, n, keep=keep)
        # never fails while free plus evictable pages suffice, never succeeds beyond them
        assert (pages is None) == (n > available)
        if pages is None:
            assert self.resident() == before
        else:
            self.check_eviction_order(before, keep)

    @precondition(lambda self: self.running)
    @rule(i=st.integers(0, 100))
    def finish(self, i):
        rid = sorted(self.running)[i % len(self.running)]
        adapter = self.running.pop(rid)
        self.cache.free_kv(rid)
        self.cache.release(adapter, rid)

    @precondition(lambda self: self.queued)
    @rule(i=st.integers(0, 100))
    def abandon(self, i):
        del self.queued[sorted(self.queued)[i % len(self.queued)]]
        self.publish_demand()

    @rule(dt=st.floats(0.0, 3.0))
    def tick(self, dt):
        self.clock.t += dt

    @rule()
    def flush(self):
        self.cache.flush()

    @rule()
    def drain(self):
        for rid in list(self.running):
            self.finish(0)
        self.queued.clear()
        self.publish_demand()
        for a in ADAPTERS:
            if self.cache.is_loading(a):
                self.cache.mark_loaded(a)
        self.cache.flush()
        s = self.cache.stats()
        assert s.free_pages == POOL_PAGES and s.kv_pages == 0 and s.adapter_pages == 0

    # -- invariants -------------------------------------------------------
    @invariant()
    def bookkeeping_is_consistent(self):
        self.cache.check()  # raises if a page has two owners or counts disagree
        s = self.cache.stats()
        assert s.kv_pages + s.adapter_pages + s.free_pages == POOL_PAGES
        if self.policy == "lru":
            assert s.kv_pages <= POOL_PAGES - LRU_SLOTS * 4

    @invariant()
    def adapters_in_use_stay_resident(self):
        for rid, adapter in self.running.items():
            assert self.cache.is_resident(adapter)
            assert rid in self.cache.entry(adapter).holders


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_cache_invariants_hold_for_random_operation_sequences(policy):
    machine = type(f"CacheMachine_{policy}", (CacheMachine,), {"policy": policy})
    machine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
    machine.TestCase().runTest()


def random_walk(policy: str, seed: int, steps: int) -> CacheMachine:
    """Drive the same rules and invariants from a seeded RNG: long runs that reach eviction often."""
    rng = random.Random(seed)
    m = type(f"CacheMachine_{policy}", (CacheMachine,), {"policy": policy})()
    ops = [
        (3, lambda: m.arrive(rng.choice(ADAPTERS))),
        (3, lambda: m.start_load(rng.choice(list(m.queued.values()) or ADAPTERS), rng.random() < 0.8,
                                 set(rng.sample(ADAPTERS, rng.randint(0, 2))), rng.random() < 0.5)),
        (3, lambda: m.loading() and m.finish_load(rng.randrange(100), rng.random() < 0.1)),
        (4, lambda: m.queued and m.admit(rng.randrange(100), rng.randint(0, 10))),
        (2, lambda: m.running and m.grow(rng.randrange(100), rng.randint(1, 6))),
        (1, lambda: m.activations(rng.randint(1, POOL_PAGES))),
        (3, lambda: m.running and m.finish(rng.randrange(100))),
        (1, lambda: m.queued and m.abandon(rng.randrange(100))),
        (2, lambda: m.tick(rng.uniform(0.0, 3.0))),
        (0.2, m.flush),
        (0.1, m.drain),
    ]
    weights = [w for w, _ in ops]
    for _ in range(steps):
        rng.choices(ops, weights=weights)[0][1]()
        m.bookkeeping_is_consistent()
        m.adapters_in_use_stay_resident()
    m.drain()
    return m


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_cache_invariants_hold_on_long_random_walks(policy):
    evictions = hits = 0
    for seed in range(6):
        m = random_walk(policy, seed, steps=400)
        evictions += m.cache.evictions
        hits += m.cache.hits
    # the walks must actually reach the interesting paths, or they prove nothing
    assert evictions > 20 and hits > 20
