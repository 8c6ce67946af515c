"""Healing's learning rate after depth pruning (issue 50), and how many held-out images greedy's choice needs:
chosen on held-out *training* images, reported on test.

For one model of benchmarks/depth.py and each cut: remove the greedy order's first CUT blocks (the order the
committed depth.json records), re-estimate the BatchNorms (2,000 training images), then heal 300 steps at each
learning rate and distillation temperature (`sdzoo.models.depth.heal`, 20,000 training images); score every network on the 5,000 validation
images (held out of training: what chooses) and on the 10,000 test images (what is reported):

    SDZOO_DATA=/path/to/datasets python benchmarks/depth_heal_lr.py --model r110 --cuts 12 18 --lrs 0.002 0.005
    python benchmarks/depth_heal_lr.py --model r110 --cuts 12 18 --lrs 0.002 --calibration-images 500 2000 \\
        --val-skip 2000
    python benchmarks/depth_heal_lr.py --report        # benchmarks/results/depth_heal_lr.md from the .jsonl

``--calibration-images N ...`` computes greedy's order afresh on the first N images of the seeded validation draw
(``prune_depth``'s ``calibration_images``; default: the committed order, 500); ``--val-skip K`` scores on the
validation images after the first K of that draw, so no scored image chose a block.

Rows append to benchmarks/results/depth_heal_lr.jsonl (lr 0: the unhealed network).
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import depth as D  # noqa: E402  benchmarks/depth.py: models, test set, greedy orders
from machine import describe  # noqa: E402
from results_file import append_jsonl  # noqa: E402

RESULTS = Path(__file__).resolve().parent / 'results'


def average_weights(models):
    """The models' parameters and buffers averaged (one architecture, one start): a uniform model soup."""
    import torch
    out = copy.deepcopy(models[0])
    sds = [m.state_dict() for m in models]
    out.load_state_dict({k: (torch.stack([sd[k].float() for sd in sds]).mean(0).to(v.dtype)
                             if v.is_floating_point() else v) for k, v in sds[0].items()})
    return out


