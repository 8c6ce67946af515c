"""Where should a convnet fine-tune turn stochastic depth off? (issue 45: the SD-off threshold)

The recipe keeps the pretrained network's survival schedule on small folders and turns SD off
(``drop_path_rate`` 0, the trained p_l moved into the weights) from ``SD_OFF_TRAIN_IMAGES`` training images on.
That threshold sat between the sizes measured before (folders of at most 1,250 images, where SD on and off tied,
and full Fashion-MNIST, where SD off won by 1.2 points). This benchmark fills the gap: random Fashion-MNIST
training subsets of N images, each fine-tuned from ``sd_resnet20.sd_cifar10`` twice with the recipe's other
defaults, once with SD kept (``--drop-path-rate 0.5``, the weights' own rate) and once with SD off
(``--drop-path-rate 0``), with a validation set of N/10 images as a folder of N images would get, and tested
on all 10,000 Fashion-MNIST test images. The pair is compared image by image (exact McNemar).

    python benchmarks/finetune_sd_size.py --sizes 2500,5000,10000,20000 --seeds 0,1 \\
        --work /tmp/sdsize --out benchmarks/results/finetune_sd_size.jsonl
    python benchmarks/finetune_sd_size.py --report benchmarks/results/finetune_sd_size.jsonl \\
        > benchmarks/results/finetune_sd_size.md
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

ARMS = {'sd_kept': '0.5', 'sd_off': '0'}


def command(n: int, seed: int, arm: str, out: Path, threads: int) -> List[str]:
    return ['sdzoo', 'finetune', 'sd_resnet20', '--data', 'fashion_mnist', '--in-chans', '1', '--num-classes', '10',
            '--train-subset', str(n), '--val-subset', str(max(10, n // 10)), '--drop-path-rate', ARMS[arm],
            '--seed', str(seed), '--split-seed', str(seed), '--threads', str(threads), '--workers', '0',
            '--no-progress', '--out', str(out)]


def run_cell(n: int, seed: int, arm: str, work: Path, threads: int) -> Dict:
    out = work / f'n{n}-s{seed}-{arm}'
    if out.exists():
        raise SystemExit(f'{out} exists: remove it or choose another --work')
    cmd = command(n, seed, arm, out, threads)
    t0 = time.time()
    log = out.with_suffix('.log')
    with open(log, 'w') as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f'{shlex.join(cmd)} exited with {rc}; see {log}')
    summary = json.loads((out / 'summary.json').read_text())
    config = json.loads((out / 'config.json').read_text())
    return dict(n=n, seed=seed, arm=arm, top1=summary['test']['top1'], test_images=summary['test']['images'],
                per_image=summary['test']['per_image'], selected=summary.get('selected'),
                epochs=config['epochs'], batch_size=config['batch_size'], lr=config['lr'], amp=config.get('amp'),
                hardware=summary.get('hardware'), wall_s=round(time.time() - t0, 1), command=shlex.join(cmd))


def report(path: Path) -> str:
    from sdzoo.stats import mcnemar_exact_p
    from sdzoo.train.records import decode_correct
    cells: Dict[Tuple[int, int, str], Dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            c = json.loads(line)
            cells[(c['n'], c['seed'], c['arm'])] = c
    sizes = sorted({k[0] for k in cells})
    out = ['| train images (N) | recipe (epochs x bs, lr) | SD kept (p_L 0.5) | SD off | off - kept | per seed: off-only / kept-only '
           'test images, exact McNemar p | wall s kept / off |', '|---:|---|---|---|---:|---|---|']
    for n in sizes:
        seeds = sorted({k[1] for k in cells if k[0] == n and (k[0], k[1], 'sd_kept') in cells
                        and (k[0], k[1], 'sd_off') in cells})
        if not seeds:
            continue
        kept = [cells[(n, s, 'sd_kept')] for s in seeds]
        off = [cells[(n, s, 'sd_off')] for s in seeds]
        duels, walls = [], []
        for a, b in zip(kept, off):
            ha, hb = decode_correct(a['per_image']), decode_correct(b['per_image'])
            only_off, only_kept = int((hb & ~ha).sum()), int((ha & ~hb).sum())
            duels.append(f'{only_off} / {only_kept}, p = {mcnemar_exact_p(only_off, only_kept):.2g}')
            walls.append(f"{a['wall_s']:.0f} / {b['wall_s']:.0f}")
        mk = sum(c['top1'] for c in kept) / len(kept)
        mo = sum(c['top1'] for c in off) / len(off)
        r = kept[0]
        each_kept = '/'.join(f"{c['top1']:.2f}" for c in kept)
        each_off = '/'.join(f"{c['top1']:.2f}" for c in off)
        out.append(f"| {n:,} | {r['epochs']} x {r['batch_size']}, {r['lr']:.3g} | {mk:.2f} ({each_kept}) "
                   f"| {mo:.2f} ({each_off}) | {mo - mk:+.2f} | {'; '.join(duels)} "
                   f"| {'; '.join(walls)} |")
    hw = sorted({c.get('hardware') or '?' for c in cells.values()})
    out.append('')
    out.append(f"Hardware: {'; '.join(hw)}. Test: all 10,000 Fashion-MNIST test images (Debian IDX files). Seeds "
               f"(`--seed` = `--split-seed`): {', '.join(str(s) for s in sorted({k[1] for k in cells}))}.")
    out.append('')
    out.append('Commands behind the cells:')
    out.append('')
    for k in sorted(cells):
        out.append(f"- N {k[0]:,} seed {k[1]} {k[2]}: `{cells[k]['command']}`")
    return '\n'.join(out)


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', default='2500,5000,10000,20000')
    ap.add_argument('--seeds', default='0,1')
    ap.add_argument('--arms', default='sd_kept,sd_off')
    ap.add_argument('--work', type=Path, default=Path('/tmp/sdzoo-sdsize'))
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--out', type=Path, help='JSON-lines results (appended)')
    ap.add_argument('--report', type=Path, help='print the markdown table of this results file and exit')
    args = ap.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if args.out is None:
        ap.error('--out is required to run cells')
    args.work.mkdir(parents=True, exist_ok=True)
    for n in (int(x) for x in args.sizes.split(',')):
        for seed in (int(x) for x in args.seeds.split(',')):
            for arm in args.arms.split(','):
                cell = run_cell(n, seed, arm, args.work, args.threads)
                with open(args.out, 'a') as f:
                    f.write(json.dumps(cell) + '\n')
                print(f"N {n} seed {seed} {arm}: {cell['top1']:.2f} ({cell['wall_s']:.0f} s)", flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
