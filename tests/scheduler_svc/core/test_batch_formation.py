"""Algorithm 1 (phase 1, spare pool, phase 2), quota holding, bypass and squash on one
worker's queues, driven directly with hand-built worker views."""
from __future__ import annotations

import itertools

import pytest

from scheduler_svc.core.batch import RoundParams, form_batch
from scheduler_svc.core.mlq import Entry, WorkerQueues
from scheduler_svc.core.types import PendingRequest, WorkerView

_seq = itertools.count()


def view(free_tokens: int = 10_000, total: int = 10_000, running: int = 0, *, page_bytes: int = 0,
         free_bytes: int = 0, evictable: int = 0, cached: tuple[str, ...] = ()) -> WorkerView:
    return WorkerView("w", total, free_tokens, running=running, max_running=64,
                      cached_adapters=set(cached), free_bytes=free_bytes, evictable_bytes=evictable,
                      block_tokens=16, page_bytes=page_bytes)


def entry(rid: str, wrs: float, inp: int, out: int, arrival: float, adapter: str | None = None,
          nbytes: int = 0, attempts: int = 0) -> Entry:
    r = PendingRequest(rid, adapter, inp, out, adapter_bytes=nbytes, arrival=arrival, attempts=attempts)
    r.predicted_output = out
    return Entry(r, wrs, next(_seq))


def queues(boundaries: tuple[float, ...], quotas: list[int], expected=None, v: WorkerView | None = None):
    times = expected if expected is not None else {}
    wq = WorkerQueues("w", lambda r: times.get(r.request_id, 1.0))
    wq.update_view(v or view())
    wq.set_layout(boundaries, quotas)
    return wq


def ids(entries: list[Entry]) -> list[str]:
    return [e.req.request_id for e in entries]


NO_BYPASS = RoundParams(bypass=False)


# -- Algorithm 1 ----------------------------------------------------------------------
def test_phase1_goes_smallest_queue_first_and_fifo_within_each_quota():
    wq = queues((0.5,), [300, 300])
    for i in range(3):  # interleaved arrivals: big ones are older
        wq.push(entry(f"b{i}", 0.9, 100, 100, arrival=2 * i))       # costs 200
        wq.push(entry(f"s{i}", 0.1, 50, 50, arrival=2 * i + 1))      # costs 100
    wq.push(entry("s3", 0.1, 50, 50, arrival=10))
    admitted, squashed = form_batch(wq, view(), 20.0, NO_BYPASS)
    assert squashed == []
    # queue 0 until its next request exceeds 300, then queue 1 (200 of 300; next needs 200)
    assert ids(admitted) == ["s0", "s1", "s2", "b0"]
    assert wq.held == [300, 200]
    assert wq.lengths == [1, 2]


def test_emptied_queues_quota_goes_to_a_spare_pool_handed_out_smallest_queue_first():
    wq = queues((0.3, 0.6), [400, 200, 200])
    wq.push(entry("s0", 0.1, 50, 50, arrival=0))                     # 100 of queue 0's 400
    for i in range(3):
        wq.push(entry(f"m{i}", 0.5, 100, 100, arrival=1 + i))        # 200 each
        wq.push(entry(f"l{i}", 0.9, 100, 100, arrival=1.5 + i))      # 200 each
    admitted, _ = form_batch(wq, view(), 10.0, NO_BYPASS)
    # phase 1: s0 (queue 0 empties: 300 spare), m0, l0; phase 2: queue 1 first: m1 (200),
    # then 100 spare left is too little for m2 or l1.
    assert ids(admitted) == ["s0", "m0", "l0", "m1"]
    assert wq.held == [100, 400, 200]


def test_without_an_emptied_queue_there_is_no_spare_pool():
    wq = queues((0.5,), [300, 300])
    wq.push(entry("s0", 0.1, 100, 100, arrival=0))
    wq.push(entry("s1", 0.1, 100, 100, arrival=1))                   # queue 0 keeps one waiting
    for i in range(3):
        wq.push(entry(f"b{i}", 0.9, 100, 100, arrival=2 + i))
    admitted, _ = form_batch(wq, view(), 10.0, NO_BYPASS)
    assert ids(admitted) == ["s0", "b0"]                             # 100 of queue 0 stays unused


def test_admitted_requests_hold_their_quota_until_they_finish():
    wq = queues((), [300])
    for i in range(4):
        wq.push(entry(f"r{i}", 0.5, 100, 50, arrival=i))             # 150 each
    assert ids(form_batch(wq, view(), 1.0, NO_BYPASS)[0]) == ["r0", "r1"]
    # room on the worker is no reason to exceed the quota: r0/r1 still hold it
    assert form_batch(wq, view(), 2.0, NO_BYPASS)[0] == []
    wq.release("r0")
    assert wq.held == [150]
    assert ids(form_batch(wq, view(), 3.0, NO_BYPASS)[0]) == ["r2"]


