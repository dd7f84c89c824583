"""WorkerMemory + BatchPlanner + the reservation ledger without torch, on the simulator's pool.

The property test drives the real memory, cache, ledger and planner with a
stand-in for the model (every step decodes one token per running request) and
checks that no admission policy ever over-commits the pool: a decode never
finds no page, and the cache's bookkeeping always agrees with the page pool.
"""
from __future__ import annotations

import subprocess
import sys

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpu_worker.core.batch_planner import BatchPlanner
from gpu_worker.core.memory import CacheConfig, layout_adapter
from gpu_worker.core.memory.admission import (ReserveAdmission, SLoraPeakAdmission,
                                             build_admission)
from gpu_worker.core.memory.geometry import row_geometry
from gpu_worker.core.memory.sim_pool import LLAMA_7B, SharedLink, SimAdapter, SimPool
from gpu_worker.core.sequence import SamplingSpec, Sequence
from gpu_worker.core.worker_memory import WorkerMemory

BLOCK = 16


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_worker_memory_and_the_sim_pool_import_without_torch():
    code = ("import sys; import gpu_worker.core.worker_memory, gpu_worker.core.batch_planner, "
            "gpu_worker.core.memory.sim_pool; assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_sim_adapters_take_the_pages_real_llama7b_adapters_would():
    geometry = row_geometry(LLAMA_7B, BLOCK)
    # a page: 16 tokens x K and V x 4096 x 32 layers x 2 bytes = 8 MiB; a rank-r q/k/v/o adapter
    # is 32 layers x 4 modules x r x (4096 + 4096) x 2 bytes = r/4 pages with no waste
    for rank in (8, 16, 32, 64, 128):
        a = SimAdapter.for_model(f"r{rank}", rank, LLAMA_7B)
        assert a.nbytes == 32 * 4 * rank * 8192 * 2
        assert layout_adapter(geometry, a.shape).num_pages == rank // 4


def test_an_install_is_ready_when_its_copy_on_the_shared_link_lands():
    clock = Clock()
    link = SharedLink(clock, copy_s=lambda nbytes: nbytes / 1e9)
    pool = SimPool.for_model(LLAMA_7B, num_pages=200, block_size=BLOCK, link=link)
    mem = WorkerMemory(pool, CacheConfig("chameleon"), clock, admission=ReserveAdmission(BLOCK))
    a, b = SimAdapter.for_model("a", 8, LLAMA_7B), SimAdapter.for_model("b", 8, LLAMA_7B)
    sa = Sequence("1", [1] * 10, SamplingSpec(max_tokens=10), adapter_id="a")
    sb = Sequence("2", [1] * 10, SamplingSpec(max_tokens=10), adapter_id="b", order=1)
    assert mem.admit(sa).need_fetch == ["a"] and mem.admit(sb).need_fetch == ["b"]
    assert mem.staged(a).ready == [] and mem.staged(b).ready == []
    assert pool.next_ready_at() == a.nbytes / 1e9      # b queues behind a on the one link
    clock.t = a.nbytes / 1e9
    assert mem.poll().ready == [sa]
    assert mem.poll().ready == []
    clock.t = 2 * a.nbytes / 1e9
    assert mem.poll().ready == [sb] and pool.next_ready_at() is None


def test_a_landed_copy_is_not_lost_when_a_prefetch_starts_another_copy_before_the_poll():
    """Regression (found by the simulator): starting a hinted adapter's copy used to finish
    every landed copy into the prefetch's throwaway events, so the requests parked on a
    landed adapter held it but never reached the planner."""
    clock = Clock()
    link = SharedLink(clock, copy_s=lambda nbytes: nbytes / 1e9)
    pool = SimPool.for_model(LLAMA_7B, num_pages=200, block_size=BLOCK, link=link)
    mem = WorkerMemory(pool, CacheConfig("chameleon"), clock, admission=ReserveAdmission(BLOCK))
    a, h = SimAdapter.for_model("a", 8, LLAMA_7B), SimAdapter.for_model("h", 8, LLAMA_7B)
    sa = Sequence("1", [1] * 10, SamplingSpec(max_tokens=10), adapter_id="a")
    mem.admit(sa)
    assert mem.staged(a).ready == []
    clock.t = a.nbytes / 1e9                            # a's copy has landed, not yet polled
    assert mem.hint(["h"]) == ["h"]
    assert mem.staged(h).ready == []                    # h's copy starts now
    assert mem.poll().ready == [sa]


def test_slora_peak_counts_requests_finishing_at_different_times():
    # two requests: one may still add 100 tokens, one 10; holding 10 each (block 1: pages = tokens)
    seqs = [Sequence(str(i), [1] * 10, SamplingSpec(max_tokens=m)) for i, m in enumerate((100, 10))]
    assert ReserveAdmission(1).demand_pages(seqs) == 110 + 20
    # peak = max(10 + 1 * 100, 20 + 2 * 10) = 110: the short one is gone before the long one peaks
    assert SLoraPeakAdmission(1).demand_pages(seqs) == 110


OPS = st.lists(st.one_of(
    st.tuples(st.just("arrive"), st.integers(1, 200), st.integers(1, 200), st.integers(0, 5)),
    st.tuples(st.just("step"), st.integers(1, 80)),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
    st.tuples(st.just("hint"), st.lists(st.integers(0, 5), max_size=4)),
), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None)
@example(ops=[("arrive", 200, 200, 5)] * 6 + [("step", 80)] * 3, admission="slora-peak",
         policy="chameleon", pool_pages=60)
@given(ops=OPS, admission=st.sampled_from(["reserve", "slora-peak"]),
       policy=st.sampled_from(["chameleon", "slora", "lru"]), pool_pages=st.integers(60, 160))
def test_no_admission_policy_ever_over_commits_the_pool(ops, admission, policy, pool_pages):
    clock = Clock()
    link = SharedLink(clock, copy_s=lambda nbytes: nbytes / 4e9)
    ranks = [8, 16, 32, 64, 128, 8]
    adapters = {f"a{i}": SimAdapter.for_model(f"a{i}", r, LLAMA_7B) for i, r in enumerate(ranks)}
    cache = (CacheConfig("lru", lru_slots=2, lru_slot_pages=32) if policy == "lru"
             else CacheConfig(policy))
    pages = pool_pages + (64 if policy == "lru" else 0)
    pool = SimPool.for_model(LLAMA_7B, num_pages=pages, block_size=BLOCK, link=link)
    mem = WorkerMemory(pool, cache, clock, admission=build_admission(admission, BLOCK))
    planner = BatchPlanner(mem, mem.ledger, BLOCK, max_running=8, max_step_tokens=512)
    live: list[Sequence] = []
    fetches: list[str] = []

    def take(ev):
        for s in ev.ready:
            planner.add(s)
        fetches.extend(ev.need_fetch)

    def retire(s):
        planner.remove(s)
        mem.release(s)
        live.remove(s)
        take(mem.retry())

    order = 0
    for op in ops:
        if op[0] == "arrive":
            _, prompt, max_tokens, a = op
            aid = None if a == 5 else f"a{a}"
            s = Sequence(f"r{order}", [1] * prompt, SamplingSpec(max_tokens=max_tokens),
                         adapter_id=aid, order=order, arrival=clock.t)
            order += 1
            live.append(s)
            take(mem.admit(s))
        elif op[0] == "cancel" and live:
            retire(live[op[1] % len(live)])
        elif op[0] == "hint":
            fetches.extend(mem.hint([f"a{i}" for i in op[1]]))
        elif op[0] == "step":
            for _ in range(op[1]):
                while fetches:  # the store delivers
                    take(mem.staged(adapters[fetches.pop(0)]))
                clock.t += 0.05
                take(mem.poll())
                plan = planner.plan()   # raises MemoryError if a decode found no page
                if not plan and planner.waiting and not planner.running:
                    take(mem.retry())
                    plan = planner.plan(ignore_held=True)
                for s in plan.seqs:
                    s.num_computed = s.num_tokens
                    s.output_ids.append(7)
                    if len(s.output_ids) >= s.spec.max_tokens:
                        retire(s)
        mem.cache.check()
        assert mem.pages.num_used <= mem.pages.num_pages
        # what running requests hold never exceeds what KV may use (lru: outside the slots)
        assert mem.cache.kv_pages <= mem.ledger.capacity()
