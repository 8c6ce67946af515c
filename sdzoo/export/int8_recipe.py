"""The INT8 recipe's defaults, apart from the quantizer so that ``sdzoo export --help`` needs no numpy."""
from __future__ import annotations

__all__ = ['CALIBRATION_METHODS', 'DEFAULT_METHOD', 'DEFAULT_CALIBRATION_IMAGES', 'DEFAULT_MAX_ACCURACY_DROP',
           'EVAL_SPLITS']

CALIBRATION_METHODS = {'minmax': 'MinMax', 'entropy': 'Entropy', 'percentile': 'Percentile'}
DEFAULT_METHOD = 'minmax'  # chosen by measurement: docs/int8.md (benchmarks/results/int8_calibration.md)
DEFAULT_CALIBRATION_IMAGES = 512
DEFAULT_MAX_ACCURACY_DROP = 0.5  # top-1 points
EVAL_SPLITS = ('val', 'test')