def test_a_request_larger_than_its_quota_runs_alone_instead_of_waiting_forever():
    wq = queues((), [100])
    wq.push(entry("big", 0.5, 300, 300, arrival=0))
    wq.push(entry("next", 0.5, 10, 10, arrival=1))
    assert ids(form_batch(wq, view(), 1.0, NO_BYPASS)[0]) == ["big"]
    assert form_batch(wq, view(), 2.0, NO_BYPASS)[0] == []           # big holds the queue
    wq.release("big")
    assert ids(form_batch(wq, view(), 3.0, NO_BYPASS)[0]) == ["next"]


def test_quota_charges_count_adapter_pages_once_per_adapter_in_use():
    v = view(page_bytes=1600, free_bytes=10**6)            # 100 bytes per token
    wq = queues((), [400], v=v)
    for i in range(3):   # 100 tokens + a 16,000-byte adapter = 10 pages = 160 tokens: 260
        wq.push(entry(f"r{i}", 0.5, 50, 50, arrival=i, adapter="a", nbytes=16_000))
    # r0 brings the adapter (260); r1 shares it (100); r2 would exceed 400
    assert ids(form_batch(wq, v, 1.0, NO_BYPASS)[0]) == ["r0", "r1"]
    assert wq.held == [360]


def test_worker_room_and_slots_bound_a_round_and_fifo_never_skips_within_a_queue():
    wq = queues((), [10_000])
    wq.push(entry("a", 0.5, 300, 300, arrival=0))
    wq.push(entry("b", 0.5, 10, 10, arrival=1))
    assert form_batch(wq, view(free_tokens=500), 1.0, NO_BYPASS)[0] == []  # 'a' needs 600
    assert ids(form_batch(wq, view(free_tokens=610), 2.0, NO_BYPASS)[0]) == ["a"]     # b: 20 more
    wq.push(entry("c", 0.5, 10, 10, arrival=3))
    full = WorkerView("w", 10_000, 10_000, running=64, max_running=64)
    assert form_batch(wq, full, 3.0, NO_BYPASS)[0] == []


# -- bypass and squash ------------------------------------------------------------------
# A pool of 1,000 tokens at 100 bytes per token (16-token pages of 1,600 bytes). R0 runs
# (400 KV tokens, its adapter a0 of 40,000 bytes pinned) until t=100. R1 needs 200 KV
# tokens plus a cold 70,000-byte adapter: 90,000 bytes, while only 15,000 are free and
# 5,000 evictable (idle adapter a2), so R1's adapter cannot fit even after evicting every
# idle adapter. R1 fits once R0 ends (its KV and adapter free up): t_free = 100.
PAGE = 1600


def blocked_setup(r2_expected: float = 5.0):
    times = {"r0": 100.0, "r2": r2_expected, "r3": 200.0, "r4": 1.0}
    wq = queues((), [10_000], times, view(1000, 1000, page_bytes=PAGE))
    wq.push(entry("r0", 0.5, 200, 200, arrival=0, adapter="a0", nbytes=40_000))
    assert ids(form_batch(wq, view(1000, 1000, page_bytes=PAGE, free_bytes=100_000), 0.0,
                          RoundParams())[0]) == ["r0"]
    wq.push(entry("r1", 0.5, 100, 100, arrival=0.5, adapter="big", nbytes=70_000))
    wq.push(entry("r2", 0.5, 50, 50, arrival=0.6, adapter="a2", nbytes=5_000))
    return wq


def busy_view() -> WorkerView:  # r0 running
    return view(600, 1000, running=1, page_bytes=PAGE, free_bytes=15_000, evictable=5_000,
                cached=("a0", "a2"))


def test_a_younger_request_with_a_cached_adapter_bypasses_a_memory_blocked_head():
    wq = blocked_setup()
    wq.push(entry("r3", 0.5, 10, 10, arrival=0.7, adapter="a2", nbytes=5_000))   # ends after t_free
    wq.push(entry("r4", 0.5, 10, 10, arrival=0.8, adapter="a2", nbytes=5_000, attempts=1))
    admitted, squashed = form_batch(wq, busy_view(), 1.0, RoundParams())
    assert ids(admitted) == ["r2"] and squashed == []
    assert wq.blocker_rid == "r1" and set(wq.bypassers) == {"r2"} and wq.bypasses == 1
    # without bypass the blocked head holds everything behind it
    plain = blocked_setup()
    assert form_batch(plain, busy_view(), 1.0, NO_BYPASS)[0] == []


