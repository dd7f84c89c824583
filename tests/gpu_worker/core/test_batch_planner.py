import pytest

from gpu_worker.core.batch_planner import BatchPlanner, pages_for
from gpu_worker.core.memory import AdapterCache, CacheConfig, PagePool
from gpu_worker.core.memory.admission import ReservationLedger, ReserveAdmission
from gpu_worker.core.sequence import SamplingSpec, Sequence


def kv_pages(n):
    """The worker's real page owner: the cache manager over a unified pool of n pages."""
    return AdapterCache(PagePool(n), CacheConfig(), clock=lambda: 0.0)


def BatchPlanner(kv, block_size, **kw):  # noqa: N802 - the planner with the reserve ledger
    from gpu_worker.core.batch_planner import BatchPlanner as Planner
    return Planner(kv, ReservationLedger(kv, ReserveAdmission(block_size)), block_size, **kw)


def seq(rid, prompt_len, max_tokens):
    return Sequence(rid, list(range(1, prompt_len + 1)), SamplingSpec(max_tokens=max_tokens))


def test_prefill_and_decode_share_a_step():
    p = BatchPlanner(kv_pages(64), block_size=4, max_running=8, max_step_tokens=64)
    a = seq("a", 5, 4)
    p.add(a)
    plan = p.plan()
    assert plan.prefill == [a] and plan.decode == []
    a.num_computed, a.output_ids = 5, [9]
    b = seq("b", 3, 4)
    p.add(b)
    plan = p.plan()
    assert plan.decode == [a] and plan.prefill == [b]


def test_admission_keeps_room_for_every_running_reservation():
    # 10 pages of 4 tokens; each request may grow to 4+12=16 tokens = 4 pages
    alloc = kv_pages(10)
    p = BatchPlanner(alloc, block_size=4, max_running=8, max_step_tokens=64)
    seqs = [seq(str(i), 4, 12) for i in range(3)]
    for s in seqs:
        p.add(s)
    plan = p.plan()
    assert [s.request_id for s in plan.prefill] == ["0", "1"]  # the third would overcommit
    assert len(p.waiting) == 1
    # run both to their full length: decode never runs out of pages
    for _ in range(12):
        for s in p.running:
            s.num_computed = s.num_tokens
            s.output_ids.append(7)
        p.plan()
    assert all(len(s.block_table) == pages_for(16, 4) for s in p.running)
    assert alloc.kv_available_pages() == 10 - 2 * 4
    p.remove(seqs[0])
    assert p.plan().prefill == [seqs[2]]


def test_long_prompts_prefill_in_chunks_behind_the_running_decodes():
    p = BatchPlanner(kv_pages(100), block_size=4, max_running=8, max_step_tokens=10)
    run = seq("run", 3, 8)
    p.add(run)
    assert p.plan().prefill_tokens == [3]
    run.num_computed, run.output_ids = 3, [9]
    big, small = seq("big", 17, 1), seq("small", 5, 1)
    p.add(big)
    p.add(small)
    plan = p.plan()      # the decode first, then as much of the oldest prompt as fits
    assert plan.decode == [run] and plan.prefill == [big] and plan.prefill_tokens == [9]
    assert plan.query_lens == [9, 1] and len(big.block_table) == pages_for(9, 4)
    big.num_computed = 9
    run.num_computed, run.output_ids = 4, [9, 9]
    plan = p.plan()      # the rest of big, then the start of small
    assert plan.decode == [run] and plan.prefill == [big, small]
    assert plan.prefill_tokens == [8, 1]
    big.num_computed, small.num_computed = 17, 1
    big.output_ids = [5]
    run.num_computed, run.output_ids = 5, [9, 9, 9]
    plan = p.plan()
    assert plan.decode == [run, big] and plan.prefill == [small] and plan.prefill_tokens == [4]


def test_remove_frees_pages():
    alloc = kv_pages(8)
    p = BatchPlanner(alloc, block_size=4, max_running=8, max_step_tokens=64)
    s = seq("a", 6, 2)
    p.add(s)
    p.plan()
    assert alloc.kv_available_pages() == 8 - pages_for(6, 4)
    p.remove(s)
    assert alloc.kv_available_pages() == 8


def test_config_errors():
    with pytest.raises(ValueError):
        BatchPlanner(kv_pages(8), block_size=4, max_running=0, max_step_tokens=8)
