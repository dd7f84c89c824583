"""Policy-level behaviour: make_policy, FIFO and SJF order, the global dispatcher,
worker loss, queue refresh on the injected clock and the exported metrics."""
from __future__ import annotations

import random

import pytest

from scheduler_svc.core.chameleon import ChameleonConfig, ChameleonPolicy
from scheduler_svc.core.policies import POLICY_NAMES, make_policy
from sim.des import VirtualClock as FakeClock
from scheduler_svc.core.types import PendingRequest, WorkerView


def req(rid: str, inp: int = 10, max_tokens: int = 10, adapter: str | None = "a", arrival: float = 0.0,
        predicted: int | None = None, nbytes: int = 0) -> PendingRequest:
    r = PendingRequest(rid, adapter, inp, max_tokens, adapter_bytes=nbytes, arrival=arrival)
    r.predicted_output = predicted
    return r


def worker(wid: str = "w0", free: int = 10_000, total: int = 10_000, cached=(), loading=(),
           running: int = 0, connected: bool = True) -> WorkerView:
    return WorkerView(wid, total, free, running=running, max_running=64, cached_adapters=set(cached),
                      loading_adapters=set(loading), connected=connected)


def placed(policy, workers) -> dict[str, str]:
    return {a.request.request_id: a.worker_id for a in policy.schedule(workers)}


# -- make_policy --------------------------------------------------------------------------
def test_make_policy_builds_every_named_policy_and_rejects_bad_input():
    clock = FakeClock()
    assert POLICY_NAMES == ("fifo", "sjf", "static-mlq", "chameleon")
    for name in POLICY_NAMES:
        assert make_policy(name, clock).name == name
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("lifo", clock)
    with pytest.raises(ValueError):
        make_policy("fifo", clock, refresh_s=10)
    with pytest.raises(ValueError):
        make_policy("sjf", clock, k_max=2)
    with pytest.raises(ValueError):
        make_policy("chameleon", clock, k_max=5)          # more queues than quota weights
    with pytest.raises(ValueError):
        make_policy("chameleon", clock, refresh_s=0)
    with pytest.raises(ValueError):
        make_policy("static-mlq", clock, static_boundaries=(0.5, 0.2))
    with pytest.raises(TypeError):
        make_policy("chameleon", clock, no_such_option=1)
    assert make_policy("chameleon", clock, refresh_s=60).config.refresh_s == 60


def test_static_mlq_has_four_equal_width_queues_with_equal_quotas():
    p = make_policy("static-mlq", FakeClock())
    p.enqueue(req("r", predicted=10))
    p.schedule([worker(total=10_000)])
    m = p.metrics()
    assert m["num_queues"] == 4
    assert [m[f"boundary_{i}"] for i in range(3)] == [0.25, 0.5, 0.75]
    assert [m[f"quota_tokens_{q}"] for q in range(4)] == [2500.0] * 4


# -- FIFO and SJF -------------------------------------------------------------------------
def test_fifo_keeps_arrival_order_and_a_head_that_does_not_fit_blocks_the_rest():
    p = make_policy("fifo", FakeClock())
    p.enqueue(req("big", inp=900, max_tokens=100))
    p.enqueue(req("small", inp=5, max_tokens=5))
    assert placed(p, [worker(free=500)]) == {}            # head-of-line blocking
    assert list(placed(p, [worker(free=2000)])) == ["big", "small"]


def test_fifo_requeue_puts_a_lost_request_back_in_arrival_order():
    p = make_policy("fifo", FakeClock())
    first = req("first", arrival=0.0)
    p.enqueue(first)
    assert list(placed(p, [worker()])) == ["first"]
    p.enqueue(req("second", arrival=1.0))
    p.requeue(first)
    assert list(placed(p, [worker()])) == ["first", "second"]


