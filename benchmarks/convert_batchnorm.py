"""How much computing a converted ResNet branch on the surviving samples only changes the gradient.

timm runs every residual branch on the whole batch (BatchNorm normalises with all samples' statistics)
and zeroes the dropped samples afterwards; ``sdzoo.convert`` runs the branch on the survivors only, so
the branch's BatchNorm sees the survivors' statistics. With the *same coins* (both draw them from the
global RNG in the same order) this measures, on real CIFAR-10 images (JPEG q75 copy):

* ``bn``   = |g_converted - g_timm| / |g_timm|, all parameters' gradients as one vector, same coins;
* ``coin`` = |g_timm(other coins) - g_timm| / |g_timm|: the gradient noise stochastic depth itself adds
  (same weights and images, another draw of timm's coins): the scale ``bn`` is to be read against;
* ``cos``  = cosine similarity of g_converted and g_timm.

    python benchmarks/convert_batchnorm.py --models resnet18,resnet50 --img-size 112 --trials 3 --threads 1
    python benchmarks/convert_batchnorm.py --models resnet18 --img-size 32 --trials 3 --threads 1 \
        --pretrain-steps 300 --out benchmarks/results/convert_batchnorm_trained.md

Writes a markdown table to benchmarks/results/convert_batchnorm.md.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

import timm
import torch
import torch.nn.functional as F

import sdzoo
from machine import cpu_name
from results_file import write_atomic

DEFAULT_OUT = Path(__file__).resolve().parent / 'results' / 'convert_batchnorm.md'


def cifar_batch(root: Path, n: int, size: int, split: str = 'test') -> tuple:
    """``n`` CIFAR-10 images of ``split`` (round-robin over classes), resized and ImageNet-normalised."""
    from PIL import Image
    classes = sorted(p for p in (root / split).iterdir() if p.is_dir())
    files = [sorted(c.glob('*.jpg')) for c in classes]
    xs, ys = [], []
    for i in range(n):
        f = files[i % len(classes)][i // len(classes)]
        img = Image.open(f).convert('RGB').resize((size, size), Image.BICUBIC)
        xs.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3))
        ys.append(i % len(classes))
    x = torch.stack(xs).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(ys)


def grad_vector(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    model.train()
    model.zero_grad(set_to_none=False)
    torch.manual_seed(seed)
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def pretrain(model: torch.nn.Module, train: tuple, steps: int, batch: int) -> None:
    """A short SGD run of timm's model itself (drop path on), so the branches are no longer at init."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, train[0].shape[0], (batch,), generator=g)
        xb = train[0][idx]
        flip = torch.rand(batch, generator=g) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
        loss = F.cross_entropy(model(xb), train[1][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f'  pretrain step {step + 1}/{steps}: loss {loss.item():.3f}', file=sys.stderr, flush=True)


def measure(name: str, rate: float, zero_init_last: bool, x: torch.Tensor, y: torch.Tensor,
            trials: int, train: Optional[tuple] = None, steps: int = 0) -> Dict[str, List[float]]:
    torch.manual_seed(0)
    timm_model = timm.create_model(name, drop_path_rate=rate, num_classes=10, zero_init_last=zero_init_last)
    if steps:
        pretrain(timm_model, train, steps, x.shape[0])
    converted = sdzoo.convert(copy.deepcopy(timm_model))
    res: Dict[str, List[float]] = {'bn': [], 'coin': [], 'cos': []}
    for t in range(trials):
        # BN running statistics move on every train-mode forward: restore them so all three see the same net
        state = copy.deepcopy(timm_model.state_dict())
        g_timm = grad_vector(timm_model, x, y, seed=100 + t)
        timm_model.load_state_dict(state)
        g_other = grad_vector(timm_model, x, y, seed=200 + t)
        timm_model.load_state_dict(state)
        converted.load_state_dict(state)
        g_conv = grad_vector(converted, x, y, seed=100 + t)
        n = g_timm.norm()
        res['bn'].append(((g_conv - g_timm).norm() / n).item())
        res['coin'].append(((g_other - g_timm).norm() / n).item())
        res['cos'].append(F.cosine_similarity(g_conv.double(), g_timm.double(), dim=0).item())
        print(f'  {name} zero_init_last={zero_init_last} trial {t + 1}: bn {res["bn"][-1]:.4f} '
              f'coin {res["coin"][-1]:.4f} cos {res["cos"][-1]:.5f}', file=sys.stderr, flush=True)
    return res


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', default='resnet18,resnet50')
    p.add_argument('--drop-path-rate', type=float, default=0.4)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=112)
    p.add_argument('--trials', type=int, default=4)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--data', type=Path, default=Path(__file__).resolve().parents[2] / 'shared' / 'datasets' / 'cifar10')
    p.add_argument('--pretrain-steps', type=int, default=0,
                   help='also measure after this many SGD steps of timm\'s model on CIFAR-10 train images')
    p.add_argument('--pretrain-images', type=int, default=2000)
    p.add_argument('--out', type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = cifar_batch(args.data, args.batch_size, args.img_size)
    train = cifar_batch(args.data, args.pretrain_images, args.img_size, 'train') if args.pretrain_steps else None
    states = [('timm init (zero_init_last=True)', True, 0), ('zero_init_last=False', False, 0)]
    if args.pretrain_steps:
        states.append((f'timm init + {args.pretrain_steps} SGD steps', True, args.pretrain_steps))
    rows = []
    for name in [m.strip() for m in args.models.split(',') if m.strip()]:
        for label, zil, steps in states:
            r = measure(name, args.drop_path_rate, zil, x, y, args.trials, train, steps)
            rows.append(f'| {name} | {label} | {statistics.median(r["bn"]):.4f} | {statistics.median(r["coin"]):.4f} | '
                        f'{statistics.median(r["bn"]) / statistics.median(r["coin"]):.3f} | '
                        f'{min(r["cos"]):.5f} |')
    text = '\n'.join([
        '# Converted ResNets: survivors-only BatchNorm vs timm\'s whole-batch BatchNorm (gradient difference)',
        '',
        f'- date: {datetime.datetime.now().isoformat(timespec="seconds")}; command: `python {" ".join(sys.argv)}`',
        f'- {cpu_name()}, torch {torch.__version__}, timm {timm.__version__}; data: {args.batch_size} CIFAR-10 '
        f'(JPEG q75 copy) test images resized to {args.img_size}x{args.img_size}; drop_path_rate '
        f'{args.drop_path_rate}; fp32; {args.trials} coin draws per row, medians (cos: the minimum); weights: '
        'timm\'s random init, the same with zero_init_last=False (every branch non-zero from the start), and '
        f'(--pretrain-steps) timm\'s model after SGD steps (lr 0.05, momentum 0.9, batch {args.batch_size}, flips) on '
        f'{args.pretrain_images} CIFAR-10 (JPEG q75 copy) training images',
        '',
        '| model | weights | bn: converted vs timm, same coins | coin: timm vs timm, other coins | '
        'bn / coin | cos(converted, timm) (min) |',
        '|---|---|---:|---:|---:|---:|',
        *rows,
    ]) + '\n'
    print(text)
    write_atomic(args.out, text)
    print(f'written to {args.out}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
