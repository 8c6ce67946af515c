"""Moved to ``sdzoo.reports.cards``; this alias warns and goes in sdzoo 0.3.0."""
from ..compat import moved_module

__getattr__ = moved_module(__name__, 'sdzoo.reports.cards', ('DATASET_NAMES', 'COMPARISON_FIGURE', 'render_cards', 'write_cards', 'add_parser'))
