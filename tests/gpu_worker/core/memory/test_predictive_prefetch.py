import pytest

from gpu_worker.core.memory import ArrivalHistogramPrefetcher, PrefetcherConfig


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def feed(pf, clock, adapter, times):
    for t in times:
        clock.t = t
        pf.observe(adapter)


def test_periodic_adapter_is_predicted_shortly_before_its_next_arrival():
    clock = Clock()
    pf = ArrivalHistogramPrefetcher(PrefetcherConfig(bin_s=1.0, horizon_s=2.0, threshold=0.5), clock)
    feed(pf, clock, "every10s", [0, 10, 20, 30, 40])
    feed(pf, clock, "rare", [0, 5, 45])
    clock.t = 41.0  # 1 s after the last arrival: the next is ~9 s away
    assert pf.probability("every10s") == 0.0
    clock.t = 48.5  # 8.5 s after: the 10 s gap falls inside the 2 s horizon
    assert pf.probability("every10s") == pytest.approx(1.0)
    assert pf.predict() == ["every10s"]
    assert pf.predict(exclude={"every10s"}) == []
    assert pf.probability("rare") == 0.0  # only two gaps: below min_samples


def test_overflow_gaps_count_against_a_prediction():
    clock = Clock()
    pf = ArrivalHistogramPrefetcher(PrefetcherConfig(bin_s=1.0, num_bins=5, horizon_s=2.0,
                                                     min_samples=1), clock)
    feed(pf, clock, "a", [0, 1.5, 101.5, 201.5])  # one 1.5 s gap, two long ones
    clock.t = 201.5
    assert pf.probability("a") == pytest.approx(1 / 3)


@pytest.mark.parametrize("kw", [{"bin_s": 0}, {"num_bins": 1}, {"threshold": 0}, {"min_samples": 0},
                                {"horizon_s": float("nan")}])
def test_config_validation(kw):
    with pytest.raises(ValueError):
        PrefetcherConfig(**kw)
