"""The stochastic-depth paper's CIFAR ResNets (6n+2 layers: 20, 32, 44, 56, 110, 1202).

Huang, Sun, Liu, Sedra, Weinberger, "Deep Networks with Stochastic Depth", ECCV 2016
(arXiv:1603.09382), following the authors' Torch code (ResidualDrop.lua / main.lua):
3 stages of 16/32/64 channels with n basic blocks each, parameter-free "option A" shortcuts
(stride-2 average pooling plus zero channels), every block droppable including the transitions,
and block l of L surviving with p_l = 1 - l/L * (1 - p_L).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.layers import create_classifier, get_device_dtype
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..layers import AvgPoolPadShortcut, StochasticDepth
from .branches import BranchEnd
from ._builder import SDModelMixin, build_sd_model, sd_cfg

__all__ = ['CifarResNet', 'CifarBasicBlock']


class CifarBasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN residual branch, ReLU after the add (as in ResidualDrop.lua)."""

    residual_shortcut = 'shortcut'  # sdzoo.prune_depth: a removed block becomes this module (Identity: no shape change)

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(out_chs, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False, **dd)
        self.bn2 = norm_layer(out_chs, **dd)
        self.shortcut = (AvgPoolPadShortcut(in_chs, out_chs, stride)
                         if stride > 1 or in_chs != out_chs else nn.Identity())
        self.drop_path = StochasticDepth()
        self.act2 = act_layer(inplace=True)

    def zero_init_last(self) -> None:
        """Start the branch at zero (timm's ``zero_init_last``): the block begins as its shortcut."""
        nn.init.zeros_(self.bn2.weight)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(x))

    def sd_branch_ends(self) -> List[BranchEnd]:
        """Where the residual branch ends: its survival factor is linear in this affine (sdzoo.models.branches)."""
        return [(self.drop_path, self.bn2, ('weight', 'bias'), 'bn2')]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        out = self.drop_path(x, self.branch, shortcut)
        if out is shortcut:
            # dropped: x is post-ReLU (>= 0) and the option-A shortcut keeps it so, ReLU is a no-op
            return out
        return self.act2(out)


class CifarResNet(SDModelMixin, nn.Module):
    """CIFAR ResNet with compute-skipping stochastic depth, driven by timm's ``drop_path_rate``."""

    def __init__(
            self,
            depth: int = 110,
            num_classes: int = 10,
            in_chans: int = 3,
            widths: Sequence[int] = (16, 32, 64),
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.5,
            sd_schedule: Union[str, Sequence[float]] = 'linear',
            sd_mode: str = 'batch',
            sd_scaling: str = 'paper',
            sd_seed: int = 0,
            removed_blocks: Sequence[str] = (),
            zero_init_last: bool = False,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)  # timm's create_model(device=, dtype=)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f'CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 1202), got {depth}')
        n = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(widths[0], **dd)
        self.act1 = act_layer(inplace=True)

        self.feature_info = [dict(num_chs=widths[0], reduction=1, module='act1')]
        in_chs = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [CifarBasicBlock(in_chs if j == 0 else w, w, stride if j == 0 else 1, act_layer, norm_layer, **dd)
                      for j in range(n)]
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=w, reduction=2 ** i, module=f'layer{i + 1}'))
            in_chs = w
        self.num_features = in_chs
        self.global_pool, self.fc = create_classifier(in_chs, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = in_chs * self.global_pool.feat_mult()

        self.init_stochastic_depth(drop_path_rate, sd_schedule, sd_mode, sd_scaling, sd_seed)
        self._init_weights(zero_init_last)
        self.remove_residual_blocks(removed_blocks)

    def _init_weights(self, zero_init_last: bool = False) -> None:
        # the paper's init (He normal, BN weight 1); zero_init_last is timm's, off for the paper's recipe
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, CifarBasicBlock):
                    m.zero_init_last()

    @property
    def stages(self) -> List[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|bn1', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New head on the parameters' device and dtype; ``global_pool=None`` keeps the pooling (as timm)."""
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, **get_device_dtype(self))
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's feature API: features of the stem (index 0) and the 3 stages (1-3)."""
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        for i, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                from timm.models import checkpoint_seq
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last wanted feature (and the head), as timm's ResNet does."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        prune_end = max_index < len(self.feature_info) - 1
        for i in range(max_index + 1, len(self.feature_info)):
            setattr(self, f'layer{i}', nn.Sequential())  # empty: forward and checkpoint_seq pass through
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                from timm.models import checkpoint_seq
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    # 4 feature levels (stem, 3 stages), not timm's default 5
    return build_sd_model(CifarResNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs)


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
                         'Bag', 'Ankle boot')


def _cfg(**kwargs) -> Dict[str, Any]:
    return sd_cfg(**dict(dict(
        num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, crop_mode='center',
        interpolation='bilinear', mean=CIFAR10_MEAN, std=CIFAR10_STD, first_conv='conv1',
        classifier='fc', paper_ids='arXiv:1603.09382', paper_name='Deep Networks with Stochastic Depth',
        label_names=CIFAR10_CLASSES), **kwargs))


default_cfgs = generate_default_cfgs({
    'sd_resnet20.sd_cifar10': _cfg(hf_hub_id='sdzoo/'),
    # fine-tuned from sd_cifar10 on Fashion-MNIST, 1-channel input through timm's in_chans adaptation
    'sd_resnet20.sd_cifar10_ft_fashion_mnist': _cfg(
        hf_hub_id='sdzoo/', input_size=(1, 32, 32), mean=CIFAR10_MEAN[:1], std=CIFAR10_STD[:1],
        label_names=FASHION_MNIST_CLASSES),
    'sd_resnet32': _cfg(),
    'sd_resnet44': _cfg(),
    'sd_resnet56.sd_cifar10': _cfg(hf_hub_id='sdzoo/'),
    'sd_resnet110.sd_cifar10': _cfg(hf_hub_id='sdzoo/'),
    'sd_resnet1202': _cfg(),
})


@register_model
def sd_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 (n=3) for CIFAR with stochastic depth."""
    return _create_cifar_resnet('sd_resnet20', pretrained, **dict(dict(depth=20), **kwargs))


@register_model
def sd_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 (n=5) for CIFAR with stochastic depth."""
    return _create_cifar_resnet('sd_resnet32', pretrained, **dict(dict(depth=32), **kwargs))


@register_model
def sd_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 (n=7) for CIFAR with stochastic depth."""
    return _create_cifar_resnet('sd_resnet44', pretrained, **dict(dict(depth=44), **kwargs))


@register_model
def sd_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 (n=9) for CIFAR with stochastic depth."""
    return _create_cifar_resnet('sd_resnet56', pretrained, **dict(dict(depth=56), **kwargs))


@register_model
def sd_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 (n=18), the stochastic-depth paper's main CIFAR network (~1.7M params)."""
    return _create_cifar_resnet('sd_resnet110', pretrained, **dict(dict(depth=110), **kwargs))


@register_model
def sd_resnet1202(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-1202 (n=200): the paper's 1202-layer network (~19.4M params).

    Unlike the paper's init, each residual branch starts at zero (``zero_init_last``, as timm's ResNets):
    with the paper's init 600 branches overflow fp32 in eval mode before any training (BN running stats at
    their defaults). ``zero_init_last=False`` gives the paper's init (docs/timm_conformance.md).
    """
    return _create_cifar_resnet('sd_resnet1202', pretrained, **dict(dict(depth=1202, zero_init_last=True), **kwargs))
