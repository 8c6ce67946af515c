"""The network a run trains when it names one of timm's own models instead of an ``sd_*`` model.

By default (``convert=None``) a timm model with a non-zero ``drop_path_rate`` whose family
``sdzoo.convert`` supports and trains faster converted is converted: same weights, same per-block
rates, timm's per-sample semantics, but dropped branches are not computed. ResNets are not converted
by default: measured on a 2-core Zen 4 (``benchmarks/results/train_speed_timm*.md``), resnet50 in row
mode was 1.06x at 1 thread and 0.95x at 2 (the gather/scatter of the surviving samples costs what the
skipped convolutions save), and row mode also changes BatchNorm's batch statistics (docs/convert.md).
``--convert`` insists (an unsupported family or a zero rate is an error; ``--sd-mode batch`` is the
faster choice for ResNets), ``--no-convert`` trains timm's model as it is.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

import torch.nn as nn
from timm.layers import DropPath

from ..convert import block_families, convert
from ..layers import SDSampler

__all__ = ['is_sd_model', 'create_timm_train_model', 'create_with_weights']

# families sdzoo.convert supports but `sdzoo train` does not convert unless asked: measured no faster
NOT_BY_DEFAULT = {'resnet'}


def is_sd_model(name: str) -> bool:
    """sdzoo's own models are all registered as ``sd_*``."""
    return name.split('.', 1)[0].startswith('sd_')


def _max_drop_prob(model: nn.Module) -> float:
    return max((float(m.drop_prob) for m in model.modules() if isinstance(m, DropPath)), default=0.0)


def create_with_weights(cfg: Any, kwargs: Dict[str, Any]) -> nn.Module:
    """``timm.create_model`` with the run's starting weights (shipped/Hub, or ``--pretrained-file``) and, for a
    fine-tune on new classes, a fresh head: the same for sdzoo's models and timm's."""
    import timm
    if cfg.pretrained_file:
        if not Path(cfg.pretrained_file).is_file():
            raise FileNotFoundError(f'--pretrained-file {cfg.pretrained_file} does not exist')
        kwargs = dict(kwargs, pretrained_cfg_overlay=dict(file=str(cfg.pretrained_file)))
    pretrained = cfg.pretrained or bool(cfg.pretrained_file)
    head_init = getattr(cfg, 'head_init', 'fresh')
    if cfg.reset_head and cfg.pretrained and not cfg.pretrained_file and head_init in ('auto', 'matched', 'partial', 'predicted') \
            and 'num_classes' in kwargs:
        # build with the pretrained head first: its rows for class names the new data set shares are kept
        want = kwargs.pop('num_classes')
        model = timm.create_model(cfg.model, pretrained=True, **kwargs)
        old = model.get_classifier()
        names = list(model.pretrained_cfg.get('label_names') or [])
        old_head = None
        if isinstance(old, nn.Linear) and len(names) == old.out_features:
            old_head = (names, old.weight.detach().clone(), old.bias.detach().clone() if old.bias is not None else None)
        model.reset_classifier(want)
        model.sd_old_head = old_head  # read (and removed) by the trainer's head initialisation
        return model
    model = timm.create_model(cfg.model, pretrained=pretrained, **kwargs)
    if cfg.reset_head:
        model.reset_classifier(model.num_classes)
    return model


def _convert_by_default(model: nn.Module, cfg: Any) -> bool:
    """The default rule (module doc); says on stderr why when it trains timm's model as it is."""
    try:
        slower = sorted(set(block_families(model)) & NOT_BY_DEFAULT)
    except ValueError as e:  # a family sdzoo.convert does not support
        if cfg.sd_mode or cfg.sd_scaling:
            raise
        reason = str(e)
    else:
        if not slower or cfg.sd_mode or cfg.sd_scaling:
            return True
        reason = (f'{slower[0]} blocks are not converted by default, measured no faster; --convert (with '
                  '--sd-mode batch for speed) to skip them')
    print(f"note: training timm's {cfg.model} as it is (dropped branches are computed): {reason}", file=sys.stderr)
    return False


def create_timm_train_model(cfg: Any) -> nn.Module:
    """Build ``cfg.model`` through timm and convert it as ``cfg.convert`` says (see module doc)."""
    if cfg.sd_scaling not in (None, 'inverted'):
        raise ValueError(f"--sd-scaling {cfg.sd_scaling}: timm models train with timm's inverted scaling, so that "
                         'the trained weights are plain timm weights (the paper scaling would change the eval network)')
    kwargs: Dict[str, Any] = {k: getattr(cfg, k) for k in ('drop_path_rate', 'num_classes', 'in_chans')
                              if getattr(cfg, k) is not None}
    model = create_with_weights(cfg, kwargs)
    rate = _max_drop_prob(model)
    want = cfg.convert
    if want and rate == 0:
        raise ValueError(f'--convert: {cfg.model} has drop_path_rate 0 here, so no branch is ever dropped; '
                         'pass --drop-path-rate')
    if want is None and rate > 0:
        want = _convert_by_default(model, cfg)
    if want:
        return convert(model, mode=cfg.sd_mode or 'row', scaling=cfg.sd_scaling or 'inverted', seed=cfg.seed)
    if cfg.sd_mode or cfg.sd_scaling:
        raise ValueError(f'--sd-mode / --sd-scaling apply to sd_* models and converted timm models; {cfg.model} '
                         'is not converted' + (' (--no-convert)' if cfg.convert is False else ' (drop_path_rate 0)'))
    model.sd_sampler = SDSampler(cfg.seed)  # the trainer checkpoints every model's coin source
    model.sd_drop_path_rate = float(f'{rate:.6g}')
    return model
