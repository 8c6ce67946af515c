"""Compute-skipping stochastic depth for timm's own models: ``sdzoo.convert(model)``.

One module per timm family (``vision_transformer``, ``convnext``, ``resnet``) holds its block
adapters; ``converter`` walks a model and swaps them in.
"""
import sys
import types

from ._adapter import BlockAdapter
from .converter import ADAPTERS, block_families, convert, supported_families

__all__ = ['convert', 'supported_families', 'block_families', 'BlockAdapter', 'ADAPTERS']


class _CallableModule(types.ModuleType):
    """``sdzoo.convert(model)`` calls :func:`convert`: the package and the function share a name, and since
    ``import sdzoo`` no longer imports torch, the attribute ``sdzoo.convert`` is this package, not the function."""

    def __call__(self, *args, **kwargs):
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
