"""The paired comparison of two networks on the same images (their per-image records: :mod:`sdzoo.train.records`).

Two networks evaluated on the same 10,000 test images disagree on a few hundred of them. Whether a gap of a
quarter of a point in test error says more than which images happened to be in the test set is a question
about those discordant images (McNemar's exact test, a paired confidence interval), not about the two error
rates taken apart. ``sdzoo validate`` therefore records which images each network gets right, compactly
enough to commit beside its result, and ``sdzoo cards`` pairs two such records without any checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, Tuple

from ..train.records import decode_correct

__all__ = ['PairedResult', 'mcnemar_exact_p', 'paired_comparison', 'EXACT_INTEGERS_UP_TO']

EXACT_INTEGERS_UP_TO = 2000  # discordant images: exact integers below, log-space sums above (same value to 1e-9)


def _log_binomial_pmf(m: int, p: float) -> Any:
    """log P(X = i), i = 0..m, X ~ Binomial(m, p), 0 < p < 1: a cumulative sum of log ratios (numpy, no overflow)."""
    import numpy as np
    i = np.arange(m, dtype=np.float64)
    steps = np.log((m - i) / (i + 1)) + math.log(p) - math.log1p(-p)
    return np.concatenate([[m * math.log1p(-p)], m * math.log1p(-p) + np.cumsum(steps)])


def _binomial_cdf(k: int, m: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(m, p)."""
    if k < 0:
        return 0.0
    if k >= m or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    import numpy as np
    logs = _log_binomial_pmf(m, p)[:k + 1]
    top = logs.max()
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the chance of a split of the discordant images at least this uneven if
    each were equally likely to favour either network (a binomial test at 1/2; exact integers for up to
    :data:`EXACT_INTEGERS_UP_TO` discordant images, log-space sums above, in milliseconds)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    if n <= EXACT_INTEGERS_UP_TO:
        tail = sum(math.comb(n, i) for i in range(k + 1))
        return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))
    return min(1.0, 2 * _binomial_cdf(k, n, 0.5))


def _clopper_pearson(x: int, m: int, alpha: float = 0.05) -> Tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion x / m, by bisection on the binomial tails. It
    excludes 1/2 exactly when the two-sided exact test at 1/2 rejects at ``alpha``: the interval and the
    p-value cannot contradict each other."""
    def solve(f, target: float) -> float:  # f increasing in p on [0, 1]
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
        return (lo + hi) / 2
    lower = 0.0 if x == 0 else solve(lambda p: 1.0 - _binomial_cdf(x - 1, m, p), alpha / 2)
    upper = 1.0 if x == m else solve(lambda p: -_binomial_cdf(x, m, p), -alpha / 2)
    return lower, upper


@dataclass(frozen=True)
class PairedResult:
    """Network a against network b on the same images; differences are a's error minus b's, in points."""
    images: int
    only_a: int  # images a gets right and b wrong
    only_b: int  # images b gets right and a wrong
    error_difference: float
    ci95: Tuple[float, float]
    p_value: float

    @property
    def differs(self) -> bool:
        """The discordant split is too uneven for chance at the 5% level (the level of the 95% interval)."""
        return self.p_value < 0.05


def paired_comparison(a: Mapping[str, Any], b: Mapping[str, Any]) -> PairedResult:
    """Compare two ``per_image`` records of ``sdzoo validate`` (refused unless they cover the same images)."""
    if a.get('labels_sha256') != b.get('labels_sha256') or a.get('images') != b.get('images'):
        raise ValueError('the two evaluations did not see the same images in the same order '
                         f'({a.get("images")} vs {b.get("images")} images, label digests differ or are missing)')
    hit_a, hit_b = decode_correct(a), decode_correct(b)
    n = hit_a.size
    only_a, only_b = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
    d = (only_b - only_a) / n  # error(a) - error(b) as a fraction
    m = only_a + only_b
    # exact and conditional on the discordant images, as the p-value: with pi the share of them b gets right,
    # the difference is (m / n)(2 pi - 1), so its interval excludes 0 exactly when McNemar's p < 0.05
    lo, hi = _clopper_pearson(only_b, m) if m else (0.5, 0.5)
    return PairedResult(images=n, only_a=only_a, only_b=only_b, error_difference=100 * d,
                        ci95=(100 * m / n * (2 * lo - 1), 100 * m / n * (2 * hi - 1)),
                        p_value=mcnemar_exact_p(only_a, only_b))
