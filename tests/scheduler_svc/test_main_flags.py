import argparse

import pytest

from scheduler_svc.core.policies import POLICY_NAMES
from scheduler_svc.main import SchedulerConfig, add_arguments


def parse(*argv: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    return ap.parse_args(["--store", "h:1", "--worker", "h:2", *argv])


def test_sched_policy_flag_and_its_policy_alias():
    assert parse().policy == "fifo"
    assert parse("--sched-policy", "chameleon").policy == "chameleon"
    assert parse("--policy", "static-mlq").policy == "static-mlq"
    for name in POLICY_NAMES:
        assert SchedulerConfig(store="h:1", workers=["h:2"], policy=name).policy == name
    with pytest.raises(ValueError, match="--sched-policy"):
        SchedulerConfig(store="h:1", workers=["h:2"], policy="lifo")


def test_prefetch_hint_flags():
    a = parse()
    assert (a.prefetch_hints, a.hint_interval_s) == (8, 0.1)
    a = parse("--prefetch-hints", "0", "--hint-interval-s", "0.5")
    assert (a.prefetch_hints, a.hint_interval_s) == (0, 0.5)
    with pytest.raises(ValueError, match="hint limit"):
        SchedulerConfig(store="h:1", workers=["h:2"], prefetch_hints=-1)
