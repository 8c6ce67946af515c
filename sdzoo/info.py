"""Model summaries: parameters, FLOPs, droppable blocks and the survival schedule."""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict

__all__ = ['model_info']


def model_info(name: str, flops: bool = True, **kwargs) -> Dict[str, Any]:
    """Summary of a registered sd_* model (created without weights)."""
    import timm
    import sdzoo  # noqa: F401
    from .layers import sd_blocks, sd_modules, sd_settings
    from .models.flops import count_flops
    arch = name.split('.', 1)[0]
    if arch not in timm.list_models('sd_*'):
        if not timm.is_model(arch):
            raise ValueError(f'unknown model {name!r}; `sdzoo list` shows the registered sd_* models')
        raise ValueError(f'{name!r} is a timm model without stochastic depth: `sdzoo info` describes the sd_* '
                         'models (`sdzoo list` shows them)')
    model = timm.create_model(name, **kwargs)
    cfg = model.pretrained_cfg
    blocks = sd_blocks(model)
    probs = [g[0].survival_prob for g in blocks]
    units = sd_modules(model)
    info = {
        'model': name,
        'params': sum(p.numel() for p in model.parameters()),
        'input_size': list(cfg['input_size']),
        'num_classes': model.num_classes,
        'droppable_blocks': len(blocks),
        'sd_units': len(units),
        **sd_settings(model),  # drop_path_rate, sd_mode, sd_scaling
        'survival_probs': [round(p, 6) for p in probs],
        'expected_depth_fraction': sum(probs) / len(probs) if probs else 1.0,
        'pretrained_tags': [m.split('.', 1)[1] for m in timm.list_pretrained(name + '.*')],
    }
    if flops:
        info['flops'] = count_flops(model, cfg['input_size'])
    return info


def _fmt_num(n: float) -> str:
    for unit, div in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(n) >= div:
            return f'{n / div:.2f}{unit}'
    return str(n)


def _cmd_list(args: argparse.Namespace) -> int:
    import timm
    import sdzoo  # noqa: F401
    if not args.pretrained:
        for n in timm.list_models(args.filter or 'sd_*'):
            print(n)
        return 0
    from .hub.weights import find_weights_folder
    names = timm.list_pretrained(args.filter or 'sd_*')
    width = max([len(n) for n in names] + [4])
    for n in names:  # shipped copies load offline; the rest download on first use
        where = 'offline (shipped)' if find_weights_folder(n) is not None else 'download (Hugging Face Hub)'
        print(f'{n:<{width}}  {where}')
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    kwargs = {}
    if args.drop_path_rate is not None:
        kwargs['drop_path_rate'] = args.drop_path_rate
    info = model_info(args.model, flops=not args.no_flops, **kwargs)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    probs = info['survival_probs']
    print(f"model              {info['model']}")
    print(f"params             {info['params']:,} ({_fmt_num(info['params'])})")
    if 'flops' in info:
        print(f"FLOPs              {_fmt_num(info['flops'])} at input {tuple(info['input_size'])}")
    print(f"classes            {info['num_classes']}")
    print(f"droppable blocks   {info['droppable_blocks']} ({info['sd_units']} stochastic-depth units)")
    print(f"drop_path_rate     {info['drop_path_rate']} (p_L = {probs[-1]:.4f}), mode={info['sd_mode']}, "
          f"scaling={info['sd_scaling']}")
    print(f"expected depth     {info['expected_depth_fraction']:.4f} of the blocks run per training step")
    shown = ', '.join(f'{p:.3f}' for p in probs) if len(probs) <= 12 else \
        ', '.join(f'{p:.3f}' for p in probs[:6]) + ', …, ' + ', '.join(f'{p:.3f}' for p in probs[-3:])
    print(f"survival p_1..p_L  {shown}")
    print(f"pretrained tags    {', '.join(info['pretrained_tags']) or '-'}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('list', help='list the sd_* models registered with timm')
    p.add_argument('filter', nargs='?', default=None, help="wildcard filter (default: 'sd_*')")
    p.add_argument('--pretrained', action='store_true',
                   help='list <model>.<tag> pretrained weights instead, each marked offline (shipped) or download')
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser('info', help='params, FLOPs, droppable blocks and survival schedule of a model')
    p.add_argument('model', help='an sd_* model, e.g. sd_resnet110')
    p.add_argument('--drop-path-rate', type=float, default=None, help='1 - p_L (default: the model default)')
    p.add_argument('--no-flops', action='store_true', help='skip the FLOP count')
    p.add_argument('--json', action='store_true', help='print JSON')
    p.set_defaults(func=_cmd_info)
