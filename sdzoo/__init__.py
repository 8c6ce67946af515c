"""sdzoo: a stochastic-depth model zoo for timm.

Importing sdzoo registers every ``sd_*`` model with timm's registry. The ``sdzoo`` command itself defers
that (and with it torch) until its arguments are parsed, so ``sdzoo --help`` answers at once.
"""
from __future__ import annotations

import os
import sys

__version__ = '0.1.0'

_LAZY = {
    'fold': ('sdzoo.export.fold', 'fold'),
    'export_onnx': ('sdzoo.export.onnx', 'export_onnx'),
    'mc_predict': ('sdzoo.mc', 'mc_predict'),
}
_LAYERS = ('SDSampler', 'StochasticDepth', 'apply_stochastic_depth', 'sd_blocks', 'sd_modules', 'set_sd_seed',
           'survival_schedule')


def _register() -> None:
    """Register the models with timm and guard ``hf-hub:`` names against an unreachable Hub (idempotent)."""
    from . import models  # noqa: F401  (registers the models with timm)
    from .hub.offline import install
    install()  # hf-hub: names fail within seconds, naming the shipped copy, when the Hub is unreachable


def _command_start() -> bool:
    """True while the ``sdzoo`` console script imports us: it registers after parsing (help needs no torch)."""
    main = sys.modules.get('__main__')
    argv0 = sys.argv[0] if sys.argv else ''
    return (os.path.basename(argv0) in ('sdzoo', 'sdzoo.exe', 'sdzoo-script.py')
            and getattr(main, '__file__', None) == argv0)


if not _command_start():
    _register()
    from .layers import (  # noqa: E402
        SDSampler, StochasticDepth, apply_stochastic_depth, sd_blocks, sd_modules, set_sd_seed,
        survival_schedule,
    )
    from .convert import convert  # noqa: E402  (sdzoo.convert(model); the sdzoo.convert package stays importable)


def __getattr__(name: str):
    # export/runtime pull in onnx/onnxruntime: import them only when asked for
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _LAYERS:
        _register()
        from . import layers
        return getattr(layers, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
