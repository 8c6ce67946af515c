"""Moved: the paired statistics are ``sdzoo.reports.paired``, the per-image record format
``sdzoo.train.records``; this alias warns and goes in sdzoo 0.3.0."""
from ..compat import moved_names

__getattr__ = moved_names(__name__, {
    **{n: 'sdzoo.reports.paired' for n in ('PairedResult', 'mcnemar_exact_p', 'paired_comparison')},
    **{n: 'sdzoo.train.records' for n in ('encode_per_image', 'decode_correct')},
})
