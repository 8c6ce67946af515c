"""ImageNet ResNets (18/34/50/101/152) with compute-skipping stochastic depth.

Built on timm's own ``ResNet``, ``BasicBlock`` and ``Bottleneck``: same module names, same
parameters and buffers, so timm's ImageNet ``resnet*`` weights load with ``strict=True`` for
fine-tuning, and folded sdzoo weights load back into plain timm models for deployment.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..layers import StochasticDepth
from .branches import BranchEnd
from ._builder import SDModelMixin, build_sd_model, timm_cfg

__all__ = ['SDResNet', 'SDBasicBlock', 'SDBottleneck']


class SDBasicBlock(BasicBlock):
    """timm's BasicBlock whose residual branch is skipped when its stochastic-depth coin says so."""

    def __init__(self, *args, **kwargs):
        kwargs['drop_path'] = None
        super().__init__(*args, **kwargs)
        self.drop_path = StochasticDepth()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        return self.se(x) if self.se is not None else x

    def sd_branch_ends(self) -> List[BranchEnd]:
        """Where the residual branch ends: its survival factor is linear in this affine (sdzoo.models.branches)."""
        if self.se is not None:
            raise ValueError('a squeeze-excitation gate follows the last BatchNorm, so the survival factor '
                             'cannot be moved into the weights linearly')
        return [(self.drop_path, self.bn2, ('weight', 'bias'), 'bn2')]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        out = self.drop_path(x, self.branch, shortcut)
        if out is x and isinstance(self.act2, nn.ReLU):
            return out  # dropped identity block: x is a ReLU output, ReLU(x) == x; never write into x
        return self.act2(out.clone() if out is x else out)


class SDBottleneck(Bottleneck):
    """timm's Bottleneck whose residual branch is skipped when its stochastic-depth coin says so."""

    def __init__(self, *args, **kwargs):
        kwargs['drop_path'] = None
        super().__init__(*args, **kwargs)
        self.drop_path = StochasticDepth()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        return self.se(x) if self.se is not None else x

    def sd_branch_ends(self) -> List[BranchEnd]:
        """Where the residual branch ends: its survival factor is linear in this affine (sdzoo.models.branches)."""
        if self.se is not None:
            raise ValueError('a squeeze-excitation gate follows the last BatchNorm, so the survival factor '
                             'cannot be moved into the weights linearly')
        return [(self.drop_path, self.bn3, ('weight', 'bias'), 'bn3')]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        out = self.drop_path(x, self.branch, shortcut)
        if out is x and isinstance(self.act3, nn.ReLU):
            return out  # dropped identity block: x is a ReLU output, ReLU(x) == x; never write into x
        return self.act3(out.clone() if out is x else out)


class SDResNet(SDModelMixin, ResNet):
    """timm ResNet whose ``drop_path_rate`` drives the paper's stochastic depth over all blocks."""

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
        super().__init__(*args, drop_path_rate=0., **kwargs)
        self.init_stochastic_depth(drop_path_rate, sd_schedule, sd_mode, sd_scaling, sd_seed)
        self.remove_residual_blocks(removed_blocks)


def _create_resnet(variant: str, pretrained: bool = False, **kwargs) -> SDResNet:
    return build_sd_model(SDResNet, variant, pretrained, **kwargs)


def _timm_cfg(timm_name: str) -> Dict[str, Any]:
    """timm's own pretrained cfg (ImageNet weights trained without SD: a fine-tuning start)."""
    return timm_cfg(timm_name, paper_ids='arXiv:1603.09382,arXiv:1512.03385')


default_cfgs = generate_default_cfgs({
    f'sd_resnet{d}.tv_in1k': _timm_cfg(f'resnet{d}.tv_in1k') for d in (18, 34, 50, 101, 152)
})


@register_model
def sd_resnet18(pretrained: bool = False, **kwargs) -> SDResNet:
    """ResNet-18 with stochastic depth; ``.tv_in1k`` starts from timm's torchvision weights."""
    return _create_resnet('sd_resnet18', pretrained, **dict(dict(block=SDBasicBlock, layers=(2, 2, 2, 2)), **kwargs))


@register_model
def sd_resnet34(pretrained: bool = False, **kwargs) -> SDResNet:
    """ResNet-34 with stochastic depth."""
    return _create_resnet('sd_resnet34', pretrained, **dict(dict(block=SDBasicBlock, layers=(3, 4, 6, 3)), **kwargs))


@register_model
def sd_resnet50(pretrained: bool = False, **kwargs) -> SDResNet:
    """ResNet-50 with stochastic depth."""
    return _create_resnet('sd_resnet50', pretrained, **dict(dict(block=SDBottleneck, layers=(3, 4, 6, 3)), **kwargs))


@register_model
def sd_resnet101(pretrained: bool = False, **kwargs) -> SDResNet:
    """ResNet-101 with stochastic depth."""
    return _create_resnet('sd_resnet101', pretrained, **dict(dict(block=SDBottleneck, layers=(3, 4, 23, 3)), **kwargs))


@register_model
def sd_resnet152(pretrained: bool = False, **kwargs) -> SDResNet:
    """ResNet-152 with stochastic depth."""
    return _create_resnet('sd_resnet152', pretrained, **dict(dict(block=SDBottleneck, layers=(3, 8, 36, 3)), **kwargs))
