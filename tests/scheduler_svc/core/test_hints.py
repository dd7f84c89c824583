"""The scheduler's prefetch-hint throttle: changes only, at most one per interval, resent
after a reconnect."""
from __future__ import annotations

import pytest

from scheduler_svc.core.fifo import FifoPolicy
from scheduler_svc.core.hints import HintConfig, HintThrottle
from scheduler_svc.core.types import PendingRequest


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_only_changes_are_sent_and_a_change_inside_the_interval_waits():
    clock = Clock()
    th = HintThrottle(HintConfig(limit=3, min_interval_s=0.5), clock)
    assert th.offer("w", []) == (None, None)            # a fresh worker holds no hint: nothing to say
    assert th.offer("w", ["a", "b", "a", "c", "d"]) == (["a", "b", "c"], None)   # distinct, capped
    assert th.offer("w", ["a", "b", "c"]) == (None, None)  # unchanged
    clock.t = 0.2
    send, wait = th.offer("w", ["b", "c"])
    assert send is None and wait == pytest.approx(0.3)  # changed, but the interval is not over
    clock.t = 0.5
    assert th.offer("w", ["b", "c"]) == (["b", "c"], None)
    clock.t = 2.0
    assert th.offer("w", []) == ([], None)              # the queue emptied: clear the worker's hint
    assert th.messages == 3
    assert th.offer("other", ["x"]) == (["x"], None)    # per worker


def test_a_reconnected_worker_gets_the_hint_again_and_limit_zero_disables():
    clock = Clock()
    th = HintThrottle(HintConfig(limit=2, min_interval_s=10.0), clock)
    assert th.offer("w", ["a"]) == (["a"], None)
    th.forget("w")
    assert th.offer("w", ["a"]) == (["a"], None)
    off = HintThrottle(HintConfig(limit=0), clock)
    assert not off.enabled and off.offer("w", ["a"]) == (None, None)
    with pytest.raises(ValueError):
        HintConfig(limit=-1)
    with pytest.raises(ValueError):
        HintConfig(min_interval_s=-0.1)


def test_fifo_hints_follow_the_queue_as_requests_are_admitted():
    clock = Clock()
    pol = FifoPolicy(clock)
    for i, aid in enumerate(["a", "b", "a", None, "c"]):
        pol.enqueue(PendingRequest(f"r{i}", aid, 4, 4, arrival=float(i)))
    th = HintThrottle(HintConfig(limit=8, min_interval_s=0.0), clock)
    assert th.offer("w", pol.prefetch_hints("w", 8))[0] == ["a", "b", "c"]
    pol.cancel("r0")
    pol.cancel("r1")
    assert th.offer("w", pol.prefetch_hints("w", 8))[0] == ["a", "c"]
