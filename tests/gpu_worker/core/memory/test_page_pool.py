import pytest

from gpu_worker.core.memory import PagePool


def test_allocation_is_all_or_nothing_and_tracks_owners():
    pool = PagePool(5)
    a = pool.allocate("kv:r1", 3)
    assert a == [0, 1, 2] and pool.num_free == 2
    assert pool.allocate("kv:r2", 3) is None and pool.num_free == 2 and pool.owners() == ["kv:r1"]
    b = pool.allocate("adapter:x", 2)
    assert pool.owner_of(b[0]) == "adapter:x" and pool.num_used == 5
    pool.allocate("kv:r1", 0)
    assert pool.count_of("kv:r1") == 3
    assert sorted(pool.free_owner("kv:r1")) == a and pool.owner_of(0) is None
    assert pool.free_owner("kv:r1") == []
    pool.check()
    assert pool.allocate("kv:r3", 3) == [0, 1, 2]  # freed pages are reused lowest first


def test_check_detects_a_corrupted_table():
    pool = PagePool(4)
    pool.allocate("a", 2)
    pool._owner[0] = "b"
    with pytest.raises(ValueError):
        pool.check()


@pytest.mark.parametrize("args", [("", 1), ("x", -1)])
def test_bad_requests_raise(args):
    with pytest.raises(ValueError):
        PagePool(2).allocate(*args)
    with pytest.raises(ValueError):
        PagePool(0)