def test_sjf_admits_shortest_predicted_output_first_ties_by_arrival():
    p = make_policy("sjf", FakeClock())
    for rid, pred, t in [("p50", 50, 0.0), ("p10a", 10, 1.0), ("p30", 30, 2.0), ("p10b", 10, 3.0)]:
        p.enqueue(req(rid, max_tokens=100, predicted=pred, arrival=t))
    assert [a.request.request_id for a in p.schedule([worker()])] == ["p10a", "p10b", "p30", "p50"]


def test_sjf_predicts_from_history_and_stops_at_a_head_that_does_not_fit():
    p = make_policy("sjf", FakeClock())
    for i in range(8):                                    # adapter "long" answers ~400 tokens
        r = req(f"h{i}", adapter="long", max_tokens=1000)
        r.predicted_output = 100
        p.on_finish(r, 400)
        r = req(f"g{i}", adapter="short", max_tokens=1000)
        r.predicted_output = 100
        p.on_finish(r, 20)
    p.enqueue(req("L", adapter="long", max_tokens=1000, arrival=0))
    p.enqueue(req("S", adapter="short", inp=500, max_tokens=1000, arrival=1))
    assert placed(p, [worker(free=1200)]) == {}           # S (1500 tokens) is first and waits
    assert list(placed(p, [worker(free=3000)])) == ["S", "L"]
    assert p.metrics()["predictor_samples"] == 16


# -- dispatcher -----------------------------------------------------------------------------
def chameleon(**cfg) -> tuple[ChameleonPolicy, FakeClock]:
    clock = FakeClock()
    return make_policy("chameleon", clock, **cfg), clock


def test_dispatcher_prefers_a_worker_with_the_adapter_cached_or_loading():
    p, _ = chameleon()
    p.enqueue(req("c", adapter="x", predicted=10))
    p.enqueue(req("l", adapter="y", predicted=10))
    got = placed(p, [worker("w0", cached={"y"}), worker("w1", cached={"x"}), worker("w2", loading={"y"})])
    assert got["c"] == "w1"
    assert got["l"] in {"w0", "w2"}


def test_dispatcher_places_cold_requests_on_the_least_loaded_worker():
    p, _ = chameleon()
    for i in range(4):
        p.enqueue(req(f"r{i}", adapter=f"cold{i}", inp=1000, max_tokens=1000, predicted=1000))
    got = placed(p, [worker("w0"), worker("w1")])
    assert sorted(got.values()) == ["w0", "w0", "w1", "w1"]


def test_a_warm_worker_is_passed_over_when_it_is_far_busier():
    p, _ = chameleon(warm_penalty=0.25)
    for i in range(6):     # 6 x 1,000 of w0's 10,000 tokens, before w1 connects
        p.enqueue(req(f"busy{i}", adapter="x", inp=500, max_tokens=500, predicted=500))
    assert set(placed(p, [worker("w0", cached={"x"})]).values()) == {"w0"}
    p.enqueue(req("next", adapter="x", inp=10, max_tokens=10, predicted=10))
    assert placed(p, [worker("w0", cached={"x"}), worker("w1")]) == {"next": "w1"}


# -- worker loss ------------------------------------------------------------------------------
def test_lost_worker_gets_no_work_and_its_requests_move_to_the_others():
    p, clock = chameleon()
    p.enqueue(req("a", adapter="x", inp=500, max_tokens=500, predicted=500))
    p.enqueue(req("b", adapter="x", inp=500, max_tokens=500, predicted=500))
    first = placed(p, [worker("w0", free=1000, cached={"x"}), worker("w1", free=0)])
    assert first == {"a": "w0"} and p.queued() == 1      # b waits on w0 (warm, no room)
    clock.now = 1.0
    # w0 disconnects: the service re-queues its running request; w0 is no longer offered
    p.requeue(req("a", adapter="x", inp=500, max_tokens=500, predicted=500))
    second = placed(p, [worker("w0", connected=False), worker("w1", free=2000)])
    assert second == {"a": "w1", "b": "w1"}              # a first: it arrived first
    assert p.metrics()["held_tokens_0"] == 2000 and p.queued() == 0
    # w0 comes back: it holds nothing from before
    p.enqueue(req("c", adapter="x", inp=10, max_tokens=10, predicted=10))
    assert placed(p, [worker("w0", cached={"x"}), worker("w1", free=0)]) == {"c": "w0"}


