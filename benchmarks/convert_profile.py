"""Why a converted timm ResNet trains (not) faster: the FLOP-weighted ideal and a torch profile of one step.

The "ideal" of ``train_speed.py --timm-models`` is 1 / mean survival, which assumes every block costs the
same and nothing outside the blocks costs anything. This script weighs each residual branch by its forward
FLOPs (``torch.utils.flop_counter``) and profiles one training step of timm's model and of its
``sdzoo.convert`` copy, operator by operator, so the saving in the convolutions can be set against the cost
of gathering and scattering the surviving samples.

    python benchmarks/convert_profile.py --model resnet50 --threads 1
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import timm
from torch.utils.flop_counter import FlopCounterMode

import sdzoo
from sdzoo.convert import block_families

from machine import busy_note, cpu_busy, describe  # benchmarks/machine.py


def _branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ResNet block's residual branch (BasicBlock: conv1-2, Bottleneck: conv1-3), without the shortcut."""
    for i in (1, 2, 3):
        if not hasattr(block, f'conv{i}'):
            break
        x = getattr(block, f'bn{i}')(getattr(block, f'conv{i}')(x))
        if hasattr(block, f'act{i}') and i < (3 if hasattr(block, 'conv3') else 2):
            x = getattr(block, f'act{i}')(x)
    return x


def flop_ideal(model: nn.Module, size: int) -> Tuple[float, float, float]:
    """(branch share of forward FLOPs, expected share skipped, ideal speed-up 1 / (1 - skipped))."""
    x = torch.randn(1, 3, size, size)
    inputs: Dict[nn.Module, torch.Tensor] = {}
    blocks = [m for m in model.modules() if hasattr(m, 'drop_path') and hasattr(m, 'conv1')]
    hooks = [b.register_forward_pre_hook(lambda mod, inp: inputs.__setitem__(mod, inp[0])) for b in blocks]
    with torch.no_grad(), FlopCounterMode(display=False) as total:
        model.eval()(x)
    for h in hooks:
        h.remove()
    branch = skipped = 0.0
    for b in blocks:
        with torch.no_grad(), FlopCounterMode(display=False) as f:
            _branch(b, inputs[b])
        p = float(getattr(b.drop_path, 'drop_prob', 0.0) or 0.0)
        branch += f.get_total_flops()
        skipped += f.get_total_flops() * p
    t = total.get_total_flops()
    return branch / t, skipped / t, t / (t - skipped)


def profile_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, top: int) -> List[Tuple[str, float]]:
    """Self CPU seconds per operator of one bf16 training step (after one untimed step)."""
    from torch.profiler import ProfilerActivity, profile

    def step():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()

    model.train()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.self_cpu_time_total / 1e6) for e in rows[:top]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='resnet50')
    p.add_argument('--drop-path-rate', type=float, default=0.4)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--top', type=int, default=12)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, drop_path_rate=args.drop_path_rate)
    if block_families(model) != ['resnet']:
        raise SystemExit(f'{args.model}: this profile reads timm ResNet blocks (conv1..conv3); got {block_families(model)}')
    busy0 = cpu_busy()
    share, skipped, ideal = flop_ideal(model, args.img_size)
    converted = sdzoo.convert(copy.deepcopy(model))
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size).to(memory_format=torch.channels_last)
    y = torch.randint(0, model.num_classes, (args.batch_size,))
    tables = {name: profile_step(m.to(memory_format=torch.channels_last), x, y, args.top)
              for name, m in (('timm', model), ('converted', converted))}
    print(f'# {args.model}: where a converted training step goes\n\n- date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; '
          f'command: `python benchmarks/convert_profile.py '
          f'{" ".join(argv if argv is not None else sys.argv[1:])}`\n- {describe()}; {args.threads} thread(s); '
          f'{busy_note(busy0, cpu_busy())}\n- residual branches: {share:.1%} of the forward FLOPs; expected skipped at '
          f'drop_path_rate {args.drop_path_rate}: {skipped:.1%} of all; FLOP-weighted ideal {ideal:.3f}x\n')
    for name, rows in tables.items():
        print(f'## {name} (one bf16 step, batch {args.batch_size}, self CPU seconds)\n\n| operator | s |\n|---|---:|')
        print('\n'.join(f'| {k} | {v:.3f} |' for k, v in rows) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
