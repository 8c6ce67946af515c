"""timm ``convnext`` blocks (ConvNeXt and ConvNeXt-V2: ``ConvNeXtBlock``)."""
from __future__ import annotations

import torch
from timm.models.convnext import ConvNeXtBlock

from ._adapter import BlockAdapter

__all__ = ['SDConvNeXtBlock', 'ADAPTERS']


class SDConvNeXtBlock(ConvNeXtBlock):
    """timm's ConvNeXt block whose residual branch runs only where its stochastic-depth coin survives."""

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.mlp(self.norm(x))
        else:
            x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(x, self.branch, self.shortcut(x))


ADAPTERS = (BlockAdapter('convnext', ConvNeXtBlock, SDConvNeXtBlock, ('drop_path',)),)
