"""Registers sdzoo's models with timm the moment timm is first imported.

Loaded at interpreter start by ``sdzoo_autoregister.pth`` (installed with the package) so that
``timm.create_model('sd_resnet110')`` works without ``import sdzoo``. This runs in *every* Python
process of the environment, so it must cost nothing and never fail:

* it reads the ``SDZOO_NO_AUTOREGISTER`` switch before doing anything else;
* it imports only ``os`` and ``sys``, which ``site`` has already loaded when it runs ``.pth``
  files (the finder and loader below are duck-typed instead of subclassing ``importlib.abc``,
  which would pull in ``importlib.resources``, ``typing`` and more at every start);
* it never raises: a broken sdzoo is reported once on stderr (not through ``warnings``, which
  ``-W error`` turns into an exception inside ``import timm``).
"""
import os
import sys

ENV_OFF = 'SDZOO_NO_AUTOREGISTER'
_reported = False


def _disabled() -> bool:
    return os.environ.get(ENV_OFF, '').strip().lower() not in ('', '0', 'false', 'no')


def _report(error: BaseException) -> None:
    global _reported
    if _reported:
        return
    _reported = True
    try:
        sys.stderr.write(f'sdzoo: could not register its models with timm ({type(error).__name__}: {error}); '
                         f'set {ENV_OFF}=1 to silence\n')
    except Exception:
        pass


class _RegisterAfterExec:
    """Wraps timm's own loader: run timm's ``__init__``, then import sdzoo (which registers)."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        try:
            import importlib
            sdzoo = importlib.import_module('sdzoo')
            register = getattr(sdzoo, 'register_models', None)
            if register is not None:  # sdzoo imported before timm registers only now (its import loads no torch)
                register()
        except Exception as e:  # never break `import timm` because of sdzoo
            _report(e)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _TimmFinder:
    """A ``sys.meta_path`` finder (the protocol is duck-typed) that waits for ``import timm``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm':
            return None
        _uninstall()
        try:
            import importlib.util
            spec = importlib.util.find_spec('timm')
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisterAfterExec(spec.loader)
            return spec
        except Exception as e:  # let the normal import machinery report timm's own problem
            _report(e)
            return None

    def invalidate_caches(self) -> None:
        pass


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TimmFinder)]


def install() -> None:
    if any(isinstance(f, _TimmFinder) for f in sys.meta_path):
        return
    if 'timm' in sys.modules:  # timm already imported (unusual at start-up): nothing to wait for
        return
    sys.meta_path.insert(0, _TimmFinder())


if not _disabled():
    try:
        install()
    except Exception as e:
        _report(e)
