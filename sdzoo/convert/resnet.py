"""timm ``resnet`` blocks (``BasicBlock``, ``Bottleneck``: resnet*, resnext*, seresnet*, resnet*d, ...).

sdzoo's own ImageNet ResNet blocks are timm's with the branch handed to the SD unit; they serve as
the skipping classes. The branch holds BatchNorm: where only the surviving samples run it, its batch
statistics are those of the survivors (docs/convert.md has the measured effect).
"""
from __future__ import annotations

from timm.models.resnet import BasicBlock, Bottleneck

from ..models.resnet import SDBasicBlock, SDBottleneck
from ._adapter import BlockAdapter

__all__ = ['ADAPTERS']

ADAPTERS = (
    BlockAdapter('resnet', BasicBlock, SDBasicBlock, ('drop_path',)),
    BlockAdapter('resnet', Bottleneck, SDBottleneck, ('drop_path',)),
)
