"""Registers sdzoo's models with timm the moment timm is first imported.

Loaded at interpreter start by ``sdzoo_autoregister.pth`` (installed with the package) so that
``timm.create_model('sd_resnet110')`` works without ``import sdzoo``. It imports nothing heavy at
start-up: it only places a finder on ``sys.meta_path`` that waits for ``import timm``.
Set ``SDZOO_NO_AUTOREGISTER=1`` to switch it off.
"""
import importlib.abc
import importlib.util
import os
import sys
import warnings

ENV_OFF = 'SDZOO_NO_AUTOREGISTER'


def _disabled() -> bool:
    return os.environ.get(ENV_OFF, '').strip().lower() not in ('', '0', 'false', 'no')


class _RegisterAfterExec(importlib.abc.Loader):
    """Wraps timm's own loader: run timm's ``__init__``, then import sdzoo (which registers)."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        try:
            importlib.import_module('sdzoo')
        except Exception as e:  # never break `import timm` because of sdzoo
            warnings.warn(f'sdzoo could not register its models with timm: {type(e).__name__}: {e}')

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _TimmFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm':
            return None
        _uninstall()
        spec = importlib.util.find_spec('timm')
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TimmFinder)]


def install() -> None:
    if _disabled() or any(isinstance(f, _TimmFinder) for f in sys.meta_path):
        return
    if 'timm' in sys.modules:  # timm already imported (unusual at start-up): nothing to wait for
        return
    sys.meta_path.insert(0, _TimmFinder())


install()
