"""timm ``vision_transformer`` blocks (ViT, DeiT and every model built on ``VisionTransformer``)."""
from __future__ import annotations

from typing import Optional

import torch
from timm.models.vision_transformer import Block, ResPostBlock

from ..models.vision_transformer import SDBlock
from ._adapter import BlockAdapter

__all__ = ['SDResPostBlock', 'ADAPTERS']


class SDResPostBlock(ResPostBlock):
    """timm's post-norm block (``x + norm(attn(x))``) whose dropped branches are not computed."""

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        x = self.drop_path1(x, lambda t: self.norm1(self.attn(t, attn_mask=attn_mask, is_causal=is_causal)))
        return self.drop_path2(x, lambda t: self.norm2(self.mlp(t)))


ADAPTERS = (
    # sdzoo's own SD ViT block is timm's pre-norm Block with the branches handed to the SD units
    BlockAdapter('vision_transformer', Block, SDBlock, ('drop_path1', 'drop_path2')),
    BlockAdapter('vision_transformer', ResPostBlock, SDResPostBlock, ('drop_path1', 'drop_path2')),
)
