"""WRS scale, output predictor, service-time model, 1-D K-means and quotas."""
from __future__ import annotations

import math
import random

import pytest

from scheduler_svc.core.kmeans import _Prefix, choose_clustering, kmeans_1d, silhouette_1d
from scheduler_svc.core.predictor import PredictorConfig, QuantileOutputPredictor, ServiceTimeModel
from scheduler_svc.core.quota import QueueLoad, compute_quotas
from scheduler_svc.core.types import PendingRequest
from scheduler_svc.core.wrs import SlidingExtreme, WrsScale


def req(rid="r", adapter="a", inp=10, max_tokens=100, nbytes=0) -> PendingRequest:
    return PendingRequest(rid, adapter, inp, max_tokens, adapter_bytes=nbytes)


# -- WRS ----------------------------------------------------------------------
def test_sliding_max_and_min_follow_the_window():
    mx, mn = SlidingExtreme(10.0), SlidingExtreme(10.0, largest=False)
    for t, v in [(0, 5), (1, 9), (2, 3), (8, 4)]:
        mx.push(t, v)
        mn.push(t, v)
    assert mx.value(5) == 9 and mn.value(5) == 3
    assert mx.value(11.5) == 4          # 9 (t=1) and 3 (t=2) aged out
    assert mn.value(12.5) == 4
    assert mx.value(100) == 4           # everything aged out: keep the last extreme
    with pytest.raises(ValueError):
        SlidingExtreme(0)


def test_wrs_formula_and_base_request_rule():
    s = WrsScale(window_s=60)
    s.observe(0, 1000, 500, 200)
    s.observe(0, 100, 50, 50)
    assert s.wrs(1, 1000, 500, 200) == pytest.approx(1.0)
    assert s.wrs(1, 500, 100, 100) == pytest.approx((0.4 * 0.5 + 0.6 * 0.2) * 0.5)
    # base request: weighted like the smallest adapter in the window (50 / 200)
    assert s.wrs(1, 1000, 500, 0) == pytest.approx(0.25)
    only_base = WrsScale(window_s=60)
    only_base.observe(0, 100, 100, 0)
    assert only_base.wrs(1, 50, 100, 0) == pytest.approx(0.4 * 0.5 + 0.6)


# -- predictor ----------------------------------------------------------------
def test_predictor_per_adapter_quantile_cap_and_fallbacks():
    p = QuantileOutputPredictor(PredictorConfig(quantile=0.8, min_samples=4, default_output=77))
    assert p.predict(req(adapter="a")) == 77                 # no history at all
    for out in [10, 20, 30, 40, 50]:
        p.observe(req(adapter="a"), out)
    assert p.predict(req(adapter="a")) == 40                 # nearest-rank 80th percentile
    assert p.predict(req(adapter="a", max_tokens=25)) == 25  # capped by max_tokens
    assert p.predict(req(adapter="b")) == 40                 # unseen adapter: global history
    for _ in range(4):
        p.observe(req(adapter="b"), 500)
    assert p.predict(req(adapter="b", max_tokens=1000)) == 500


def test_predictor_accuracy_metrics():
    p = QuantileOutputPredictor(PredictorConfig(buckets=(32, 128), tolerance=0.5))
    r = req()
    for pred, actual in [(100, 110), (100, 20), (10, 14), (200, 90)]:
        r.predicted_output = pred
        p.observe(r, actual)
    acc = p.accuracy()
    assert acc["predictor_samples"] == 4
    assert acc["predictor_bucket_accuracy"] == pytest.approx(2 / 4)   # (100,110) and (10,14)
    assert acc["predictor_within_tolerance"] == pytest.approx(2 / 4)  # same two
    with pytest.raises(ValueError):
        PredictorConfig(quantile=0)


def test_service_time_learns_decode_rate():
    m = ServiceTimeModel(decode_s_per_token=0.1, prefill_s_per_token=0.0, smoothing=0.5)
    for _ in range(20):
        m.observe(0, 100, 2.0)   # 20 ms per token
    assert m.decode_s_per_token == pytest.approx(0.02, rel=1e-3)
    assert m.expected_s(0, 50) == pytest.approx(1.0, rel=1e-3)


# -- K-means ------------------------------------------------------------------
def blobs(centres: list[float], n: int, sd: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(c, sd) for c in centres for _ in range(n)]


