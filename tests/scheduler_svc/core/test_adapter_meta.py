import pytest

from scheduler_svc.core.adapter_meta import AdapterMetaCache


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_entries_are_fresh_for_the_ttl_then_the_store_is_asked_again():
    clk = Clock()
    c = AdapterMetaCache(clk, ttl_s=10)
    assert c.fresh("a") is None
    c.put("a", "info-a")
    clk.t = 9.9
    assert c.fresh("a") == "info-a"
    clk.t = 10.0
    assert c.fresh("a") is None            # expired: ask the store
    assert c.stale("a") == "info-a"        # still there for when the store is away
    assert c.hits == 1 and c.misses == 2


def test_a_stale_entry_serves_only_adapters_a_worker_holds_for_a_while():
    clk = Clock()
    c = AdapterMetaCache(clk, ttl_s=1, max_stale_s=300)
    c.put("a", "info-a")
    clk.t = 100
    assert c.usable_while_store_down("a", resident_anywhere=False) is None
    assert c.usable_while_store_down("a", resident_anywhere=True) == "info-a"
    assert c.usable_while_store_down("b", resident_anywhere=True) is None
    clk.t = 301
    assert c.usable_while_store_down("a", resident_anywhere=True) is None
    assert c.stale_served == 1


def test_ttl_zero_always_asks_the_store():
    clk = Clock()
    c = AdapterMetaCache(clk, ttl_s=0)
    c.put("a", "info-a")
    assert c.fresh("a") is None and c.stale("a") == "info-a"


def test_invalidation_and_replacement_and_bound():
    clk = Clock()
    c = AdapterMetaCache(clk, ttl_s=10, max_entries=2)
    c.put("a", 1)
    c.put("a", 2)
    assert c.fresh("a") == 2
    assert c.invalidate("a") and not c.invalidate("a")
    assert c.fresh("a") is None and c.stale("a") is None
    c.put("x", 1), c.put("y", 2), c.put("z", 3)
    assert len(c) == 2 and "x" not in c


def test_config_is_validated():
    with pytest.raises(ValueError):
        AdapterMetaCache(Clock(), ttl_s=-1)
    with pytest.raises(ValueError):
        AdapterMetaCache(Clock(), max_entries=0)
    with pytest.raises(ValueError):
        AdapterMetaCache(Clock(), max_stale_s=-1)
