"""The paired comparison of two networks on the same images (their per-image records: :mod:`sdzoo.train.records`).

Two networks evaluated on the same 10,000 test images disagree on a few hundred of them. Whether a gap of a
quarter of a point in test error says more than which images happened to be in the test set is a question
about those discordant images (McNemar's exact test, a paired confidence interval), not about the two error
rates taken apart. ``sdzoo validate`` therefore records which images each network gets right, compactly
enough to commit beside its result, and ``sdzoo cards`` pairs two such records without any checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple

from ..stats import EXACT_INTEGERS_UP_TO, clopper_pearson, mcnemar_exact_p
from ..train.records import decode_correct

__all__ = ['PairedResult', 'mcnemar_exact_p', 'paired_comparison', 'EXACT_INTEGERS_UP_TO']


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
    lo, hi = clopper_pearson(only_b, m) if m else (0.5, 0.5)
    return PairedResult(images=n, only_a=only_a, only_b=only_b, error_difference=100 * d,
                        ci95=(100 * m / n * (2 * lo - 1), 100 * m / n * (2 * hi - 1)),
                        p_value=mcnemar_exact_p(only_a, only_b))
