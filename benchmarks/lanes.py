"""Training throughput of one run on all cores vs several 1-thread runs side by side (`runs/queue.sh --lanes`).

The zoo's runs are small convnets and a small ViT on a 2-core CPU: their steps do not scale linearly
with threads (BN, ReLU and adds are memory-bound; OpenMP barriers cost), so several one-thread runs at
once may do more work per hour than one run with all threads. This measures it on the trainer's
settings (bf16 autocast where the CPU has native bf16, channels_last for convnets, the model's
training recipe's optimizer) with synthetic CIFAR-size batches, each measurement in its own process:

* ``alone, N threads``: one process with all N cores;
* ``alone, 1 thread``:  one process with one thread;
* ``N side by side``:   N one-thread processes of the same model at once.

    python benchmarks/lanes.py                                  # sd_resnet20 and the ViT, 2 + 10 steps
    python benchmarks/lanes.py --models sd_resnet110 --steps 5

Prints a markdown table and writes it to benchmarks/results/lanes.md. Run it on an idle machine
(stop the queue first: `pkill -TERM -f runs/queue.sh`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_speed import _cpu_name, emit  # noqa: E402  (same folder)

DEFAULT_OUT = HERE / 'results' / 'lanes.md'


def worker(model_name: str, threads: int, steps: int, warmup: int, batch_size: int) -> Dict[str, float]:
    """One process: ``warmup + steps`` training steps of the trainer's recipe; returns step-time stats."""
    import torch
    import torch.nn.functional as F
    import timm
    import sdzoo  # noqa: F401  (registers the sd_* models)
    from sdzoo.train.trainer import autocast_for, recipe

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rec = recipe(model_name)
    kwargs = {'drop_path_rate': rec['drop_path_rate']} if 'drop_path_rate' in rec else {}
    model = timm.create_model(model_name, **kwargs).train()
    conv = 'vit' not in model_name  # the trainer's channels_last default
    mem = torch.channels_last if conv else torch.contiguous_format
    model.to(memory_format=mem)
    if rec.get('optimizer') == 'adamw':
        opt = torch.optim.AdamW(model.parameters(), lr=rec['lr'], weight_decay=rec['weight_decay'])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=rec['lr'], momentum=0.9, nesterov=True,
                              weight_decay=rec['weight_decay'])
    ctx, dtype = autocast_for(torch.device('cpu'), 'auto')
    c, h, w = model.pretrained_cfg.get('input_size', (3, 32, 32))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, c, h, w, generator=g).contiguous(memory_format=mem)
    y = torch.randint(0, model.num_classes, (batch_size,), generator=g)
    times: List[float] = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with ctx:
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return dict(median=statistics.median(times), mean=statistics.fmean(times), n=len(times),
                precision=str(dtype).replace('torch.', '') if dtype is not None else 'fp32',
                channels_last=conv)


def _spawn(args: argparse.Namespace, model: str, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, '--worker', model, '--threads', str(threads), '--steps', str(args.steps),
           '--warmup', str(args.warmup), '--batch-size', str(args.batch_size)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def _collect(procs: List[subprocess.Popen]) -> List[Dict[str, float]]:
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f'benchmark worker {p.args} failed with exit code {p.returncode}')
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def measure(args: argparse.Namespace, model: str, cores: int) -> Dict[str, object]:
    alone_all = _collect([_spawn(args, model, cores)])[0]
    alone_one = _collect([_spawn(args, model, 1)])[0]
    side = _collect([_spawn(args, model, 1) for _ in range(cores)])
    return dict(alone_all=alone_all, alone_one=alone_one, side=side)


def render(args: argparse.Namespace, results: Dict[str, Dict[str, object]], cores: int, load: tuple) -> str:
    lines = [
        f'# One run on {cores} threads vs {cores} one-thread runs side by side (training steps, batch {args.batch_size})',
        '',
        f'- date: {datetime.datetime.now().isoformat(timespec="seconds")}; command: `python {" ".join(sys.argv)}`',
        f'- {_cpu_name()}, {cores} logical CPUs; {args.warmup} warm-up + {args.steps} timed steps per process, '
        f'medians; each line is its own process(es); load average at start/end: {load[0]:.2f} / {load[1]:.2f}',
        '- throughput: training steps per second of the whole machine (side by side: the sum over the processes)',
    ]
    if load[0] > 0.5:
        lines.append('- **the machine was not idle when this started: rerun with the queue stopped**')
    lines += ['', f'| model | precision | alone, {cores} threads: ms/step | alone, 1 thread: ms/step | '
              f'{cores} side by side: ms/step each | steps/s, 1 run | steps/s, {cores} side by side | gain |',
              '|---|---|---:|---:|---:|---:|---:|---:|']
    for model, r in results.items():
        a, o, side = r['alone_all'], r['alone_one'], r['side']
        one_run = 1.0 / a['median']
        together = sum(1.0 / s['median'] for s in side)
        prec = a['precision'] + (' channels_last' if a['channels_last'] else '')
        lines.append(f'| {model} | {prec} | {a["median"] * 1e3:.0f} | {o["median"] * 1e3:.0f} | '
                     f'{" / ".join("%.0f" % (s["median"] * 1e3) for s in side)} | {one_run:.2f} | {together:.2f} | '
                     f'{together / one_run:.2f}x |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', default='sd_resnet20,sd_vit_lite_patch4_32', help='comma list of sd_* models')
    p.add_argument('--steps', type=int, default=10, help='timed steps per process')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps per process first')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--out', type=Path, default=DEFAULT_OUT, help='markdown file to write')
    p.add_argument('--worker', metavar='MODEL', help=argparse.SUPPRESS)
    p.add_argument('--threads', type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error('--steps and --batch-size must be >= 1, --warmup >= 0')
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, args.steps, args.warmup, args.batch_size)))
        return 0
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    if not models:
        p.error('--models is empty')
    cores = os.cpu_count() or 1
    load0 = os.getloadavg()[0]
    results = {}
    for m in models:
        print(f'measuring {m}…', file=sys.stderr, flush=True)
        results[m] = measure(args, m, cores)
    emit(render(args, results, cores, (load0, os.getloadavg()[0])), args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
