"""What the converter needs to know about one timm block type."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Type

import torch.nn as nn

__all__ = ['BlockAdapter']


@dataclass(frozen=True)
class BlockAdapter:
    """timm block class -> its compute-skipping subclass.

    ``skipping`` must be a subclass of ``timm_cls`` that adds no parameters or buffers and whose
    forward hands each residual branch to the :class:`~sdzoo.layers.StochasticDepth` unit that sits
    in the block's ``slots`` (the attribute names timm gives its ``DropPath`` modules), so that
    swapping an instance's ``__class__`` keeps its state dict and module names.
    """
    family: str
    timm_cls: Type[nn.Module]
    skipping: Type[nn.Module]
    slots: Tuple[str, ...]
