"""Moved to ``sdzoo.reports.release``; this alias warns and goes in sdzoo 0.3.0."""
from ..compat import moved_module

__getattr__ = moved_module(__name__, 'sdzoo.reports.release', ('publish_run', 'add_parser'))
