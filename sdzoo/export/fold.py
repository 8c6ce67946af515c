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

from ..layers import StochasticDepth, sd_modules

__all__ = ['fold', 'is_folded', 'fold_batchnorm', 'timm_equivalent', 'to_timm']


def _branch_targets(model: nn.Module) -> Iterator[Tuple[StochasticDepth, nn.Module, Tuple[str, ...], str]]:
    """(unit, module holding the branch's last affine, parameter names, where) for every SD unit.

    Where each family's residual branch ends (see the block classes in ``sdzoo.models``):
    CIFAR / basic blocks in ``bn2``, bottlenecks in ``bn3``, ViT blocks in ``ls1``/``ls2`` when they
    are LayerScales, else in ``attn.proj`` / ``mlp.fc2``.
    """
    from timm.layers import LayerScale
    from ..models import CifarBasicBlock, SDBasicBlock, SDBlock, SDBottleneck

    for name, block in model.named_modules():
        if isinstance(block, (CifarBasicBlock, SDBasicBlock, SDBottleneck)):
            if getattr(block, 'se', None) is not None:
                raise ValueError(f'{name}: a squeeze-excitation gate follows the last BatchNorm, so the '
                                 'survival factor cannot be folded linearly')
            bn_name = 'bn3' if isinstance(block, SDBottleneck) else 'bn2'
            yield block.drop_path, getattr(block, bn_name), ('weight', 'bias'), f'{name}.{bn_name}'
        elif isinstance(block, SDBlock):
            for unit, ls, ls_name, out, out_name in (
                    (block.drop_path1, block.ls1, 'ls1', block.attn.proj, 'attn.proj'),
                    (block.drop_path2, block.ls2, 'ls2', block.mlp.fc2, 'mlp.fc2')):
                if isinstance(ls, LayerScale):
                    yield unit, ls, ('gamma',), f'{name}.{ls_name}'
                else:
                    yield unit, out, ('weight', 'bias'), f'{name}.{out_name}'


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

    targets = {id(unit): (module, names, where) for unit, module, names, where in _branch_targets(model)}
    for unit in units:
        scale = unit.eval_scale
        if scale != 1.0:
            if id(unit) not in targets:
                raise ValueError(f'do not know where the residual branch of {unit!r} ends in '
                                 f'{type(model).__name__}: cannot fold its survival factor {scale}')
            module, names, where = targets[id(unit)]
            params = [getattr(module, n, None) for n in names]
            if params[0] is None:
                raise ValueError(f'{where} has no affine {names[0]} to fold the survival factor into')
            for p in params:
                if p is not None:
                    p.mul_(scale)
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