def test_no_bypass_when_the_younger_request_would_end_after_the_heads_memory_frees():
    wq = blocked_setup(r2_expected=90.0)    # 1 + 90 x 1.25 > 100
    assert form_batch(wq, busy_view(), 1.0, RoundParams())[0] == []
    assert wq.blocker_rid == "r1"
    # the same request arriving later also waits: the blocker must not be starved
    wq2 = blocked_setup(r2_expected=5.0)
    assert form_batch(wq2, busy_view(), 97.0, RoundParams())[0] == []   # 97 + 6.25 > 100


def test_bypasser_is_squashed_when_the_heads_memory_appears_first_then_the_head_runs():
    wq = blocked_setup()
    assert ids(form_batch(wq, busy_view(), 1.0, RoundParams())[0]) == ["r2"]
    wq.release("r0")        # r0 ends at t=10, long before r2 was expected to
    # r2 holds 100 KV tokens and pins a2: free 100,000 - 10,000 - 5,000 - 40,000 (a0, idle)
    after = view(900, 1000, running=1, page_bytes=PAGE, free_bytes=45_000, evictable=40_000,
                 cached=("a0", "a2"))
    admitted, squashed = form_batch(wq, after, 10.0, RoundParams())
    assert admitted == [] and [r.entry.req.request_id for r in squashed] == ["r2"]
    assert wq.running == {} and wq.held == [0] and wq.bypassers == {}
    # the service re-queues r2; the next round (r2 gone) admits r1 first
    r2 = squashed[0].entry
    r2.req.attempts += 1
    wq.push(Entry(r2.req, r2.wrs, next(_seq)))
    freed = view(1000, 1000, running=0, page_bytes=PAGE, free_bytes=55_000, evictable=45_000,
                 cached=("a0", "a2"))
    assert ids(form_batch(wq, freed, 10.1, RoundParams())[0]) == ["r1"]     # r2 no longer fits


def test_a_bypasser_that_finishes_before_the_heads_memory_appears_is_not_squashed():
    wq = blocked_setup()
    assert ids(form_batch(wq, busy_view(), 1.0, RoundParams())[0]) == ["r2"]
    wq.release("r2")        # r2 ends at t=6
    wq.release("r0")        # r0 at t=100
    idle = view(1000, 1000, page_bytes=PAGE, free_bytes=55_000, evictable=45_000, cached=("a0", "a2"))
    admitted, squashed = form_batch(wq, idle, 100.0, RoundParams())
    assert ids(admitted) == ["r1"] and squashed == []


def test_round_params_are_validated():
    with pytest.raises(ValueError):
        RoundParams(bypass_margin=0.5)
    with pytest.raises(ValueError):
        RoundParams(bypass_scan=-1)
    wq = WorkerQueues("w", lambda r: 1.0)
    with pytest.raises(ValueError):
        wq.set_layout((0.5,), [100])


# -- bounded wait (aging) ---------------------------------------------------------------
def _aging_queues():
    wq = queues((0.5,), [10_000, 10_000])
    wq.push(entry("big", 0.9, 100, 100, arrival=0.0))
    for i in range(3):
        wq.push(entry(f"s{i}", 0.1, 10, 10, arrival=5.0 + i))
    return wq


def _slots(n: int) -> WorkerView:
    v = view()
    v.max_waiting, v.waiting = n, 0     # the admission window: n admissions this round
    return v


def test_an_aged_head_goes_before_smaller_queues_whatever_their_order():
    wq = _aging_queues()
    aged = RoundParams(bypass=False, max_wait_s=2.0)
    admitted, _ = form_batch(wq, _slots(2), 10.0, aged)
    assert ids(admitted) == ["big", "s0"]        # big waited 10 s >= 2 s; then phase 1


def test_without_aging_or_before_the_bound_the_smallest_queue_goes_first():
    for params, now in ((RoundParams(bypass=False), 10.0), (RoundParams(bypass=False, max_wait_s=20.0), 10.0)):
        wq = _aging_queues()
        admitted, _ = form_batch(wq, _slots(2), now, params)
        assert ids(admitted) == ["s0", "s1"], params


def test_a_head_does_not_age_before_its_own_low_load_processing_time():
    """A long request that came just before a burst of short ones keeps the paper's
    head-of-line behaviour: it ages only after service_aging x its own processing time."""
    wq = _aging_queues()
    params = RoundParams(bypass=False, max_wait_s=2.0, service_aging=1.0, aging_prefill_s=0.0,
                         aging_decode_s=0.2)         # big: 100 predicted tokens -> 20 s alone
    assert ids(form_batch(wq, _slots(1), 10.0, params)[0]) == ["s0"]
    assert ids(form_batch(wq, _slots(1), 21.0, params)[0]) == ["big"]
