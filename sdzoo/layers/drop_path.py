"""timm's ``DropPath`` semantics on sdzoo's compute-skipping stochastic-depth unit.

A converted timm block (``sdzoo.convert``) keeps timm's per-block drop probability, per-sample
coins and inverted scaling, but its branch runs only on the surviving samples instead of being
computed for all of them and multiplied by zero.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.layers import DropPath

from .stochastic_depth import SDSampler, StochasticDepth

__all__ = ['SkippingDropPath', 'drop_prob_of']


def drop_prob_of(module: Optional[nn.Module]) -> float:
    """The drop probability a timm block's ``drop_path`` slot carries (``Identity``/``None``: 0)."""
    if module is None or isinstance(module, nn.Identity):
        return 0.0
    if isinstance(module, SkippingDropPath):
        return 1.0 - module.survival_prob
    if type(module) is DropPath:
        if not module.scale_by_keep:
            raise ValueError('DropPath(scale_by_keep=False) is not supported: sdzoo.convert keeps timm\'s '
                             'inverted scaling (the branch is divided by its survival probability in training)')
        return float(module.drop_prob)
    raise ValueError(f'unexpected drop-path module {type(module).__name__}; expected timm.layers.DropPath')


class SkippingDropPath(StochasticDepth):
    """Stochastic depth whose row-mode coins are exactly timm's ``drop_path`` coins.

    timm draws ``x.new_empty((B, 1, ...)).bernoulli_(keep_prob)`` from the global RNG; the same call
    here consumes the generator identically (for any dtype and shape with B entries), so with the same
    seed a converted model drops the same samples as the timm model it came from, as long as the
    branch itself draws no random numbers (dropout, DropBlock).
    """

    def __init__(self, drop_prob: float = 0.0, mode: str = 'row', scaling: str = 'inverted',
                 sampler: Optional[SDSampler] = None):
        super().__init__(1.0 - float(drop_prob), mode=mode, scaling=scaling, sampler=sampler)

    def _row_keep(self, x: torch.Tensor, p: float) -> torch.Tensor:
        return torch.empty(x.shape[0], device=x.device).bernoulli_(p).bool()
