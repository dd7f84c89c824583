"""The scheduler's prefetch hints, on the torch-free worker memory (SimPool, Llama-7B pages)."""
from __future__ import annotations

from gpu_worker.core.batch_planner import BatchPlanner
from gpu_worker.core.memory import CacheConfig
from gpu_worker.core.memory.admission import ReserveAdmission
from gpu_worker.core.memory.sim_pool import LLAMA_7B, SharedLink, SimAdapter, SimPool
from gpu_worker.core.sequence import SamplingSpec, Sequence
from gpu_worker.core.worker_memory import WorkerMemory

BLOCK = 16


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def setup(pages: int, policy: str = "chameleon"):
    clock = Clock()
    pool = SimPool.for_model(LLAMA_7B, num_pages=pages, block_size=BLOCK,
                             link=SharedLink(clock, copy_s=lambda n: 0.01))
    mem = WorkerMemory(pool, CacheConfig(policy), clock, admission=ReserveAdmission(BLOCK))
    planner = BatchPlanner(mem, mem.ledger, BLOCK, max_running=8, max_step_tokens=4096)
    return clock, mem, planner


def ad(name, rank):  # rank r on q/k/v/o of Llama-7B = r/4 pages of 16 tokens
    return SimAdapter.for_model(name, rank, LLAMA_7B)


def land(clock, mem):
    clock.t += 1.0
    return mem.poll()


def test_hinted_adapters_are_fetched_cached_and_hit_by_the_request_that_follows():
    clock, mem, planner = setup(100)
    assert mem.hint(["a", "b", "a"]) == ["a", "b"]
    assert mem.hint(["a", "b"]) == []                 # already on their way
    mem.staged(ad("a", 16))
    mem.staged(ad("b", 8))
    land(clock, mem)
    assert mem.stats().cached_adapters == ("a", "b")
    s = Sequence("r", [1] * 10, SamplingSpec(max_tokens=10), adapter_id="a")
    ev = mem.admit(s)
    assert ev.ready == [s] and ev.need_fetch == [] and mem.stats().hits == 1


def test_hints_survive_in_slora_mode_while_hinted_then_go():
    clock, mem, _ = setup(100, policy="slora")
    mem.hint(["a"])
    mem.staged(ad("a", 8))
    land(clock, mem)
    assert mem.stats().cached_adapters == ("a",)      # S-LoRA's prefetch of queued adapters
    mem.hint([])
    assert mem.stats().cached_adapters == ()          # nobody wants it any more: S-LoRA drops it


def test_a_hint_never_takes_kv_room_committed_requests_need_and_waits_for_it():
    clock, mem, planner = setup(40)
    # a running base request reserves (16 + 464) / 16 = 30 pages of the 40
    run = Sequence("run", [1] * 16, SamplingSpec(max_tokens=464))
    planner.add(mem.admit(run).ready[0])
    assert planner.plan().prefill == [run]
    assert mem.hint(["big"]) == ["big"]
    mem.staged(ad("big", 64))                         # 16 pages > the 10 to spare
    land(clock, mem)
    assert mem.stats().cached_adapters == () and mem.stats().free_pages == 39
    planner.remove(run)
    mem.release(run)
    mem.retry()                                       # room now: the staged hint goes in
    land(clock, mem)
    assert mem.stats().cached_adapters == ("big",)


def test_a_later_hint_never_evicts_an_earlier_hint_or_a_parked_requests_adapter():
    clock, mem, planner = setup(20)
    mem.hint(["near"])
    mem.staged(ad("near", 32))                        # 8 pages
    land(clock, mem)
    mem.hint(["near", "far"])
    mem.staged(ad("far", 64))                         # 16 pages: only by evicting "near"
    land(clock, mem)
    assert mem.stats().cached_adapters == ("near",)
    mem.hint(["far"])                                 # "near" no longer hinted: it may go
    land(clock, mem)
    assert mem.stats().cached_adapters == ("far",) and mem.stats().evictions == 1
    # a parked request's adapter outranks every hint
    clock2, mem2, _ = setup(20)
    waiting = Sequence("w", [1] * 16, SamplingSpec(max_tokens=16), adapter_id="mine")
    assert mem2.admit(waiting).need_fetch == ["mine"]
    assert mem2.hint(["mine", "other"]) == ["other"]  # "mine" is already being fetched
    mem2.staged(ad("other", 64))                      # 16 pages, in free memory
    land(clock2, mem2)
    ev = mem2.staged(ad("mine", 32))                  # 8 pages: only by evicting "other"
    land(clock2, mem2)
    assert mem2.stats().cached_adapters == ("mine",)
    assert mem2.parked() == [] and mem2.stats().evictions == 1
    del ev
