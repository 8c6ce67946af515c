"""Compute-skipping stochastic depth for timm's own models: ``sdzoo.convert(model)``.

One module per timm family (``vision_transformer``, ``convnext``, ``resnet``) holds its block
adapters; ``converter`` walks a model and swaps them in.
"""
from ._adapter import BlockAdapter
from .converter import ADAPTERS, block_families, convert, supported_families

__all__ = ['convert', 'supported_families', 'block_families', 'BlockAdapter', 'ADAPTERS']
