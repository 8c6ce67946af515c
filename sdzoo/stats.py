"""Exact binomial statistics for paired comparisons on the same images, torch-free: McNemar's exact test, its
one-sided form (the sign test) and the Clopper-Pearson interval. ``reports/paired.py`` pairs two evaluation
records with them; ``train/selection.py`` asks whether a fine-tune beat its start by more than chance."""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Tuple

__all__ = ['EXACT_INTEGERS_UP_TO', 'binomial_cdf', 'mcnemar_exact_p', 'sign_test_p', 'clopper_pearson']

EXACT_INTEGERS_UP_TO = 2000  # discordant images: exact integers below, log-space sums above (same value to 1e-9)


def _log_binomial_pmf(m: int, p: float) -> Any:
    """log P(X = i), i = 0..m, X ~ Binomial(m, p), 0 < p < 1: a cumulative sum of log ratios (numpy, no overflow)."""
    import numpy as np
    i = np.arange(m, dtype=np.float64)
    steps = np.log((m - i) / (i + 1)) + math.log(p) - math.log1p(-p)
    return np.concatenate([[m * math.log1p(-p)], m * math.log1p(-p) + np.cumsum(steps)])


def binomial_cdf(k: int, m: int, p: float) -> float:
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


def _lower_tail_half(k: int, n: int) -> float:
    """P(X <= k), X ~ Binomial(n, 1/2): exact integers up to EXACT_INTEGERS_UP_TO trials, log-space above."""
    if k < 0:
        return 0.0
    if n <= EXACT_INTEGERS_UP_TO:
        return float(min(Fraction(1), Fraction(sum(math.comb(n, i) for i in range(min(k, n) + 1)), 2 ** n)))
    return binomial_cdf(k, n, 0.5)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the chance of a split of the discordant images at least this uneven if
    each were equally likely to favour either network (a binomial test at 1/2; exact integers for up to
    :data:`EXACT_INTEGERS_UP_TO` discordant images, log-space sums above, in milliseconds)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2 * _lower_tail_half(min(only_a, only_b), n))


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: the chance of at least ``wins`` of the ``wins + losses`` discordant images
    favouring the challenger if each were a fair coin (1.0 when there are none)."""
    n = wins + losses
    return 1.0 if n == 0 else _lower_tail_half(losses, n)


def clopper_pearson(x: int, m: int, alpha: float = 0.05) -> Tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion x / m, by bisection on the binomial tails. It
    excludes 1/2 exactly when the two-sided exact test at 1/2 rejects at ``alpha``: the interval and the
    p-value cannot contradict each other."""
    def solve(f, target: float) -> float:  # f increasing in p on [0, 1]
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
        return (lo + hi) / 2
    lower = 0.0 if x == 0 else solve(lambda p: 1.0 - binomial_cdf(x - 1, m, p), alpha / 2)
    upper = 1.0 if x == m else solve(lambda p: -binomial_cdf(x, m, p), -alpha / 2)
    return lower, upper
