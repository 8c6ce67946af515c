"""sdzoo: a stochastic-depth model zoo for timm.

Importing sdzoo registers every ``sd_*`` model with timm's registry.
"""
from __future__ import annotations

__version__ = '0.1.0'

from . import models  # noqa: F401  (registers the models with timm)
from .hub.offline import install as _install_hub_guard

_install_hub_guard()  # hf-hub: names fail within seconds, naming the shipped copy, when the Hub is unreachable
from .layers import (
    SDSampler, StochasticDepth, apply_stochastic_depth, sd_blocks, sd_modules, set_sd_seed,
    survival_schedule,
)

_LAZY = {
    'fold': ('sdzoo.export.fold', 'fold'),
    'export_onnx': ('sdzoo.export.onnx', 'export_onnx'),
    'mc_predict': ('sdzoo.mc', 'mc_predict'),
}


def __getattr__(name: str):
    # export/runtime pull in onnx/onnxruntime: import them only when asked for
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
