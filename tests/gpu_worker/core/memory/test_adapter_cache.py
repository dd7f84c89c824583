import pytest

from gpu_worker.core.memory import AdapterCache, CacheConfig, PagePool, ScoreWeights


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(policy: str = "chameleon", pages: int = 20, **kw) -> tuple[AdapterCache, Clock]:
    clock = Clock()
    return AdapterCache(PagePool(pages), CacheConfig(policy, **kw), clock), clock


def load(cache: AdapterCache, aid: str, n: int, nbytes: int = 100, **kw) -> list[int]:
    pages = cache.reserve_for_load(aid, n, digest="d1", nbytes=nbytes, **kw)
    assert pages is not None and len(pages) == n
    cache.mark_loaded(aid)
    return pages


def test_idle_adapter_stays_cached_until_kv_needs_its_pages():
    cache, _ = make(pages=10)
    pages = load(cache, "a", 4)
    cache.acquire("a", "r1")
    cache.release("a", "r1")
    assert cache.is_resident("a")
    assert cache.stats().idle_adapter_pages == 4
    kv = cache.allocate_kv("r2", 8)
    assert kv is not None and set(pages) <= set(kv)
    assert not cache.is_resident("a")
    assert cache.stats().evictions == 1
    cache.check()


def test_kv_allocation_fails_without_evicting_when_it_cannot_fit():
    cache, _ = make(pages=10)
    load(cache, "held", 5)
    cache.acquire("held", "r1")
    load(cache, "idle", 3)
    assert cache.allocate_kv("big", 6) is None  # 2 free + 3 evictable < 6
    assert cache.is_resident("idle") and cache.is_resident("held")
    assert cache.allocate_kv("ok", 5) is not None  # 2 free + 3 evictable
    assert not cache.is_resident("idle") and cache.is_resident("held")
    cache.check()


def test_adapters_wanted_by_queued_requests_go_last_and_keep_is_respected():
    cache, clock = make(pages=10)
    load(cache, "wanted", 4)
    clock.t = 1.0
    load(cache, "other", 4)
    cache.set_queued_demand({"wanted"})
    cache.allocate_kv("r1", 3)  # 2 free: one eviction needed; "wanted" is older but queued
    assert cache.is_resident("wanted") and not cache.is_resident("other")
    assert cache.allocate_kv("r2", 4, keep={"wanted"}) is None
    assert cache.allocate_kv("r2", 4) is not None
    assert not cache.is_resident("wanted")


def test_chameleon_score_keeps_big_frequent_adapter_over_small_rare_one():
    cache, clock = make(pages=12)
    load(cache, "big", 8)
    load(cache, "small", 2)
    for i in range(3):
        cache.acquire("big", f"b{i}")
        cache.release("big", f"b{i}")
    clock.t = 5.0
    cache.acquire("small", "s")  # the small one is the most recent...
    cache.release("small", "s")
    cache.allocate_kv("r", 3)  # ...but still scores lowest
    assert cache.is_resident("big") and not cache.is_resident("small")


def test_chameleon_lru_evicts_least_recent_regardless_of_size():
    cache, clock = make("chameleon-lru", pages=12)
    load(cache, "big", 8)
    load(cache, "small", 2)
    cache.acquire("big", "b")
    cache.release("big", "b")
    clock.t = 5.0
    cache.acquire("small", "s")
    cache.release("small", "s")
    cache.allocate_kv("r", 3)
    assert not cache.is_resident("big") and cache.is_resident("small")


def test_slora_drops_an_adapter_once_no_running_or_queued_request_wants_it():
    cache, _ = make("slora")
    load(cache, "a", 3)
    cache.set_queued_demand({"a"})  # prefetched for a queued request
    cache.acquire("a", "r1")
    cache.set_queued_demand(set())
    cache.release("a", "r1")
    assert not cache.is_resident("a") and cache.stats().free_pages == 20
    load(cache, "b", 3)
    cache.set_queued_demand({"b"})
    assert cache.is_resident("b")
    cache.set_queued_demand(set())
    assert not cache.is_resident("b")
    assert cache.stats().evictions == 2


