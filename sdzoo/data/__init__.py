"""Data sets and resumable loaders for training and evaluation.

The names below load their modules (and torch) on first use, so ``sdzoo.data.images`` stays importable where
torch is not installed: the serving install decodes and crops images through it."""
from importlib import import_module
from typing import Any

_PUBLIC = {
    'DATA_ENV': 'sources', 'DataSplits': 'sources', 'Split': 'sources', 'default_data_root': 'sources',
    'find_fashion_mnist': 'sources', 'load_splits': 'sources', 'resolution_note': 'sources',
    'StreamLoader': 'loader', 'TensorLoader': 'loader', 'batch_bounds': 'loader', 'create_loader': 'loader',
    'epoch_order': 'loader',
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f'.{_PUBLIC[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
