"""Moved to ``sdzoo.reports.comparison``; this alias warns and goes in sdzoo 0.3.0."""
from ..compat import moved_module

__getattr__ = moved_module(__name__, 'sdzoo.reports.comparison', ('RunRecord', 'load_runs', 'load_step_benchmarks', 'load_epoch_benchmarks', 'comparison_section', 'plot_comparison'))
