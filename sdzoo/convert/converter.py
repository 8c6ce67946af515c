"""``convert(model)``: compute-skipping stochastic depth for a timm model instance.

timm's ``DropPath`` computes every residual branch and multiplies dropped samples by zero. The
conversion swaps each supported block's class for a subclass whose forward hands the branch to a
:class:`~sdzoo.layers.SkippingDropPath` (no parameters, no buffers), which runs it only on the
surviving samples. State dict, module names and per-block drop probabilities stay timm's.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Type

import torch.nn as nn
from timm.layers import DropPath

from ..layers import (SD_MODES, SD_SCALINGS, SDSampler, SkippingDropPath, StochasticDepth, drop_prob_of,
                      track_forwards)
from .convnext import ADAPTERS as _CONVNEXT
from .resnet import ADAPTERS as _RESNET
from .vision_transformer import ADAPTERS as _VIT
from ._adapter import BlockAdapter

__all__ = ['convert', 'supported_families', 'block_families', 'ADAPTERS']

ADAPTERS: Tuple[BlockAdapter, ...] = _VIT + _CONVNEXT + _RESNET
_BY_TIMM: Dict[Type[nn.Module], BlockAdapter] = {a.timm_cls: a for a in ADAPTERS}
_BY_SKIPPING: Dict[Type[nn.Module], BlockAdapter] = {a.skipping: a for a in ADAPTERS}


def supported_families() -> str:
    """One line naming the timm families and block classes :func:`convert` handles."""
    fams: Dict[str, List[str]] = {}
    for a in ADAPTERS:
        fams.setdefault(a.family, []).append(a.timm_cls.__name__)
    return '; '.join(f"timm.models.{f} ({', '.join(names)})" for f, names in fams.items())


def _owner(model: nn.Module, name: str) -> Tuple[str, str]:
    """(class, module name) of the timm module that holds the module at ``name`` (for errors)."""
    parts = name.split('.')
    for i in range(len(parts) - 1, 0, -1):
        m = model.get_submodule('.'.join(parts[:i]))
        if not type(m).__module__.startswith('torch.nn'):
            return f'{type(m).__module__}.{type(m).__name__}', '.'.join(parts[:i])
    return f'{type(model).__module__}.{type(model).__name__}', ''


def _plan(model: nn.Module) -> List[Tuple[nn.Module, BlockAdapter]]:
    """The blocks to convert; raises (before anything is changed) on anything unsupported."""
    kind = f'{type(model).__module__}.{type(model).__name__}'
    if any(isinstance(m, StochasticDepth) and not isinstance(m, SkippingDropPath) for m in model.modules()):
        raise ValueError(f'sdzoo.convert: {kind} is an sdzoo model; its blocks already skip dropped work')
    blocks = []
    covered = set()
    unsupported: Dict[str, List[str]] = {}
    for name, m in model.named_modules():
        adapter = _BY_TIMM.get(type(m)) or _BY_SKIPPING.get(type(m))
        if adapter is not None:
            blocks.append((m, adapter))
            covered.update(id(getattr(m, s, None)) for s in adapter.slots)
        elif isinstance(m, tuple(_BY_TIMM)):  # a subclass may have its own forward
            unsupported.setdefault(f'{type(m).__module__}.{type(m).__name__}', []).append(name)
    for name, m in model.named_modules():
        if isinstance(m, DropPath) and id(m) not in covered:
            cls, where = _owner(model, name)
            unsupported.setdefault(cls, []).append(where)
    if unsupported:
        listed = ', '.join(f"{cls} ({len(set(w))} blocks, first '{w[0]}')" for cls, w in unsupported.items())
        raise ValueError(f'sdzoo.convert: {kind} has drop-path blocks it cannot convert: {listed}. '
                         f'Supported: {supported_families()}')
    if not blocks:
        raise ValueError(f'sdzoo.convert: {kind} has no blocks of a supported family. '
                         f'Supported: {supported_families()}')
    for m, adapter in blocks:
        for slot in adapter.slots:
            drop_prob_of(getattr(m, slot, None))  # DropPath(scale_by_keep=False) etc.: fail before changing
    return blocks


def block_families(model: nn.Module) -> List[str]:
    """The timm families (``resnet``, ``convnext``, ``vision_transformer``) of the blocks :func:`convert` would
    convert; raises as :func:`convert` does on anything unsupported, and changes nothing."""
    return sorted({adapter.family for _, adapter in _plan(model)})


def convert(
        model: nn.Module,
        mode: str = 'row',
        scaling: str = 'inverted',
        seed: Optional[int] = None,
) -> nn.Module:
    """Give a timm model instance compute-skipping stochastic depth, in place; returns ``model``.

    ``mode='row'`` with ``scaling='inverted'`` (the default) is timm's own semantics: a coin per
    sample from the global RNG, drawn exactly as ``timm.layers.drop_path`` draws it, survivors
    divided by their survival probability; only the branch is run on the survivors alone. ``mode=
    'batch'`` is the paper's one coin per block per mini-batch (from ``model.sd_sampler``, seeded
    by ``seed``); ``scaling='paper'`` trains unscaled and multiplies branches by p_l at test time
    (then eval outputs differ from the unconverted model's). Per-block drop probabilities are the ones
    timm's ``drop_path_rate`` ramp gave the model. Converting a converted model again only changes
    mode / scaling / seed. In eval mode and under export every block is timm's static residual add.
    """
    if mode not in SD_MODES:
        raise ValueError(f'unknown stochastic-depth mode {mode!r}; expected one of {SD_MODES}')
    if scaling not in SD_SCALINGS:
        raise ValueError(f'unknown stochastic-depth scaling {scaling!r}; expected one of {SD_SCALINGS}')
    blocks = _plan(model)
    sampler = getattr(model, 'sd_sampler', None)
    if not isinstance(sampler, SDSampler):
        sampler = SDSampler(0 if seed is None else seed)
    elif seed is not None:
        sampler.manual_seed(seed)
    rates = []
    for block, adapter in blocks:
        for i, slot in enumerate(adapter.slots):
            p = drop_prob_of(getattr(block, slot, None))
            unit = SkippingDropPath(p, mode=mode, scaling=scaling, sampler=sampler)
            unit.leads_block = i == 0  # a ViT block's MLP unit keys its checkpoint coins on the block's input
            setattr(block, slot, unit)
            rates.append(p)
        block.__class__ = adapter.skipping
    model.sd_sampler = sampler
    # timm's ramp ends at drop_path_rate (stored via float32 linspace: 0.4 -> 0.40000000596)
    model.sd_drop_path_rate = float(f'{max(rates):.6g}')
    track_forwards(model)  # batch mode under set_grad_checkpointing: recomputation replays the forward's coins
    return model
