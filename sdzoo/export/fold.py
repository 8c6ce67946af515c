"""Fold the test-time survival scaling of stochastic depth into the weights.

At test time a paper-scaled network computes ``x + p_l * f_l(x)`` for every residual branch. The
factor is linear in the branch's last affine layer, so it can live in that layer's weights:
BatchNorm ``weight``/``bias`` (ResNets), the output ``Linear`` or the LayerScale ``gamma`` (ViTs).
A folded model has no survival multiplies left: its graph, and its state dict, are those of the
plain architecture, so folded ResNet / ViT weights load into vanilla timm ``resnet*`` / ``vit_*``
models with ``strict=True``.

``fold_batchnorm`` goes one step further for deployment and fuses each eval-mode BatchNorm into the
convolution feeding it (``torch.nn.utils.fusion``), so exported graphs carry no BatchNormalization.
"""
from __future__ import annotations

import copy
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..layers import sd_modules
from ..models.branches import scale_branches

__all__ = ['fold', 'is_folded', 'fold_batchnorm', 'timm_equivalent', 'to_timm']


def is_folded(model: nn.Module) -> bool:
    """True when the model's SD units have their survival factors in the weights."""
    units = sd_modules(model)
    return bool(units) and all(u.folded for u in units)


@torch.no_grad()
def fold(model: nn.Module, inplace: bool = False) -> nn.Module:
    """An eval-mode, full-depth copy of ``model`` with each ``p_l`` folded into its branch.

    Returns a deep copy and leaves ``model`` untouched unless ``inplace=True``. Every
    :class:`StochasticDepth` unit is marked ``folded`` (its ``eval_scale`` becomes 1), so the folded
    model computes exactly what the unfolded eval model computes, without the multiplies. Units with
    ``scaling='inverted'`` have nothing to fold and are only marked. Raises ``ValueError`` for a
    model in train mode (there is no single network to fold while depths are being sampled), a
    model without SD units, or one that is already (partly) folded.
    """
    units = sd_modules(model)
    if not units:
        raise ValueError(f'{type(model).__name__} has no StochasticDepth units: nothing to fold')
    if model.training:
        raise ValueError('fold() needs an eval-mode model (call model.eval() first): in train mode depths '
                         'are sampled and BatchNorm uses batch statistics, so there is no fixed network to fold')
    folded = [i for i, u in enumerate(units) if u.folded]
    if folded:
        raise ValueError(f'model is already folded ({len(folded)} of {len(units)} StochasticDepth units carry '
                         'their survival factor in the weights); folding again would scale them twice')
    if not inplace:
        model = copy.deepcopy(model)
        units = sd_modules(model)

    scale_branches(model, {unit: unit.eval_scale for unit in units})
    for unit in units:
        unit.folded = True
    return model


def _conv_bn_pairs(model: nn.Module) -> Iterator[Tuple[nn.Module, str, str]]:
    """(parent, conv attribute, bn attribute) where a BatchNorm2d directly consumes a Conv2d.

    Recognised by the layouts sdzoo's (and timm's ResNet) modules use: siblings ``convN``/``bnN``,
    and ``Conv2d`` followed by ``BatchNorm2d`` in an ``nn.Sequential`` (timm's downsample).
    """
    for parent in model.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            keys = list(children)
            for a, b in zip(keys, keys[1:]):
                if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d):
                    yield parent, a, b
            continue
        for bn_name, bn in children.items():
            if isinstance(bn, nn.BatchNorm2d) and bn_name.startswith('bn'):
                conv = children.get('conv' + bn_name[2:])
                if isinstance(conv, nn.Conv2d) and conv.out_channels == bn.num_features:
                    yield parent, 'conv' + bn_name[2:], bn_name


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fuse each eval-mode ``Conv2d -> BatchNorm2d`` pair in place (the BN becomes ``Identity``).

    For deployment only: the result no longer has the timm state-dict layout.
    """
    if model.training:
        raise ValueError('fold_batchnorm() needs an eval-mode model: BatchNorm must use its running statistics')
    for parent, conv_name, bn_name in list(_conv_bn_pairs(model)):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if bn.running_mean is None:
            continue  # batch statistics at test time: nothing static to fuse
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())
    return model


_TIMM_PLAIN = ('sd_resnet18', 'sd_resnet34', 'sd_resnet50', 'sd_resnet101', 'sd_resnet152',
               'sd_vit_tiny_patch16_224', 'sd_vit_small_patch16_224', 'sd_vit_base_patch16_224')


def timm_equivalent(model_name: str) -> Optional[str]:
    """The vanilla timm architecture a folded sdzoo model's weights load into (None if there is none)."""
    arch = model_name.split('.', 1)[0]
    return arch[3:] if arch in _TIMM_PLAIN else None


def to_timm(model: nn.Module, model_name: Optional[str] = None, **kwargs) -> nn.Module:
    """A vanilla timm model (no sdzoo needed to run it) carrying a folded model's weights.

    ``kwargs`` go to ``timm.create_model`` (e.g. ``num_classes``; taken from ``model`` by default).
    """
    import timm
    if not is_folded(model):
        raise ValueError('to_timm() needs a folded model (sdzoo.fold(model)): plain timm blocks do not '
                         'apply the survival factors')
    name = model_name or (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    plain = timm_equivalent(name or '')
    if plain is None:
        raise ValueError(f'{name!r} has no vanilla timm counterpart; timm_equivalent() knows {_TIMM_PLAIN}')
    kwargs.setdefault('num_classes', getattr(model, 'num_classes', 1000))
    target = timm.create_model(plain, pretrained=False, **kwargs)
    target.load_state_dict(model.state_dict(), strict=True)
    return target.eval()