def test_cancel_and_finish_release_the_books():
    p, _ = chameleon()
    p.enqueue(req("q", predicted=10))
    assert p.cancel("q") and not p.cancel("q") and p.queued() == 0
    p.enqueue(req("r", predicted=10))
    [adm] = p.schedule([worker()])
    assert not p.cancel("r")                              # running: not cancellable here
    assert p.metrics()["held_tokens_0"] == 20
    p.on_finish(adm.request, 7)
    assert p.metrics()["held_tokens_0"] == 0


# -- refresh and metrics ------------------------------------------------------------------------
def test_queues_are_rebuilt_every_t_refresh_from_the_recent_wrs():
    p, clock = chameleon(refresh_s=300.0, first_refresh_samples=40)
    rng = random.Random(0)
    w = [worker("w0", free=0)]                            # nothing runs: all stay queued
    for i in range(40):                                   # two clear sizes of request
        clock.now = i
        big = i % 2 == 0
        p.enqueue(req(f"r{i}", inp=1000 if big else 20, max_tokens=500 if big else 10,
                      adapter="big" if big else "small", nbytes=256 if big else 16,
                      predicted=rng.randint(450, 500) if big else rng.randint(8, 10)))
        p.schedule(w)
    m = p.metrics()
    assert m["refreshes"] == 1 and m["num_queues"] == 2
    assert m["queue_len_0"] == 20 and m["queue_len_1"] == 20
    assert 0.05 < m["boundary_0"] < 0.9
    clock.now = 39 + 299                                  # first refresh was at t=39
    p.schedule(w)
    assert p.metrics()["refreshes"] == 1
    clock.now = 39 + 300
    p.schedule(w)
    assert p.metrics()["refreshes"] == 2


def _feed(p, clock, n: int, start: int) -> None:
    for i in range(start, start + n):
        clock.now = float(i)
        p.enqueue(req(f"r{i}", predicted=10))
        p.schedule([worker("w0", free=0)])


def test_early_refreshes_fire_once_at_each_sample_count():
    p, clock = chameleon(refresh_s=1e6, first_refresh_samples=8, early_refresh_samples=(16, 32))
    _feed(p, clock, 8, 0)
    assert p.metrics()["refreshes"] == 1
    _feed(p, clock, 7, 8)
    assert p.metrics()["refreshes"] == 1
    _feed(p, clock, 1, 15)                           # the 16th request
    assert p.metrics()["refreshes"] == 2
    _feed(p, clock, 40, 16)                          # 32 crossed once, nothing after
    assert p.metrics()["refreshes"] == 3


def test_metrics_export_queues_quotas_squashes_and_predictor_accuracy():
    p, _ = chameleon()
    p.enqueue(req("r", predicted=None, max_tokens=50))
    [adm] = p.schedule([worker()])
    p.on_finish(adm.request, 30)
    m = p.metrics()
    for key in ("num_queues", "queue_len_0", "quota_tokens_0", "held_tokens_0", "squashes",
                "squash_rate", "bypasses", "predictor_samples", "predictor_bucket_accuracy",
                "predictor_within_tolerance"):
        assert isinstance(m[key], float), key
    assert m["predictor_samples"] == 1.0 and m["quota_tokens_0"] == 10_000.0
    assert p.squashes() == []


def test_config_validation():
    for bad in (dict(quota_weights=(0.0, 1.0, 1.0, 1.0)), dict(bypass_margin=0.9),
                dict(first_refresh_samples=0), dict(slo_s=-1.0), dict(warm_penalty=-0.1),
                dict(early_refresh_samples=(64, 32))):
        with pytest.raises(ValueError):
            ChameleonConfig(**bad)
