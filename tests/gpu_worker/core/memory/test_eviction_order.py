import pytest

from gpu_worker.core.memory import (CHAMELEON_WEIGHTS, FAIR_SHARE_WEIGHTS, Candidate, LruOrder,
                                    ScoreOrder, ScoreWeights)


def ids(cands):
    return [c.adapter_id for c in cands]


def test_lru_orders_by_last_use_then_id():
    cands = [Candidate("b", 1, 5.0, 9), Candidate("a", 9, 5.0, 0), Candidate("c", 4, 1.0, 3)]
    assert ids(LruOrder().order(cands, now=10.0)) == ["c", "a", "b"]


def test_score_terms_follow_the_documented_normalisation():
    cands = [Candidate("x", 8, 0.0, 4), Candidate("y", 2, 10.0, 1), Candidate("z", 4, 5.0, 0)]
    s = ScoreOrder(ScoreWeights(0.45, 0.10, 0.45)).scores(cands, now=10.0)
    # x: freq 4/4, recency 1-10/10, size 8/8; y: 1/4, 1-0/10, 2/8; z: 0/4, 1-5/10, 4/8
    assert s["x"] == pytest.approx(0.45 + 0.0 + 0.45)
    assert s["y"] == pytest.approx(0.45 * 0.25 + 0.10 + 0.45 * 0.25)
    assert s["z"] == pytest.approx(0.0 + 0.10 * 0.5 + 0.45 * 0.5)
    assert ids(ScoreOrder().order(cands, now=10.0)) == ["z", "y", "x"]


def test_degenerate_sets_do_not_divide_by_zero():
    single = [Candidate("only", 3, 2.0, 0)]
    # nobody used in the window, equal ages: frequency 0, recency 1, size 1
    assert ScoreOrder().scores(single, now=2.0)["only"] == pytest.approx(0.10 + 0.45)
    assert ScoreOrder().order([], now=0.0) == []


def test_equal_weights_change_the_victim():
    # "old" is big but stale, "new" small but just used: recency decides only with more weight on it
    cands = [Candidate("old", 8, 0.0, 1), Candidate("new", 4, 10.0, 1)]
    assert ids(ScoreOrder(CHAMELEON_WEIGHTS).order(cands, now=10.0))[0] == "new"
    assert ids(ScoreOrder(ScoreWeights(0.1, 0.8, 0.1)).order(cands, now=10.0))[0] == "old"
    fair = ScoreOrder(FAIR_SHARE_WEIGHTS).scores(cands, now=10.0)
    assert fair["old"] == pytest.approx((1 + 0 + 1) / 3) and fair["new"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_ties_fall_back_to_least_recently_used():
    cands = [Candidate("b", 2, 3.0, 0), Candidate("a", 2, 3.0, 0), Candidate("c", 2, 1.0, 0)]
    order = ids(ScoreOrder(ScoreWeights(1.0, 0.0, 0.0)).order(cands, now=5.0))
    assert order == ["c", "a", "b"]


@pytest.mark.parametrize("w", [(-0.1, 0.5, 0.6), (0, 0, 0), (float("nan"), 1, 1), (float("inf"), 0, 0)])
def test_weights_are_validated(w):
    with pytest.raises(ValueError):
        ScoreWeights(*w)
