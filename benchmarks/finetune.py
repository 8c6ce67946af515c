"""Fine-tuning outcomes of `sdzoo finetune` on small image folders (issue 45).

Builds the nine test folders itself (CIFAR-10 cuts from $SDZOO_DATA/cifar10, Fashion-MNIST cuts from the
Debian IDX files), then per folder measures: zero-shot (pretrained logits restricted to the folder's classes,
CIFAR classes only), a linear probe on all train images, today's defaults (bs 128, lr 0.01, drop_last, last-N
holdout, fresh head), the new defaults and, for convnets, the previous default of keeping SD while fine-tuning
(`sdkept3`, `sdkept`: `--drop-path-rate 0.5`), the linear-probe head that `--head auto` gave classes it could not
match by name before it also matched by prediction (`probehead`: `--head probe`), and a flag grid (`grid`: batch size x lr x epochs given as flags,
what a user tuning by hand would try), each through the real `sdzoo finetune` command (printed per cell).

    python benchmarks/finetune.py --work /tmp/ftbench [--only readme,c5x20] [--jobs new3,new,today3,sdkept3,sdkept,grid]
        [--model sd_resnet20] [--seeds 3 --seed-folders readme,c5x20] --out benchmarks/results/finetune.jsonl

Results go to a JSON-lines file (one cell a line, with its command and wall time); `--report MD` turns it
into the markdown table.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import append_jsonl  # noqa: E402  benchmarks/results_file.py

FM_NAMES = ['tshirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'boot']
CIFAR = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
# name: (source, {class: train images}, test images per class, test offset, train offset)
FOLDERS = {
    'readme': ('cifar', {c: 60 for c in ('cat', 'dog', 'ship')}, 60, 0, 0),
    'c5x20': ('cifar', {c: 20 for c in ('airplane', 'automobile', 'bird', 'frog', 'truck')}, 200, 200, 100),
    'c10x50': ('cifar', {c: 50 for c in CIFAR}, 100, 400, 200),
    'unbal': ('cifar', {'horse': 400, 'deer': 100, 'frog': 25}, 150, 800, 2000),
    'f3x125': ('fm', {c: 125 for c in ('trouser', 'sandal', 'bag')}, 200, 0, 0),
    'f3hard': ('fm', {c: 125 for c in ('pullover', 'coat', 'shirt')}, 200, 300, 300),
    'f5x50': ('fm', {c: 50 for c in ('tshirt', 'trouser', 'coat', 'sneaker', 'bag')}, 200, 600, 600),
    'renamed': ('cifar', {c: 60 for c in ('cat', 'dog', 'ship')}, 60, 0, 0),
    # the same classes and names from pictures the networks never saw: train/ from CIFAR-10 test images 100-159
    'fresh': ('cifar_test', {c: 60 for c in ('cat', 'dog', 'ship')}, 60, 0, 100),
}
# folders whose CIFAR classes are saved under other names: the README cut as kitty/ doggo/ boat/ (known classes the
# head cannot match by name; since 2026-12-08 matched by what the pretrained head predicts)
RENAMES = {'renamed': {'cat': 'kitty', 'dog': 'doggo', 'ship': 'boat'},
           'fresh': {'cat': 'kitty', 'dog': 'doggo', 'ship': 'boat'}}
# the recipe flags that give today's (pre-issue-45) fine-tune defaults
TODAY = ['--batch-size', '128', '--lr', '0.01', '--warmup-epochs', '0.5', '--drop-last', '--holdout', 'last',
         '--head', 'fresh', '--class-weights', 'none']


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    if data[2:4] == b'\x08\x03':
        return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)
    return np.frombuffer(data, np.uint8, offset=8)


def build_folders(work: Path) -> None:
    """The research cuts (the folders benchmarks/finetune_grid.py's jobs name), same files, same order."""
    from PIL import Image
    from sdzoo.data import default_data_root, find_fashion_mnist
    src = default_data_root() / 'cifar10'
    fm = None
    for name, (kind, spec, test_per, test_off, train_off) in FOLDERS.items():
        root = work / name
        if (root / 'test').is_dir():
            continue
        tmp = work / f'.{name}.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        if kind == 'fm' and fm is None:
            d = find_fashion_mnist()
            fm = {s: (_idx(d / f'{p}-images-idx3-ubyte.gz'), _idx(d / f'{p}-labels-idx1-ubyte.gz'))
                  for s, p in (('train', 'train'), ('test', 't10k'))}
        for c, n in spec.items():
            dst = RENAMES.get(name, {}).get(c, c)
            for split, k, off in (('train', n, train_off), ('test', test_per, test_off)):
                (tmp / split / dst).mkdir(parents=True, exist_ok=True)
                if kind in ('cifar', 'cifar_test'):
                    split_src = 'test' if kind == 'cifar_test' else split
                    for f in sorted(os.listdir(src / split_src / c))[off:off + k]:
                        shutil.copy(src / split_src / c / f, tmp / split / dst / f)
                else:
                    x, y = fm[split]
                    for i in np.nonzero(y == FM_NAMES.index(c))[0][off:off + k]:
                        Image.fromarray(x[i]).resize((32, 32), Image.BILINEAR).convert('RGB').save(
                            tmp / split / c / f'{i:05d}.png')
        tmp.rename(root)


def zero_shot_and_probe(model_name: str, folder: Path) -> dict:
    """Restricted-logit zero-shot (classes the pretrained model knows) and a linear probe on all train images."""
    import torch
    import timm
    import sdzoo  # noqa: F401
    from timm.data import resolve_data_config
    from sdzoo.data import TensorLoader, load_splits
    from sdzoo.train.finetune import fit_linear_probe
    torch.set_num_threads(1)
    m = timm.create_model(model_name, pretrained=True).eval()
    dc = resolve_data_config(model=m)
    sp = load_splits(str(folder), tuple(dc['input_size']), val_size=0)
    names = list(m.pretrained_cfg.get('label_names') or [])
    out = {}
    t0 = time.time()
    with torch.no_grad():
        def feats(split):
            fs, ys = [], []
            for x, y in TensorLoader(split, 256, dc['mean'], dc['std']).iter_epoch(0):
                fs.append(m.forward_head(m.forward_features(x), pre_logits=True))
                ys.append(y)
            return torch.cat(fs), torch.cat(ys)
        ftr, ytr = feats(sp.train)
        fte, yte = feats(sp.test)
        classes = [{v: k for k, v in RENAMES.get(folder.name, {}).items()}.get(c, c) for c in sp.classes]
        if names and all(c in names for c in classes):  # a renamed folder: its classes' pretrained labels
            idx = [names.index(c) for c in classes]
            logits = m.get_classifier()(fte)[:, idx]
            out['zeroshot'] = dict(top1=100.0 * (logits.argmax(1) == yte).float().mean().item(),
                                   seconds=time.time() - t0)
    t0 = time.time()
    W, b = fit_linear_probe(ftr, ytr, len(sp.classes))
    out['probe'] = dict(top1=100.0 * ((fte @ W.T + b).argmax(1) == yte).float().mean().item(),
                        seconds=time.time() - t0)
    return out


def run_cli(model: str, folder: Path, k: int, extra: list, out: Path) -> dict:
    cmd = ['sdzoo', 'finetune', model, '--data', str(folder), '--num-classes', str(k), '--threads', '1',
           '--workers', '0', '--no-progress'] + extra + ['--out', str(out)]
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode:
        return dict(cmd=' '.join(cmd), error=r.stderr.strip().splitlines()[-1:], seconds=wall)
    summary = json.loads((out / 'summary.json').read_text())
    cfg = json.loads((out / 'config.json').read_text())
    return dict(cmd=' '.join(cmd), top1=summary['test']['top1'], seconds=wall, steps=summary['steps'],
                batch_size=cfg['batch_size'], lr=cfg['lr'], epochs=cfg['epochs'], head=cfg['head_init'])


JOBS = {
    'today3': TODAY + ['--epochs', '3'],
    'today': TODAY + ['--epochs', '10'],
    'new3': ['--epochs', '3'],
    'new': [],
    # the previous default for convnets: SD kept at the weights' own rate while fine-tuning (now it is off)
    'sdkept3': ['--epochs', '3', '--drop-path-rate', '0.5'],
    'sdkept': ['--drop-path-rate', '0.5'],
    # what `--head auto` chose for classes no pretrained label names, before it also matched by prediction
    'probehead': ['--head', 'probe'],
}

# the flag grid (job `grid`): the real `sdzoo finetune` with everything at its default except batch size, lr and
# epochs given as flags, what a user tuning by hand would try; one seed, classes the model never saw
FLAG_GRID = {'convnet': dict(bs=(16, 64), lr=(0.03, 0.1), epochs=(30,)),
             'vit': dict(bs=(16, 64), lr=(3e-5, 1e-4, 3e-4), epochs=(30,))}


def grid_flags(model: str) -> list:
    g = FLAG_GRID['vit' if 'vit' in model else 'convnet']
    return [['--batch-size', str(b), '--lr', f'{lr:g}', '--epochs', str(e)]
            for b in g['bs'] for lr in g['lr'] for e in g['epochs']]


# the research hand grid (benchmarks/finetune_grid.py, jobs and results in benchmarks/results/finetune_grid/
# jobs_grid / res_grid; SGD nesterov, wd 1e-4, cosine, warm-up 0.5 epoch, no drop_last, fresh head, SD kept),
# best test top-1 per folder
GRID = {  # folder: (best of epochs 3, best of epochs 8), each (top-1, bs, lr)
    'readme': ((88.3, 32, 0.1), (88.3, 64, 0.05)), 'c5x20': ((81.8, 16, 0.03), (84.7, 32, 0.03)),
    'c10x50': ((78.4, 16, 0.03), (79.6, 16, 0.03)), 'unbal': ((60.4, 32, 0.1), (61.6, 32, 0.1)),
    'f3x125': ((98.2, 16, 0.03), (98.8, 64, 0.1)), 'f3hard': ((65.8, 16, 0.03), (71.3, 32, 0.1)),
    'f5x50': ((84.7, 32, 0.1), (96.2, 16, 0.1)),
}


# matched-head learning-rate grid (finetune_grid.py jobs_w / res_w: head rows copied, balanced loss, 3 epochs,
# lr 0.001 / 0.002 / 0.005 x bs/16, 3 seeds): best mean per folder, (top-1, lr per 16 images)
GRID_MATCHED = {'readme': (95.2, 0.001), 'c5x20': (92.9, 0.001), 'c10x50': (87.8, 0.001), 'unbal': (94.3, 0.001)}


def _cell(rows: list) -> str:
    vals = [r['top1'] for r in rows if 'top1' in r]
    if not vals:
        errs = [r for r in rows if r.get('error')]
        return 'error: ' + errs[0]['error'][0].split('error: ')[-1] if errs else '–'
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f'{mean:.1f}'
    return f'{mean:.1f} ±{(max(vals) - min(vals)) / 2:.1f} (n={len(vals)}: {"/".join(f"{v:.1f}" for v in vals)})'


def _grid_cell(rows: list) -> str:
    """The grid cell (batch size, lr, epochs) with the best mean over the seeds it was run with: the maximum of
    single-seed cells is biased upward against the defaults' 3-seed mean, so cells run on more seeds compare by mean."""
    cells: dict = {}
    for r in rows:
        if 'top1' in r:
            cells.setdefault((r['batch_size'], r['lr'], r['epochs']), []).append(r)
    if not cells:
        return '–'
    (bs, lr, epochs), best = max(cells.items(), key=lambda kv: sum(r['top1'] for r in kv[1]) / len(kv[1]))
    vals = [r['top1'] for r in sorted(best, key=lambda r: r.get('seed', 0))]
    seeds = f'{len(vals)} seeds: ' + '/'.join(f'{v:.1f}' for v in vals) if len(vals) > 1 else '1 seed'
    return f"{sum(vals) / len(vals):.1f} (bs{bs} lr{lr:g} e{epochs}; {seeds}; best of {len(cells)} cells)"


def report(files: list) -> str:
    """The markdown tables of one or more result files."""
    rows = [json.loads(line) for f in files for line in open(f) if line.strip()]
    out = []
    for model in dict.fromkeys(r['model'] for r in rows):
        out += [f'### {model}', '',
                '| folder | zero-shot (restricted logits) | linear probe (all train) | today `--epochs 3` | '
                'new `--epochs 3` | new, no recipe flags | hand grid best e3 / e8 (research, fresh head) | '
                'matched-head lr grid best (research, 3 seeds) | flag grid best (`sdzoo finetune` with bs, lr, epochs '
                'given; the best cell by its mean over seeds) | SD kept (p_L 0.5, the previous default) `--epochs 3` / no other flags (run at the 300-step default of 2026-12-07) | wall s (new) |',
                '|---|---|---|---|---|---|---|---|---|---|---|']
        for folder in FOLDERS:
            mine = [r for r in rows if r['model'] == model and r['folder'] == folder]
            if not mine:
                continue
            by = {j: [r for r in mine if r['job'] == j]
                  for j in ('zeroshot', 'probe', 'today3', 'new3', 'new', 'sdkept3', 'sdkept', 'grid')}
            new = by['new']
            if (new and new[0].get('same_as')) or (not new and FOLDERS[folder][0] == 'cifar' and by['new3']
                                                    and folder not in RENAMES):
                new_cell = 'same run as `--epochs 3` (matched head: 3 epochs)'
            else:
                new_cell = _cell(new)
            g = GRID.get(folder) if model == 'sd_resnet20' else None
            grid = f'{g[0][0]} (bs{g[0][1]} lr{g[0][2]}) / {g[1][0]} (bs{g[1][1]} lr{g[1][2]})' if g else '–'
            secs = [r['seconds'] for r in by['new3'] + new if 'top1' in r]
            kept = _cell(by['sdkept3'])
            if by['sdkept'] and not by['sdkept'][0].get('same_as'):
                kept += ' / ' + _cell(by['sdkept'])
            elif by['sdkept3'] and FOLDERS[folder][0] == 'cifar':
                kept += ' / same run'
            gm = GRID_MATCHED.get(folder) if model == 'sd_resnet20' else None
            gm = f'{gm[0]} (lr {gm[1]} x bs/16)' if gm else '–'
            out.append(f"| {folder} | {_cell(by['zeroshot'])} | {_cell(by['probe'])} | {_cell(by['today3'])} | "
                       f"{_cell(by['new3'])} | {new_cell} | {grid} | {gm} | {_grid_cell(by['grid'])} | {kept} | "
                       f"{'/'.join(str(round(x)) for x in secs) or '–'} |")
        out.append('')
    out += ['Commands behind the cells:', '']
    for r in rows:
        if r.get('cmd'):
            note = f" ({r['note']})" if r.get('note') else ''
            out.append(f"- {r['model']} {r['folder']} {r['job']} seed {r.get('seed', 0)}: `{r['cmd']}`{note}")
    return '\n'.join(out) + '\n'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--work', default='/tmp/sdzoo-ftbench')
    ap.add_argument('--out', default='benchmarks/results/finetune.jsonl')
    ap.add_argument('--model', default='sd_resnet20')
    ap.add_argument('--only', default=','.join(FOLDERS))
    ap.add_argument('--jobs', default='ref,today3,new3,new')
    ap.add_argument('--seeds', type=int, default=1)
    ap.add_argument('--seed-folders', default='readme,c5x20', help='folders that get --seeds seeds')
    ap.add_argument('--report', nargs='+', default=None, metavar='JSONL', help='print the markdown of these results')
    args = ap.parse_args(argv)
    if args.report:
        print(report(args.report), end='')
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    build_folders(work / 'data')
    for name in args.only.split(','):
        folder = work / 'data' / name
        k = len(FOLDERS[name][1])
        for job in args.jobs.split(','):
            if job == 'ref':
                cells = [dict(job=j, **v) for j, v in zero_shot_and_probe(args.model, folder).items()]
            elif job == 'grid':
                cells = []
                for extra in grid_flags(args.model):
                    tag = '-'.join(extra[1::2])
                    cells.append(dict(job=job, seed=0, **run_cli(args.model, folder, k, extra,
                                                                 work / 'runs' / f'{args.model}-{name}-grid-{tag}')))
            elif job in ('new', 'sdkept') and FOLDERS[name][0] == 'cifar' and name not in RENAMES:
                # every class is a CIFAR label the shipped models name: the head is matched and the omitted
                # --epochs defaults to 3, so `new` is the very run `new3` is (same config.json); not run twice
                cells = [dict(job=job, same_as=job + '3')]
            else:
                seeds = range(args.seeds if name in args.seed_folders.split(',')
                              and job in ('new', 'new3', 'sdkept3', 'sdkept', 'probehead')
                              else 1)
                cells = []
                for s in seeds:
                    extra = JOBS[job] + (['--seed', str(s), '--split-seed', str(s)] if s else [])
                    cells.append(dict(job=job, seed=s, **run_cli(args.model, folder, k, extra,
                                                                 work / 'runs' / f'{args.model}-{name}-{job}-{s}')))
            for c in cells:
                c.update(folder=name, model=args.model, date=time.strftime('%Y-%m-%d'))
                print(json.dumps(c), flush=True)
                append_jsonl(args.out, c)
    return 0


if __name__ == '__main__':
    sys.exit(main())
