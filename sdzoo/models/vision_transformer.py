"""Vision Transformers with compute-skipping stochastic depth on both residual branches.

Built on timm's ``VisionTransformer`` and ``Block`` so that state dicts match timm's ``vit_*``
models. Every transformer block l is one residual block of the paper's schedule: its attention and
MLP branches each survive with p_l, with independent coins.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from timm.layers import LayerScale
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn

from ..layers import StochasticDepth
from .branches import BranchEnd
from ._builder import SDModelMixin, build_sd_model, sd_cfg, timm_cfg
from .resnet_cifar import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD

__all__ = ['SDVisionTransformer', 'SDBlock']


class SDBlock(Block):
    """timm's pre-norm ViT block whose attention / MLP branches are skipped when dropped."""

    def __init__(self, *args, **kwargs):
        kwargs['drop_path'] = 0.
        super().__init__(*args, **kwargs)
        self.drop_path1 = StochasticDepth()
        self.drop_path2 = StochasticDepth()

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        x = self.drop_path1(
            x, lambda t: self.ls1(self.attn(self.norm1(t), attn_mask=attn_mask, is_causal=is_causal)))
        return self.drop_path2(x, lambda t: self.ls2(self.mlp(self.norm2(t))))

    def sd_branch_ends(self) -> List[BranchEnd]:
        """Where each residual branch ends: in the LayerScale if there is one, else in the output projection."""
        return [(unit, ls, ('gamma',), ls_name) if isinstance(ls, LayerScale) else (unit, out, ('weight', 'bias'), out_name)
                for unit, ls, ls_name, out, out_name in (
                    (self.drop_path1, self.ls1, 'ls1', self.attn.proj, 'attn.proj'),
                    (self.drop_path2, self.ls2, 'ls2', self.mlp.fc2, 'mlp.fc2'))]


class SDVisionTransformer(SDModelMixin, VisionTransformer):
    """timm VisionTransformer whose ``drop_path_rate`` drives the paper's stochastic depth."""

    recipe_family = 'vit'
    is_convnet = False

    def __init__(
            self,
            *args,
            drop_path_rate: float = 0.5,
            sd_schedule: Union[str, Sequence[float]] = 'linear',
            sd_mode: str = 'batch',
            sd_scaling: str = 'paper',
            sd_seed: int = 0,
            removed_blocks: Sequence[str] = (),
            **kwargs,
    ):
        kwargs.setdefault('block_fn', SDBlock)
        super().__init__(*args, drop_path_rate=0., **kwargs)
        self.init_stochastic_depth(drop_path_rate, sd_schedule, sd_mode, sd_scaling, sd_seed)
        self.remove_residual_blocks(removed_blocks)

    def sd_block_groups(self) -> List[List[StochasticDepth]]:
        # a block sdzoo.prune_depth removed is its parameter-free shortcut: it has no units
        return [[blk.drop_path1, blk.drop_path2] for blk in self.blocks if hasattr(blk, 'drop_path1')]


def _create_vit(variant: str, pretrained: bool = False, **kwargs) -> SDVisionTransformer:
    out_indices = kwargs.pop('out_indices', 3)
    return build_sd_model(
        SDVisionTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _timm_cfg(timm_name: str) -> Dict[str, Any]:
    """timm's own pretrained cfg (weights trained by timm: a fine-tuning start)."""
    return timm_cfg(timm_name, paper_ids='arXiv:1603.09382,arXiv:2010.11929')


def _cifar_cfg(**kwargs) -> Dict[str, Any]:
    return sd_cfg(
        num_classes=10, input_size=(3, 32, 32), crop_pct=1.0, crop_mode='center', interpolation='bicubic',
        mean=CIFAR10_MEAN, std=CIFAR10_STD, first_conv='patch_embed.proj', classifier='head',
        paper_ids='arXiv:1603.09382,arXiv:2104.05704', label_names=CIFAR10_CLASSES, **kwargs)


default_cfgs = generate_default_cfgs({
    'sd_vit_tiny_patch16_224.augreg_in21k_ft_in1k': _timm_cfg('vit_tiny_patch16_224.augreg_in21k_ft_in1k'),
    'sd_vit_small_patch16_224.augreg_in21k_ft_in1k': _timm_cfg('vit_small_patch16_224.augreg_in21k_ft_in1k'),
    'sd_vit_base_patch16_224.augreg2_in21k_ft_in1k': _timm_cfg('vit_base_patch16_224.augreg2_in21k_ft_in1k'),
    'sd_vit_lite_patch4_32.sd_cifar10': _cifar_cfg(hf_hub_id='sdzoo/'),
})


@register_model
def sd_vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> SDVisionTransformer:
    """ViT-Ti/16 with stochastic depth (state-dict compatible with timm's vit_tiny_patch16_224)."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_vit('sd_vit_tiny_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def sd_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> SDVisionTransformer:
    """ViT-S/16 with stochastic depth (state-dict compatible with timm's vit_small_patch16_224)."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_vit('sd_vit_small_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def sd_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> SDVisionTransformer:
    """ViT-B/16 with stochastic depth (state-dict compatible with timm's vit_base_patch16_224)."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_vit('sd_vit_base_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def sd_vit_lite_patch4_32(pretrained: bool = False, **kwargs) -> SDVisionTransformer:
    """CIFAR-size ViT (ViT-Lite-7/4 of Hassani et al. 2021: 7 blocks, dim 256, 4 heads, MLP x2).

    Small enough to train from scratch on CPUs; 32x32 input, 4x4 patches, class token.
    """
    args = dict(img_size=32, patch_size=4, embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.,
                num_classes=10)
    return _create_vit('sd_vit_lite_patch4_32', pretrained, **dict(args, **kwargs))
