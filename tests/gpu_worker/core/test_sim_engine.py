"""The --sim-profile engine: the real engine loop with modelled step and copy times."""
from __future__ import annotations

import pytest

from gpu_worker.core.engine import EngineConfig
from gpu_worker.core.memory import CacheConfig
from gpu_worker.core.sequence import Finish, SamplingSpec, Sequence
from gpu_worker.core.sim_engine import (PLACEHOLDER, SIM_EOS, SimEngine, sim_adapter, sim_prompt,
                                        sim_tokenizer)
from sim.cost_model import CostModel

COST = CostModel.from_profile("a40-llama7b")


class FakeTime:
    """Clock and sleep: sleeping advances the clock (and is recorded)."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def make(policy: str = "chameleon"):
    ft = FakeTime()
    cfg = EngineConfig(block_size=16, num_blocks=COST.pool_pages(16), max_running=256,
                       max_step_tokens=2048, cache=CacheConfig(policy), admission="slora-peak")
    eng = SimEngine(COST, sim_tokenizer(), cfg, max_step_tokens=1024, clock=ft.clock, sleep=ft.sleep)
    return ft, eng


def seq(rid: str, n_prompt: int, n_out: int | None, adapter: str | None = None, max_tokens: int = 410):
    s = Sequence(rid, [2] * n_prompt, SamplingSpec(max_tokens=max_tokens), adapter_id=adapter)
    s.sim_output_tokens = n_out
    return s


def run(eng: SimEngine, steps: int = 1000):
    events = []
    for _ in range(steps):
        if not eng.has_work():
            break
        events += eng.step()
    return events


def test_the_tokenizer_and_prompts_count_one_token_per_word():
    tok = sim_tokenizer()
    assert len(tok.encode(sim_prompt(231), add_special_tokens=False).ids) == 231
    assert tok.decode([tok.token_to_id(PLACEHOLDER)] * 2) == "tok tok"
    with pytest.raises(ValueError):
        sim_prompt(0)


def test_a_request_takes_its_output_length_in_steps_each_waiting_the_modelled_time():
    ft, eng = make()
    eng.add(seq("a", 231, n_out=5))
    events = run(eng)
    assert [e.finish for e in events] == [None] * 4 + [Finish.EOS]   # EOS as the 5th token
    assert sum(len(e.token_ids) for e in events) == 4
    assert ft.sleeps[0] == pytest.approx(COST.prefill_s(231))
    for i, s in enumerate(ft.sleeps[1:], start=1):       # decode steps read the growing context
        assert s == pytest.approx(COST.decode_s(1, 231 + i))
    assert eng.steps == 5 and eng.modelled_s == pytest.approx(sum(ft.sleeps))
    assert events[0].seq.prefill_ms == pytest.approx(ft.sleeps[0] * 1000.0)


def test_without_an_output_length_it_runs_to_max_tokens():
    ft, eng = make()
    eng.add(seq("a", 10, n_out=None, max_tokens=7))
    events = run(eng)
    assert events[-1].finish is Finish.LENGTH and sum(len(e.token_ids) for e in events) == 7


def test_a_batch_step_costs_the_batch_and_each_distinct_adapter_once():
    ft, eng = make()
    for rank in (8, 64):
        eng.install(sim_adapter(f"r{rank}", rank, [], COST))
    ft.t += 10.0                                          # both copies have landed
    eng.add(seq("a", 100, 3, "r8"))
    eng.add(seq("b", 50, 3, "r64"))
    eng.add(seq("c", 20, 3, "r8"))
    eng.step()
    want = COST.step_s(prefill=[(100, 8), (50, 64), (20, 8)], context_tokens=170,
                       distinct_ranks=[8, 64])
    assert ft.sleeps[-1] == pytest.approx(want)


def test_a_missing_adapter_waits_its_modelled_copy_on_one_shared_link():
    ft, eng = make()
    a, b = seq("a", 231, 2, "r128"), seq("b", 231, 2, "r64")
    a.arrival = b.arrival = ft.t
    assert eng.add(a) == ["r128"]
    assert eng.add(b) == ["r64"]
    t0 = ft.t
    eng.install(sim_adapter("r128", 128, [], COST))
    eng.install(sim_adapter("r64", 64, [], COST))         # queued behind the first copy
    copy128, copy64 = COST.copy_s(COST.adapter_bytes(128)), COST.copy_s(COST.adapter_bytes(64))
    assert eng.wakeup_in() == pytest.approx(copy128)
    assert eng.step() == []                               # nothing landed yet
    ft.t = t0 + copy128
    first = eng.step()
    assert [e.seq.request_id for e in first] == ["a"]
    assert first[0].seq.adapter_wait_s == pytest.approx(copy128)
    run(eng)
    # its copy, queued behind a's, landed during a's prefill step; like the real engine, it is
    # picked up when that step ends
    assert copy64 < ft.sleeps[0]
    assert b.adapter_wait_s == pytest.approx(copy128 + ft.sleeps[0])
    st = eng.memory.stats()
    assert st.misses == 2 and st.hits == 0 and set(st.cached_adapters) == {"r128", "r64"}


def test_back_to_back_steps_keep_the_modelled_pace_despite_host_time_between_them():
    ft, eng = make()
    eng.add(seq("a", 100, 4))
    eng.step()
    ft.t += 0.002                                         # host work between steps
    eng.step()
    # the second step's wait is shortened by the 2 ms the host took (catch-up)
    assert ft.sleeps[1] == pytest.approx(COST.decode_s(1, 101) - 0.002)
    assert eng.late_s == 0.0


def test_adapters_in_host_memory_are_staged_at_once_on_a_miss_and_on_a_hint():
    ft, eng = make()
    eng.host = {a: sim_adapter(a, r, [], COST) for a, r in (("r8", 8), ("r64", 64), ("r16", 16))}
    s = seq("a", 231, 2, "r8")
    s.arrival = ft.t
    assert eng.add(s) == []                               # nothing for the service to fetch
    assert eng.wakeup_in() == pytest.approx(COST.copy_s(COST.adapter_bytes(8)))
    assert eng.hint(["r64", "unknown"]) == ["unknown"]    # not in host memory: the fetch path
    assert eng.memory.cache.is_loading("r64")
    ft.t += COST.copy_s(COST.adapter_bytes(8))            # the copy lands
    run(eng)
    assert s.adapter_wait_s == pytest.approx(COST.copy_s(COST.adapter_bytes(8)))
    assert {"r8", "r64"} <= set(eng.memory.stats().cached_adapters)
