"""Research (issue 45): two fine-tune recipes, run with the same seeds on the same folder, compared image by image.

Each pair is two finished `sdzoo finetune` run directories on the same test split (``A_DIR=B_DIR``, A the
candidate, B the baseline); their ``summary.json`` hold the per-image test hits. One JSON line per pair: the
label, model, data, seed, both runs' steps / epochs / lr / selected epoch / test top-1, and the test images only
A or only B got right. ``--report`` groups the lines by label, model and data: mean top-1 of each, the pooled
image counts and the exact two-sided sign (McNemar) p over them (`sdzoo.stats.mcnemar_exact_p`).

    python benchmarks/finetune_pairs.py --label '600 vs 300 steps' A_DIR=B_DIR ... --out benchmarks/results/finetune_pairs.jsonl
    python benchmarks/finetune_pairs.py --report benchmarks/results/finetune_pairs.jsonl

Results and what they decided: benchmarks/results/finetune.md ("600 steps against 300 for a new head").
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import append_jsonl  # noqa: E402  benchmarks/results_file.py


def _run(d: Path) -> dict:
    from sdzoo.train.records import decode_correct
    s = json.loads((d / 'summary.json').read_text())
    cfg = json.loads((d / 'config.json').read_text())
    t = s['test']
    hits = decode_correct(t['per_image'])
    data = s['data'] if isinstance(s['data'], str) else s['data'].get('path')
    if cfg.get('train_subset'):
        data = f"{data} (train subset {cfg['train_subset']})"
    return dict(dir=str(d), model=s['model'], data=str(data), seed=cfg.get('seed'), steps=s['steps'],
                epochs=s['epochs'], lr=cfg['lr'], batch_size=cfg['batch_size'],
                selected_epoch=(s.get('selected') or {}).get('epoch'), top1=t['top1'], hits=hits)


def pair_row(label: str, a_dir: Path, b_dir: Path) -> dict:
    a, b = _run(a_dir), _run(b_dir)
    if (a['model'], a['data'], len(a['hits'])) != (b['model'], b['data'], len(b['hits'])):
        raise SystemExit(f'{a_dir} and {b_dir}: not the same model, data and test split')
    only_a, only_b = int((a['hits'] & ~b['hits']).sum()), int((~a['hits'] & b['hits']).sum())
    keep = ('dir', 'seed', 'steps', 'epochs', 'lr', 'batch_size', 'selected_epoch', 'top1')
    return dict(label=label, model=a['model'], data=a['data'], seed=a['seed'], test_images=len(a['hits']),
                a={k: a[k] for k in keep}, b={k: b[k] for k in keep}, only_a=only_a, only_b=only_b)


def report(paths: List[str]) -> str:
    from sdzoo.stats import mcnemar_exact_p
    groups = defaultdict(list)
    for p in paths:
        for line in open(p):
            r = json.loads(line)
            groups[(r['label'], r['model'], r['data'])].append(r)
    out = ['| comparison (A vs B) | model | data | seeds | steps A / B | A top-1 (mean; per seed) | B top-1 | '
           'A - B | test images only A / only B right, exact p |', '|---|---|---|---:|---|---|---|---:|---|']
    for (label, model, data), rows in groups.items():
        rows = sorted(rows, key=lambda r: r['seed'] or 0)
        a = [r['a']['top1'] for r in rows]
        b = [r['b']['top1'] for r in rows]
        oa, ob = sum(r['only_a'] for r in rows), sum(r['only_b'] for r in rows)
        steps = f"{'/'.join(sorted({str(r['a']['steps']) for r in rows}))} / " \
                f"{'/'.join(sorted({str(r['b']['steps']) for r in rows}))}"
        path, sep, subset = data.partition(' (')
        out.append(f"| {label} | {model} | {Path(path).name}{sep}{subset} "
                   f"| {len(rows)} | {steps} | {np.mean(a):.2f} ({' / '.join(f'{x:.2f}' for x in a)}) "
                   f"| {np.mean(b):.2f} ({' / '.join(f'{x:.2f}' for x in b)}) | {np.mean(a) - np.mean(b):+.2f} "
                   f"| {oa} / {ob}, p = {mcnemar_exact_p(oa, ob):.2g} |")
    return '\n'.join(out) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('pairs', nargs='*', metavar='A_DIR=B_DIR')
    p.add_argument('--label', default='A vs B')
    p.add_argument('--out', type=Path)
    p.add_argument('--report', nargs='+', metavar='JSONL')
    args = p.parse_args(argv)
    if args.report:
        print(report(args.report), end='')
        return 0
    if not args.pairs or not args.out:
        p.error('give A_DIR=B_DIR pairs and --out, or --report JSONL')
    for spec in args.pairs:
        a, sep, b = spec.partition('=')
        if not sep:
            p.error(f'{spec}: expected A_DIR=B_DIR')
        row = pair_row(args.label, Path(a), Path(b))
        print(json.dumps(row), flush=True)
        append_jsonl(args.out, row)
    return 0


if __name__ == '__main__':
    sys.exit(main())