@pytest.mark.parametrize("centres", [[0.5], [0.1, 0.7], [0.05, 0.4, 0.9]])
def test_choose_k_finds_the_number_of_clear_clusters(centres):
    c = choose_clustering(blobs(centres, 300, 0.03))
    assert c.k == len(centres)
    for lo, b, hi in zip(centres, c.boundaries, centres[1:]):
        assert lo < b < hi
    for b, (x, y) in zip(c.boundaries, zip(c.centroids, c.centroids[1:])):
        assert b == pytest.approx((x + y) / 2)


def test_one_wide_unimodal_population_stays_one_queue():
    assert choose_clustering(blobs([0.5], 2000, 0.15, seed=4)).k == 1
    assert choose_clustering([0.3] * 50).k == 1


def test_kmeans_wcss_does_not_grow_with_k_and_silhouette_matches_brute_force():
    xs = sorted(blobs([0.1, 0.3, 0.8], 40, 0.08, seed=2))
    wcss = [kmeans_1d(xs, k).wcss for k in (1, 2, 3, 4)]
    assert all(a >= b - 1e-9 for a, b in zip(wcss, wcss[1:]))
    c = kmeans_1d(xs, 3)
    labels = [sum(x > b for b in c.boundaries) for x in xs]
    splits = [0] + [labels.index(j) for j in range(1, 3)] + [len(xs)]
    brute = []
    for i, x in enumerate(xs):
        mean = {j: sum(abs(x - y) for y, lj in zip(xs, labels) if lj == j and y is not x)
                / max(1, labels.count(j) - (lj_ := labels[i] == j)) for j in range(3)}
        a = mean[labels[i]]
        b = min(v for j, v in mean.items() if j != labels[i])
        brute.append((b - a) / max(a, b))
    assert silhouette_1d(_Prefix(xs), splits) == pytest.approx(sum(brute) / len(brute), rel=1e-9)


# -- quotas -------------------------------------------------------------------
def test_quotas_meet_minima_then_split_the_rest_by_weight_times_demand():
    loads = [QueueLoad(100, 1.0, 1.0, 50.0), QueueLoad(1000, 4.0, 0.1, 600.0)]
    quotas = compute_quotas(loads, 10_000, slo_s=5.0)
    mins = [max(100, math.ceil(100 * 1.0 * (0.2 + 1.0))), 1000 * 4 * 3 // 10]  # 120, 1200
    assert sum(quotas) == 10_000
    demand = [1.0 * 1.0 * 50.0, 0.1 * 4.0 * 600.0]
    rest = 10_000 - sum(mins)
    assert quotas[0] == mins[0] + int(rest * demand[0] / sum(demand))
    assert quotas[1] == 10_000 - quotas[0]
    # a zero weight leaves a queue its minimum only; a larger weight gives it more
    assert compute_quotas(loads, 10_000, 5.0, weights=(0.0, 1.0))[0] == mins[0]
    assert compute_quotas(loads, 10_000, 5.0, weights=(4.0, 1.0))[0] > quotas[0]


def test_quota_minimum_follows_the_mm1_bound_and_one_request_floor():
    assert QueueLoad(1000, 4.0, 0.1).min_tokens(5.0) == 1200      # S*D*(1/SLO + lambda)
    assert QueueLoad(1000, 0.1, 0.0).min_tokens(5.0) == 1000      # bound 20 < S: one request
    assert QueueLoad(0, 4.0, 1.0).min_tokens(5.0) == 0


def test_quotas_under_overload_follow_demand():
    loads = [QueueLoad(2000, 5.0, 3.0, 200.0), QueueLoad(2000, 8.0, 1.0, 1500.0)]
    quotas = compute_quotas(loads, 10_000, slo_s=5.0)
    demand = [3.0 * 5.0 * 200.0, 1.0 * 8.0 * 1500.0]
    assert sum(quotas) == 10_000
    assert quotas[1] / quotas[0] == pytest.approx(demand[1] / demand[0], rel=0.01)


def test_quota_inputs_are_validated():
    loads = [QueueLoad(10, 1.0, 1.0, 5.0)]
    for bad in (dict(slo_s=0), dict(total_tokens=-1), dict(weights=(0.0,))):
        kw = {"loads": loads, "total_tokens": 100, "slo_s": 5.0, **bad}
        with pytest.raises(ValueError):
            compute_quotas(**kw)
    with pytest.raises(ValueError):
        QueueLoad(-1, 1.0, 1.0)
    assert compute_quotas([], 100, 5.0) == []
