"""torch.compile against eager for stochastic-depth training (issue 46.16): what `sdzoo train --compile` costs
up front (compile warm-up with a cold inductor cache) and what it saves per step.

Per model: an eager and a compiled copy of the same network (same weights, same coin seed), trained side by side
on random CIFAR-shaped batches (channels_last, fp32, SGD as the trainer), steps interleaved eager / compiled so
load drifts hit both alike; the first compiled steps (every block shape kept and skipped) are the warm-up. Also
counts Dynamo's graphs and recompiles, and fails if the recompile limit is hit.

    python benchmarks/compile.py --models sd_resnet20 sd_resnet110 --threads 2 --steps 30 --batch-size 128
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import busy_note, cpu_busy, describe  # noqa: E402  benchmarks/machine.py
from results_file import write_atomic  # noqa: E402


def _step(model, run, opt, x, y) -> float:
    import torch.nn.functional as F
    t0 = time.perf_counter()
    loss = F.cross_entropy(run(x), y)
    opt.zero_grad(set_to_none=False)
    loss.backward()
    opt.step()
    loss.item()
    return time.perf_counter() - t0


def measure(name: str, steps: int, batch: int, backend: str) -> dict:
    import torch
    import timm
    import sdzoo
    from torch._dynamo.utils import counters
    sdzoo.register_models()
    torch.manual_seed(0)
    eager = timm.create_model(name, sd_seed=1).train().to(memory_format=torch.channels_last)
    comp_model = copy.deepcopy(eager)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
            for m in (eager, comp_model)]
    for opt, m in zip(opts, (eager, comp_model)):
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
    compiled = torch.compile(comp_model, backend=backend)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g)
    counters.clear()
    warm, t0 = [], time.perf_counter()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        # warm-up: until three compiled steps in a row take under twice the eager step (no compiling left)
        eager_t = _step(eager, eager, opts[0], x, y)
        while True:
            warm.append(_step(comp_model, compiled, opts[1], x, y))
            if len(warm) >= 3 and all(w < 2 * eager_t for w in warm[-3:]):
                break
            if len(warm) > 60:
                break
        warm_s = time.perf_counter() - t0
        times = {'eager': [], 'compiled': []}
        for _ in range(steps):
            times['eager'].append(_step(eager, eager, opts[0], x, y))
            times['compiled'].append(_step(comp_model, compiled, opts[1], x, y))
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(model=name, backend=backend, batch=batch, warmup_s=warm_s, warmup_steps=len(warm),
                eager_ms=med['eager'] * 1e3, compiled_ms=med['compiled'] * 1e3,
                speedup=med['eager'] / med['compiled'], graphs=int(counters['stats'].get('unique_graphs', 0)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=['sd_resnet20', 'sd_resnet110'])
    ap.add_argument('--steps', type=int, default=30)
    ap.add_argument('--batch-size', type=int, default=128)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--backend', default='inductor')
    ap.add_argument('--out', default='benchmarks/results/compile.md')
    ap.add_argument('--one', default=None, help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.batch_size, args.backend)))
        return 0
    busy0 = cpu_busy()
    rows = []
    for m in args.models:
        # each model in a fresh process with an empty inductor cache: a cold compile, as a fresh machine sees it
        # (in one process the CIFAR ResNets share their blocks' compiled code, which hides the warm-up)
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix='sdzoo-inductor-'))
        out = subprocess.run([sys.executable, __file__, '--one', m, '--steps', str(args.steps), '--batch-size',
                              str(args.batch_size), '--threads', str(args.threads), '--backend', args.backend],
                             env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    busy1 = cpu_busy()
    cmd = 'python benchmarks/compile.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    lines = [f'# torch.compile ({args.backend}) against eager: stochastic-depth training steps', '',
             f'- date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; command: `{cmd}`',
             f'- {describe()}; {args.threads} thread(s); torch {torch.__version__}; {busy_note(busy0, busy1)}',
             f'- batch {args.batch_size} random 3x32x32 images, channels_last, fp32, SGD; median of {args.steps} '
             'steps each, eager and compiled interleaved; warm-up = compiled steps until three in a row ran under '
             'twice the eager step, with a cold inductor cache; drop_path_rate as the model defines (0.5)', '',
             '| model | eager ms/step | compiled ms/step | speed-up | warm-up s (steps) | Dynamo graphs |',
             '|---|---:|---:|---:|---:|---:|']
    for r in rows:
        lines.append(f"| {r['model']} | {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['warmup_s']:.0f} ({r['warmup_steps']}) | {r['graphs']} |")
    text = '\n'.join(lines) + '\n'
    write_atomic(args.out, text)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
