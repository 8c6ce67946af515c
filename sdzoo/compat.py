"""Old import paths of names that moved (CHANGELOG.md lists them): they keep working for one release, with a
``DeprecationWarning`` that names the new home."""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Dict, Iterable, Optional

__all__ = ["moved_names", "moved_module", "REMOVED_IN"]

REMOVED_IN = '0.3.0'


def moved_names(old_module: str, new_homes: Dict[str, str],
                fallback: Optional[Callable[[str], Any]] = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves ``name`` from ``new_homes[name]`` (a module path) with a warning.

    ``fallback`` answers names that did not move (a module that also has lazy attributes of its own)."""

    def __getattr__(name: str) -> Any:
        if name in new_homes:
            new = new_homes[name]
            warnings.warn(f'{old_module}.{name} moved to {new}.{name}; the old path goes in sdzoo {REMOVED_IN}',
                          DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(new), name)
        if fallback is not None:
            return fallback(name)
        raise AttributeError(f'module {old_module!r} has no attribute {name!r}')
    return __getattr__


def moved_module(old_module: str, new_module: str, names: Iterable[str]) -> Callable[[str], Any]:
    """``__getattr__`` for a module that moved whole: every public name of ``names`` comes from ``new_module``."""
    return moved_names(old_module, {n: new_module for n in names})