def measure(args) -> None:
    import torch
    from sdzoo.models.depth import bn_recalibrate, heal, load_images
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = D.build_model(args.model, work)
    committed = next(r for r in json.loads((RESULTS / 'depth.json').read_text())['greedy_orders']
                     if r['model'] == args.model)
    xt, yt = D.test_set(model, work)
    xv, yv, _ = load_images(model, D.DATA, 'val', None, 0, skip=args.val_skip, with_labels=True)
    xv, yv = xv.numpy(), np.asarray(yv)
    bn_x, _ = load_images(model, D.DATA, 'train', 2000, 1)
    heal_x, _ = load_images(model, D.DATA, 'train', 20000, 2)
    common = dict(model=args.model, date=time.strftime('%Y-%m-%d %H:%M:%S'), machine=describe(), note=args.note,
                  command='python benchmarks/depth_heal_lr.py ' + shlex.join(sys.argv[1:]))

    def top1(m, x, y) -> float:
        return round(100 * float((D.predict(m, x) == y).mean()), 2)

    for n_cal in args.calibration_images or [None]:
        if n_cal is None:
            order, n_cal = committed['order'], committed['calibration_images']
        else:
            order = D.greedy_removal_order(args.model, model, work, max(args.cuts), n_cal, 0)['order']
        for cut in args.cuts:
            base = D.remove_blocks(model, order[:cut])
            bn_recalibrate(base, bn_x)
            kw = dict(common, cut=cut, calibration_images=n_cal, val_images=len(yv), removed_blocks=order[:cut])
            rows = [dict(kw, lr=0, steps=0, val=top1(base, xv, yv), test=top1(base, xt, yt))]
            for lr, temperature, fw in itertools.product(args.lrs, args.temperatures, args.feature_weights):
                healed_seeds = []
                for seed in args.seeds:
                    t0 = time.time()
                    healed = copy.deepcopy(base)
                    info = heal(healed, model, heal_x, args.steps, lr=lr, temperature=temperature, seed=seed,
                                feature_weight=fw, mixup_alpha=args.mixup)
                    healed_seeds.append(healed)
                    rows.append(dict(kw, lr=lr, temperature=temperature, feature_weight=fw, steps=args.steps,
                                     **({'mixup_alpha': args.mixup} if args.mixup else {}),
                                     val=top1(healed, xv, yv), test=top1(healed, xt, yt), seed=seed,
                                     seconds=round(time.time() - t0), kl_last=info.get('kl_last')))
                    if args.bn_after_heal:  # the heal moved the weights the statistics were estimated under
                        again = copy.deepcopy(healed)
                        bn_recalibrate(again, bn_x)
                        rows.append(dict(rows[-1], bn_after_heal=True, val=top1(again, xv, yv),
                                         test=top1(again, xt, yt)))
                if len(healed_seeds) > 1:  # the heals' weights averaged (a "model soup": one start, several seeds)
                    soup = average_weights(healed_seeds)
                    rows.append(dict(kw, lr=lr, temperature=temperature, feature_weight=fw, steps=args.steps,
                                     val=top1(soup, xv, yv), test=top1(soup, xt, yt), seed=f'soup {args.seeds}'))
            for r in rows:
                print({k: v for k, v in r.items() if k != 'removed_blocks'}, flush=True)
                append_jsonl(args.out, r)


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = ['# Healing learning rate, and greedy\'s calibration images, after depth pruning (issue 50)', '',
           'Greedy order of the committed depth.json (500 calibration images) or one computed afresh on more, '
           'BatchNorms re-estimated on 2,000 training images, then 300 steps of `sdzoo.models.depth.heal` (SGD for the '
           'ResNets, AdamW for the ViT) at each learning rate; top-1 on validation images held out of training (what '
           'chooses the default: all 5,000, or the 3,000 that neither calibration draw used) and on the 10,000 test '
           'images of CIFAR-10 (JPEG q75 copy). lr 0: not healed. Temperature: of the distillation (heal\'s '
           'default 1); at 18 removed, temperature 4 diverged (loss NaN, every image one class: 10%). Stage-output '
           'weight: heal\'s feature_weight, the layer1..3 outputs matched to the full network\'s besides the logits '
           '(0: logits only, the default). Heal seed: the batch draw and augmentation of `heal` (default 0); "soup": '
           'the listed seeds\' healed weights averaged (`--seeds` with two or more); "BN re-estimated after": the '
           'healed network\'s BatchNorms re-estimated once more on the same 2,000 images (`--bn-after-heal`); '
           '"mixup": the heal\'s batches blended with shuffled copies of themselves (`--mixup ALPHA`).', '',
           'Machine and load of every row (as recorded in the .jsonl):', '']
    out += [f'- {m}; {n}' for m, n in dict.fromkeys((r.get('machine', '?'), r.get('note', '')) for r in rows)]
    out += ['', '| model | blocks removed | greedy calibration images | lr | temperature | stage-output weight | steps '
            '| heal seed | val images | val top-1 % | test top-1 % | heal seconds | date |',
            '|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|']
    def order(r):
        return (r['model'], r['cut'], r.get('val_images', 5000), r.get('calibration_images', 500), r['lr'],
                r.get('temperature', 1.0), r.get('feature_weight') or 0.0, r['steps'], str(r.get('seed', 0)),
                bool(r.get('bn_after_heal')), r.get('mixup_alpha') or 0.0)
    for r in sorted(rows, key=order):
        temperature = f"{r.get('temperature', 1.0):g}" if r['lr'] else '-'
        features = f"{r.get('feature_weight') or 0.0:g}" if r['lr'] else '-'
        how = (', BN re-estimated after' if r.get('bn_after_heal') else '') + \
            (f", mixup {r['mixup_alpha']:g}" if r.get('mixup_alpha') else '')
        out.append(f"| {r['model']} | {r['cut']} | {r.get('calibration_images', 500)} | {r['lr'] or '-'} "
                   f"| {temperature} | {features} | {r['steps'] or '-'} | {r.get('seed', 0) if r['lr'] else '-'}"
                   f"{how} "
                   f"| {r.get('val_images', 5000)} | {r['val']:.2f} "
                   f"| {r['test']:.2f} | {r.get('seconds', '')} | {r.get('date', '')} |")
    out += ['', 'Commands:', ''] + [f'    {c}' for c in dict.fromkeys(r['command'] for r in rows if r.get('command'))]
    return '\n'.join(out) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', choices=list(D.MODELS), default='r110')
    p.add_argument('--cuts', nargs='+', type=int, default=[12, 18])
    p.add_argument('--lrs', nargs='+', type=float, default=[0.002, 0.005])
    p.add_argument('--temperatures', nargs='+', type=float, default=[1.0],
                   help="distillation temperatures (heal's default 1), each at every lr")
    p.add_argument('--feature-weights', nargs='+', type=float, default=[0.0],
                   help="weight of the stage-output matching term (heal's feature_weight; default 0: logits only)")
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--seeds', nargs='+', type=int, default=[0],
                   help='heal seeds; with two or more, also their weights averaged (a row with seed "soup")')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--work', default='/tmp/depth')
    p.add_argument('--out', default=str(RESULTS / 'depth_heal_lr.jsonl'))
    p.add_argument('--calibration-images', nargs='+', type=int, default=None,
                   help="greedy's held-out images (default: the committed order's 500)")
    p.add_argument('--val-skip', type=int, default=0, help='score on the validation draw after its first K images')
    p.add_argument('--mixup', type=float, default=0.0, help="heal's mixup_alpha (0: off, the default)")
    p.add_argument('--bn-after-heal', action='store_true',
                   help='also score each healed network with its BatchNorms re-estimated again afterwards')
    p.add_argument('--note', default='', help='what else ran (accuracy does not depend on it; seconds do)')
    p.add_argument('--report', action='store_true', help='write benchmarks/results/depth_heal_lr.md and stop')
    args = p.parse_args(argv)
    if args.report:
        (RESULTS / 'depth_heal_lr.md').write_text(report(Path(args.out)))
        return 0
    measure(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
