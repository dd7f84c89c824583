"""1-D K-means for Chameleon's dynamic queues, and the rule that picks K.

In one dimension every optimal cluster is a contiguous run of the sorted values,
so with prefix sums a Lloyd iteration costs O(K log n) (boundaries found by
bisection) and the silhouette costs O(n K) instead of O(n^2).

Choosing K. The paper keeps "the K with minimal WCSS", which for K = 1..4 is always 4
(WCSS never grows with K). We use the mean silhouette instead: for K = 2..k_max keep
the K with the highest silhouette (ties -> fewer queues), and fall back to K = 1 when
even the best silhouette is below `min_silhouette` (default 0.65). One symmetric lump
split in two scores below that (Gaussian ~0.56, uniform ~0.64), well separated groups
score > 0.8; a skewed, long-tailed population (exponential ~0.68, the WRS of the
benchmark trace ~0.7) is split, which is what we want: its tail is the large requests.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Clustering:
    centroids: tuple[float, ...]     # ascending
    boundaries: tuple[float, ...]    # K-1 midpoints between neighbouring centroids
    wcss: float
    silhouette: float                # mean silhouette; 0.0 for K = 1

    @property
    def k(self) -> int:
        return len(self.centroids)


class _Prefix:
    def __init__(self, xs: list[float]):
        self.xs = xs
        self.s = [0.0]
        self.s2 = [0.0]
        for x in xs:
            self.s.append(self.s[-1] + x)
            self.s2.append(self.s2[-1] + x * x)

    def mean(self, a: int, b: int) -> float:
        return (self.s[b] - self.s[a]) / (b - a)

    def sse(self, a: int, b: int) -> float:
        n = b - a
        return max(0.0, self.s2[b] - self.s2[a] - (self.s[b] - self.s[a]) ** 2 / n) if n else 0.0

    def dist_sum(self, i: int, a: int, b: int) -> float:
        """Sum of |x_i - x_j| over j in [a, b) (may contain i)."""
        x = self.xs[i]
        lo_end = min(i, b)
        total = 0.0
        if a < lo_end:
            total += x * (lo_end - a) - (self.s[lo_end] - self.s[a])
        hi_start = max(i + 1, a)
        if hi_start < b:
            total += (self.s[b] - self.s[hi_start]) - x * (b - hi_start)
        return total


def _splits(p: _Prefix, boundaries: list[float]) -> list[int]:
    """Index ranges of each cluster: values <= boundary go to the lower cluster."""
    return [0] + [bisect.bisect_right(p.xs, b) for b in boundaries] + [len(p.xs)]


def _lloyd(p: _Prefix, centroids: list[float], max_iter: int) -> tuple[list[int], list[float]]:
    splits: list[int] = []
    for _ in range(max_iter):
        bounds = [(a + b) / 2 for a, b in zip(centroids, centroids[1:])]
        new = _splits(p, bounds)
        new = [new[0]] + [s for s, prev in zip(new[1:], new) if s > prev]  # drop empty clusters
        if new == splits:
            break
        splits = new
        centroids = [p.mean(a, b) for a, b in zip(splits, splits[1:])]
    return splits, centroids


def _gap_init(xs: list[float], k: int) -> list[float]:
    """Centroids of the runs between the k-1 widest gaps (optimal for well separated groups)."""
    gaps = sorted(range(1, len(xs)), key=lambda i: xs[i] - xs[i - 1], reverse=True)[:k - 1]
    cuts = [0] + sorted(gaps) + [len(xs)]
    return [sum(xs[a:b]) / (b - a) for a, b in zip(cuts, cuts[1:]) if b > a]


def kmeans_1d(sorted_values: list[float], k: int, max_iter: int = 100) -> Clustering:
    """Best of two deterministic Lloyd runs (quantile and widest-gap initialisation)."""
    xs = sorted_values
    if not xs:
        raise ValueError("kmeans_1d needs at least one value")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    p = _Prefix(xs)
    n = len(xs)
    inits = [[xs[min(n - 1, int((j + 0.5) * n / k))] for j in range(k)], _gap_init(xs, k)]
    best = Clustering((), (), math.inf, 0.0)
    for init in inits:
        splits, cents = _lloyd(p, sorted(set(init)), max_iter)
        wcss = sum(p.sse(a, b) for a, b in zip(splits, splits[1:]))
        if wcss < best.wcss - 1e-12:
            bounds = tuple((a + b) / 2 for a, b in zip(cents, cents[1:]))
            best = Clustering(tuple(cents), bounds, wcss, silhouette_1d(p, splits))
    return best


def silhouette_1d(p: _Prefix, splits: list[int]) -> float:
    """Mean silhouette of contiguous clusters [splits[j], splits[j+1])."""
    k = len(splits) - 1
    if k < 2:
        return 0.0
    total = 0.0
    for j in range(k):
        a, b = splits[j], splits[j + 1]
        for i in range(a, b):
            if b - a == 1:
                continue  # singleton: silhouette 0 by definition
            own = p.dist_sum(i, a, b) / (b - a - 1)
            # In 1-D the nearest other cluster (by mean distance) is an adjacent one.
            other = math.inf
            if j > 0:
                other = p.dist_sum(i, splits[j - 1], a) / (a - splits[j - 1])
            if j + 1 < k:
                c = splits[j + 2]
                other = min(other, p.dist_sum(i, b, c) / (c - b))
            denom = max(own, other)
            total += (other - own) / denom if denom > 0 else 0.0
    return total / len(p.xs)


def choose_clustering(values: list[float], k_max: int = 4, min_silhouette: float = 0.65,
                      min_samples: int = 8) -> Clustering:
    """K-means for K = 1..k_max and the silhouette rule above."""
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    xs = sorted(values)
    if not xs:
        return Clustering((0.0,), (), 0.0, 0.0)
    one = kmeans_1d(xs, 1)
    if len(xs) < min_samples or xs[0] == xs[-1]:
        return one
    distinct = len(set(xs))
    best: Clustering | None = None
    for k in range(2, min(k_max, distinct) + 1):
        c = kmeans_1d(xs, k)
        if c.k == k and (best is None or c.silhouette > best.silhouette + 1e-9):
            best = c
    if best is None or best.silhouette < min_silhouette:
        return one
    return best