def test_lru_slots_are_reserved_out_of_the_pool():
    cache, clock = make("lru", pages=20, lru_slots=2, lru_slot_pages=4)
    assert cache.stats().kv_available_pages == 12
    assert cache.allocate_kv("too-big", 13) is None
    assert cache.allocate_kv("r0", 12) is not None
    load(cache, "a", 4)
    clock.t = 1.0
    load(cache, "b", 2)
    cache.acquire("b", "rb")
    clock.t = 2.0
    load(cache, "c", 3)  # both slots taken: the idle one ("a") goes
    assert not cache.is_resident("a") and cache.is_resident("c")
    cache.acquire("c", "rc")
    assert cache.reserve_for_load("d", 1, digest="d1", nbytes=1) is None  # every slot held
    with pytest.raises(ValueError):
        cache.reserve_for_load("huge", 5, digest="d1", nbytes=1)
    cache.check()


def test_acquire_reports_adapter_wait_on_the_critical_path():
    cache, clock = make()
    cache.reserve_for_load("a", 2, digest="d1", nbytes=10)
    assert cache.is_loading("a") and not cache.lookup("a")
    clock.t = 3.0
    cache.mark_loaded("a")
    assert cache.acquire("a", "r1", wanted_at=1.0) == pytest.approx(2.0)
    assert cache.acquire("a", "r2", wanted_at=4.0) == 0.0
    assert cache.acquire("a", "r3") == 0.0
    assert cache.lookup("a")
    s = cache.stats()
    assert (s.hits, s.misses, s.loads, s.bytes_loaded) == (1, 1, 1, 10)
    assert s.critical_load_s_total == pytest.approx(2.0) and s.critical_load_count == 3
    assert s.hit_rate == 0.5


def test_prefetch_without_eviction_uses_free_pages_only():
    cache, _ = make(pages=6)
    load(cache, "a", 4)
    assert cache.reserve_for_load("b", 3, digest="d1", nbytes=1, may_evict=False) is None
    assert cache.is_resident("a")
    assert cache.reserve_for_load("b", 2, digest="d1", nbytes=1, may_evict=False) is not None


def test_loading_adapters_are_never_evicted_and_cancel_frees_them():
    cache, _ = make(pages=6)
    cache.reserve_for_load("a", 4, digest="d1", nbytes=1)
    assert cache.allocate_kv("r", 3) is None
    cache.cancel_load("a")
    assert cache.allocate_kv("r", 6) is not None
    assert cache.stats().evictions == 0


def test_flush_drops_idle_adapters_but_not_held_ones():
    cache, _ = make()
    load(cache, "idle", 2)
    load(cache, "held", 2)
    cache.acquire("held", "r")
    assert cache.flush() == ["idle"]
    assert cache.stats().cached_adapters == ("held",)
    cache.release("held", "r")
    cache.flush()
    assert cache.stats().free_pages == 20 and cache.stats().evictions == 0


def test_digest_change_reloads_idle_adapter_and_refuses_held_one():
    cache, _ = make()
    load(cache, "a", 2)
    with pytest.raises(ValueError):
        cache.reserve_for_load("a", 2, digest="d1", nbytes=1)
    cache.acquire("a", "r")
    with pytest.raises(ValueError):
        cache.reserve_for_load("a", 2, digest="d2", nbytes=1)
    cache.release("a", "r")
    assert cache.reserve_for_load("a", 3, digest="d2", nbytes=1) is not None
    assert cache.entry("a").digest == "d2" and len(cache.pages_of("a")) == 3


def test_misuse_raises():
    cache, _ = make()
    with pytest.raises(ValueError):
        cache.acquire("nope", "r")
    with pytest.raises(KeyError):
        cache.release("nope", "r")
    load(cache, "a", 1)
    cache.acquire("a", "r")
    with pytest.raises(ValueError):
        cache.acquire("a", "r")
    with pytest.raises(ValueError):
        cache.mark_loaded("a")
    with pytest.raises(ValueError):
        cache.allocate_kv("x", -1)


def test_kv_owner_grows_and_frees_all_its_pages():
    cache, _ = make(pages=10)
    cache.allocate_kv("r", 2)
    cache.allocate_kv("r", 3)
    assert len(cache.kv_pages_of("r")) == 5 and cache.stats().kv_pages == 5
    assert cache.free_kv("r") == 5 and cache.stats().free_pages == 10


@pytest.mark.parametrize("kwargs", [
    {"policy": "belady"},
    {"policy": "lru"},
    {"policy": "slora", "lru_slots": 2, "lru_slot_pages": 2},
    {"policy": "chameleon-fairshare", "weights": ScoreWeights()},
    {"policy": "chameleon", "frequency_window_s": 0},
])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        CacheConfig(**kwargs)


def test_lru_reservation_larger_than_pool_is_rejected():
    with pytest.raises(ValueError):
        AdapterCache(PagePool(10), CacheConfig("lru", lru_slots=3, lru_slot_pages=4), Clock())
