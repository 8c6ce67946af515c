"""sdzoo: a stochastic-depth model zoo for timm.

The ``sd_*`` models are registered with timm's registry as soon as timm is imported (the start-up hook
``_sdzoo_hook`` does it for ``import timm`` alone; importing sdzoo does it too, or as soon as timm follows).
Importing sdzoo itself loads no PyTorch: ``sdzoo.runtime``, ``sdzoo serve`` and ``sdzoo predict`` run ONNX
models with onnxruntime in an install without torch (``pip install "sdzoo[cpu,serve]"``). The torch parts
(``sdzoo.StochasticDepth``, ``sdzoo.convert(model)``, ``sdzoo.fold``, …) are imported when first used.
"""
from __future__ import annotations

import importlib
import sys

__version__ = '0.1.0'

_LAZY = {
    'fold': ('sdzoo.export.fold', 'fold'),
    'export_onnx': ('sdzoo.export.onnx', 'export_onnx'),
    'mc_predict': ('sdzoo.mc', 'mc_predict'),
    'prune_depth': ('sdzoo.models.depth', 'prune_depth'),
}
_LAYERS = ('SDSampler', 'StochasticDepth', 'apply_stochastic_depth', 'sd_blocks', 'sd_modules', 'set_sd_seed',
           'survival_schedule')
_ROOMS = ('layers', 'data', 'runtime', 'hub', 'models', 'convert', 'train', 'export', 'reports', 'mirror', 'serve',
          'files', 'compat', 'cli_args', 'predict', 'mc', 'info', 'demo', 'cli')
_registered = False


def register_models() -> None:
    """Register the ``sd_*`` models with timm and guard ``hf-hub:`` names against an unreachable Hub.

    Idempotent. Imports torch and timm: the commands that need models call it, serving never does."""
    global _registered
    if _registered:
        return
    _registered = True  # first: importing the models imports timm, whose start-up hook calls this again
    try:
        # import_module, not `from . import models`: that asks this module's __getattr__ first, which registers
        importlib.import_module(f'{__name__}.models')  # the families' @register_model run on import
        # hf-hub: names fail within seconds, naming the shipped copy, when the Hub is unreachable
        importlib.import_module(f'{__name__}.hub.offline').install()
    except BaseException:
        _registered = False
        raise


def _register_when_timm_is_imported() -> None:
    """Register now if timm is already imported, else as soon as it is (the start-up hook's finder)."""
    if 'timm' in sys.modules:
        register_models()
        return
    try:
        import _sdzoo_hook
    except ImportError:  # a source tree without the hook module on the path: register on first model use
        return
    _sdzoo_hook.install()


_register_when_timm_is_imported()


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _LAYERS:
        register_models()
        return getattr(importlib.import_module(f'{__name__}.layers'), name)
    if name in _ROOMS:  # `import sdzoo; sdzoo.models.…` as before, when the room is first touched
        if name in ('models', 'convert', 'layers'):
            register_models()
        return importlib.import_module(f'{__name__}.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
