"""Regenerate MODEL_CARDS.md from the committed evaluation files, so no number is typed by hand.

Published weights: ``weights/<model>.<tag>/validate.json`` (written by ``sdzoo validate`` on the
published folder) and ``training.json``. Runs still training: the last row of
``runs/*/metrics.csv`` (validation split, measured by the trainer at the epoch end).
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..files import atomic_write_text
from ..train.records import clean_epoch_labels, hardware_summary
from .comparison import (comparison_section, load_epoch_benchmarks, load_runs, load_step_benchmarks,
                         plot_comparison)

__all__ = ['DATASET_NAMES', 'COMPARISON_FIGURE', 'render_cards', 'write_cards', 'data_location', 'latency_base',
           'latency_title']

# how each data set is named on cards (the shared CIFAR-10 copy is JPEG re-encoded: say so)
DATASET_NAMES = {
    'cifar10': dict(id='uoft-cs/cifar10', name='CIFAR-10 (JPEG q75 copy)', split='test'),
    'fashion_mnist': dict(id='zalando-datasets/fashion_mnist', name='Fashion-MNIST', split='test'),
}

_REPO_ROOT = Path(__file__).resolve().parents[2]
COMPARISON_FIGURE = 'docs/sd_vs_constant_depth.png'  # relative to the repository root, where MODEL_CARDS.md is


@functools.lru_cache(maxsize=None)
def _default_drop_path_rate(model_name: str) -> float:
    """The rate a recipe without ``--drop-path-rate`` trained with (runs from before the trainer
    recorded it): the model's own default, read from the built network."""
    import timm
    import sdzoo  # noqa: F401
    from ..layers import sd_settings
    return float(sd_settings(timm.create_model(model_name))['drop_path_rate'])


def _drop_path_rate(model_name: str, configured: Any) -> float:
    return _default_drop_path_rate(model_name) if configured is None else float(configured)


def _depth_label(rate: float) -> str:
    """``drop_path_rate`` as a card shows it; 0 is the constant-depth control."""
    return f'{rate:g} (constant depth)' if rate == 0 else f'{rate:g}'


def _hours(seconds: float) -> str:
    return f'{seconds / 3600:.2f} h'


def _published(weights: Path) -> List[str]:
    from ..models.flops import count_flops
    import timm
    import sdzoo  # noqa: F401
    rows, details = [], []
    for folder in sorted(p for p in weights.iterdir() if (p / 'validate.json').is_file()):
        v = json.loads((folder / 'validate.json').read_text())
        t = json.loads((folder / 'training.json').read_text()) if (folder / 'training.json').is_file() else {}
        cfg = json.loads((folder / 'config.json').read_text())
        margs = cfg.get('model_args', {})
        model = timm.create_model(cfg['architecture'], **{k: margs[k] for k in ('num_classes', 'in_chans') if k in margs})
        input_size = tuple(cfg.get('pretrained_cfg', {}).get('input_size') or model.pretrained_cfg['input_size'])
        params = sum(p.numel() for p in model.parameters())
        flops = count_flops(model, input_size)
        recipe = t.get('recipe', {})
        rows.append(
            f"| `{folder.name}` | {DATASET_NAMES.get(v.get('data'), {}).get('name', v.get('data'))} ({v.get('split')}, {v.get('images')} images) | "
            f"{v['top1']:.2f} | {v['top5']:.2f} | {params / 1e6:.2f}M | {flops / 1e6:.0f}M | "
            f"{'×'.join(map(str, input_size))} | {t.get('epochs', '?')} | "
            f"{_hours(t.get('wall_clock', 0))} | "
            f"{recipe.get('optimizer', 'sgd')}, lr {recipe.get('lr')}, {recipe.get('sched')}, "
            f"drop_path_rate {_depth_label(_drop_path_rate(cfg['architecture'], recipe.get('drop_path_rate')))} |")
        cmds = '\n'.join(t.get('commands', []))
        details.append(f"### `{folder.name}`\n\n"
                       f"Evaluation (`{folder.name}/validate.json`): top-1 {v['top1']:.2f}%, top-5 {v['top5']:.2f}%, "
                       f"loss {v['loss']:.4f} on {v.get('images')} {v.get('split')} images of "
                       f"{data_location(v.get('data'), v.get('data_source'))}. Data split used in training: {t.get('data_split', '?')}."
                       + (f" {t['note']}" if t.get('note') else '')
                       + f"\n\nTrained on (every stretch of the run): {t.get('hardware', 'not recorded')}.\n\n"
                       f"```bash\n{cmds}\n```\n")
    if not rows:
        return ['No weights are published yet.\n']
    head = ('| weight | data set (split) | top-1 % | top-5 % | params | FLOPs | input | epochs | '
            'training wall clock | recipe |\n|---|---|---:|---:|---:|---:|---|---:|---:|---|')
    return [head] + rows + [''] + details


def data_location(data: Optional[str], source: Optional[str]) -> str:
    """A data set by name and a location that holds on any machine: ``$SDZOO_DATA/…`` (default
    ``../shared/datasets`` beside the project) instead of one machine's absolute path."""
    name = DATASET_NAMES.get(data or '', {}).get('name', data or 'the data set')
    if not source:
        return name
    path = Path(source)
    if path.is_absolute():
        parts = path.parts
        if 'datasets' in parts:  # <anything>/datasets/cifar10 -> $SDZOO_DATA/cifar10
            path = Path('$SDZOO_DATA', *parts[len(parts) - parts[::-1].index('datasets'):])
        else:
            path = Path(path.name)
    return f'{name}, `{path.as_posix()}`'


def _int8(weights: Path) -> List[str]:
    """INT8 rows from ``weights/<model>.<tag>/int8.json`` (``sdzoo export --int8 --int8-record``)."""
    rows, cmds = [], []
    for folder in sorted(p for p in weights.iterdir() if (p / 'int8.json').is_file()):
        r = json.loads((folder / 'int8.json').read_text())
        t, g, q = r['test'], r['gate'], r['quantization']
        calib = f"{q['calibration_method']}, {q['calibration_images']} train images" if q.get('calibration_method') else 'none'
        rows.append(f"| `{folder.name}` | {q['format']}, per-channel {'yes' if q['per_channel'] else 'no'}, "
                    f"activations {q['activations']} | {calib} | {t['top1_fp32']:.2f} | {t['top1_int8']:.2f} | "
                    f"{-t['drop_points']:+.2f} | {t['images']} | {g['top1_fp32']:.2f} / {g['top1_int8']:.2f} "
                    f"({g['images']} {g['split']}) | {r['bytes'] / 1e6:.2f} / {r['fp32_bytes'] / 1e6:.2f} MB |")
        if r.get('command') and r['command'] not in cmds:
            cmds.append(r['command'])
    if not rows:
        return []
    return ['## INT8 (onnxruntime static quantization)', '',
            'The INT8 ONNX models `sdzoo export --int8` writes next to the fp32 ones (`export/<name>_int8/`), '
            'measured side by side with their fp32 export on the full test split (`weights/<model>.<tag>/int8.json`); '
            'the gate column is the accuracy check the export passed before writing the file. Speed: README '
            '"Benchmarks" and docs/int8.md.', '',
            '| weight | quantization | calibration | test top-1 fp32 % | test top-1 INT8 % | change (points) '
            '| test images | gate fp32 / INT8 % | INT8 / fp32 size |',
            '|---|---|---|---:|---:|---:|---:|---|---:|'] + rows + [''] + [
            '```bash\n' + '\n'.join(cmds) + '\n```\n' if cmds else '']


def _in_training(runs: Path) -> List[str]:
    out = []
    for run in sorted(p for p in runs.glob('*') if (p / 'metrics.csv').is_file() and not (p / 'summary.json').exists()):
        cfg = json.loads((run / 'config.json').read_text()) if (run / 'config.json').exists() else {}
        with open(run / 'metrics.csv', newline='') as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue
        last = rows[-1]
        sessions = json.loads((run / 'sessions.json').read_text()) if (run / 'sessions.json').exists() else []
        # the pace of the latest whole epochs: early ones may have used an older default, and an epoch in which a
        # session started counts the interrupted part twice or ran on two machines
        whole = clean_epoch_labels(sessions, int(last['epoch'])) if sessions else {}
        recent = [r for r in rows if int(r['epoch']) in whole][-3:] or rows[-3:]
        pace = statistics.median(float(r['epoch_seconds']) for r in recent)
        left = max(0, int(cfg.get('epochs') or 0) - int(last['epoch']))
        where = hardware_summary(sessions, int(last['epoch'])) if sessions else 'not recorded'
        sd = _depth_label(_drop_path_rate(cfg['model'], cfg.get('drop_path_rate')))
        out.append(f"| `{run.name}` | {cfg.get('model')} on {cfg.get('data')}, drop_path_rate {sd} | {last['epoch']}/{cfg.get('epochs')} | "
                   f"{float(last['val_top1']):.2f} | {pace / 60:.1f} min | {_hours(left * pace)} | {where} | "
                   f"`sdzoo train --resume {run.relative_to(runs.parent)}` |")
    if not out:
        return ['No runs in progress.\n']
    return ['| run | model / data | epochs done | val top-1 % (trainer, last epoch) | epoch time (median of the last 3 whole epochs) '
            '| training time to go at that pace | trained on | resume with |',
            '|---|---|---:|---:|---:|---:|---|---|'] + out + ['']


def _published_runs(weights: Path) -> Dict[str, str]:
    """Run-directory name -> weight folder, from the training command each published folder records."""
    out: Dict[str, str] = {}
    for folder in sorted(p for p in weights.glob('*') if (p / 'training.json').is_file()):
        for cmd in json.loads((folder / 'training.json').read_text()).get('commands', []):
            words = cmd.split()
            for flag, value in zip(words, words[1:]):
                if flag == '--out':
                    out[Path(value).name] = folder.name
    return out


def _finished(runs: Path, weights: Path) -> List[str]:
    """Every finished run with the test result its trainer measured: the published ones beside the
    controls (e.g. constant depth) that are trained only to be compared with them."""
    published = _published_runs(weights)
    out = []
    for run in sorted(p for p in runs.glob('*') if (p / 'summary.json').is_file()):
        summary = json.loads((run / 'summary.json').read_text())
        cfg = json.loads((run / 'config.json').read_text()) if (run / 'config.json').exists() else {}
        test = summary.get('test')
        if not test:
            continue
        rate = _drop_path_rate(summary['model'], cfg.get('drop_path_rate'))
        data = DATASET_NAMES.get(summary.get('data'), {}).get('name', summary.get('data'))
        out.append(f"| `{run.name}` | {summary.get('model')} | {data} | {_depth_label(rate)} | "
                   f"{summary.get('epochs')} | {test['top1']:.2f} | {test['top5']:.2f} | {test['images']} | "
                   f"{summary.get('train_hours', 0):.2f} h | "
                   f"{'`' + published[run.name] + '`' if run.name in published else 'not published'} |")
    if not out:
        return ['No run has finished yet.\n']
    return ['| run | model | data set | drop_path_rate | epochs | test top-1 % | test top-5 % | test images '
            '| training time | published as |', '|---|---|---|---:|---:|---:|---:|---:|---:|---|'] + out + ['']


def render_cards(root: Path = _REPO_ROOT) -> str:
    parts = [
        '# Model cards',
        '',
        'Generated by `sdzoo cards` from the evaluation files committed with the weights: every number in '
        'the first table comes from `sdzoo validate` on the published folder (`weights/<model>.<tag>/validate.json`), '
        'params and FLOPs (forward, multiply-add = 2, full-depth eval network) from the model itself. CIFAR-10 here '
        'is **CIFAR-10 (JPEG q75 copy)** of `../shared/datasets/cifar10`: close to, but not exactly comparable '
        'with, published numbers on the lossless original. Hardware: the project\'s 2-core CPUs, no GPU; each '
        'run records the CPU and precision of every stretch it trained (`runs/<run>/sessions.json`): long runs '
        'span machines, and epoch times differ between them (listed below each weight).',
        '',
        '`pretrained=True` loads the copies shipped in the package (`weights/`, `sdzoo/_weights` in the wheel): '
        'they load offline. The Hugging Face Hub repos `sdzoo/<model>.<tag>` are the publishing target: they are '
        'not published yet (`sdzoo push weights/<model>.<tag>` publishes one).',
        '',
        '## Published weights',
        '',
    ] + _published(root / 'weights') + _int8(root / 'weights') + [
        '## Finished runs',
        '',
        'The test result each finished run\'s trainer measured at its end (`runs/<run>/summary.json`, fp32, '
        'full-depth eval network), published or not: controls such as a constant-depth network '
        '(`drop_path_rate 0`, every block every step) are trained only to be set beside the stochastic-depth '
        'runs on the same data and recipe. Published weights are measured again by `sdzoo validate` above.',
        '',
    ] + _finished(root / 'runs', root / 'weights') + [
        "## The paper's comparison on our data",
        '',
        'Huang et al.\'s central claim is a pair: ResNet-110 with stochastic depth trains about 25% faster per epoch '
        '*and* reaches a lower test error than the same network at constant depth. Here each constant-depth control '
        '(`drop_path_rate 0`, every block every step) is set beside the stochastic-depth run with the same recipe, '
        'on CIFAR-10 (JPEG q75 copy). Epoch times are compared on one machine only, as medians of whole epochs of the '
        'real recipe (`sdzoo train`, the same data pipeline and precision) alternated SD, constant, constant, SD by '
        '`python benchmarks/epoch_time.py` (`benchmarks/results/epoch_time_*.json`), and of the runs\' own epochs '
        'where both trained on one hardware stretch (`sessions.json`): the project\'s CPUs differ 3-4x, so times '
        'across machines are not compared. The picture\'s hours axis uses the side-by-side epoch times. '
        'The per-step speed-up is measured side by side in one process, SD and constant depth alternating step by '
        'step on one machine (`python benchmarks/train_speed.py`, `benchmarks/results/train_speed_*.json`): '
        'the figure that does not depend on which machine a run landed on. Test errors are `sdzoo validate` on the '
        '10,000 test images; where both runs recorded each image\'s top-1 hit, the difference is paired image by '
        'image: McNemar\'s exact test on the images the two networks disagree on, and a 95% interval. '
        'The paper\'s numbers are for 500 epochs on the lossless original on a GPU.',
        '',
    ] + comparison_section(load_runs(root / 'runs', _default_drop_path_rate), COMPARISON_FIGURE,
                           load_step_benchmarks(root / 'benchmarks' / 'results'),
                           load_epoch_benchmarks(root / 'benchmarks' / 'results')) + depth_section(root / 'benchmarks' / 'results') + [
        '## Runs in progress',
        '',
        'Long runs train across working sessions; their resumable checkpoints (`runs/<run>/last.pt`) are committed. '
        'Validation accuracy here is the trainer\'s own end-of-epoch measurement on the 5,000 held-out training '
        'images, not a test result.',
        '',
    ] + _in_training(root / 'runs')
    return '\n'.join(parts).rstrip() + '\n'


DEPTH_STRATEGIES = (('survival', 'survival'), ('survival_bn', 'survival + BN'), ('greedy', 'greedy (+ BN)'),
                    ('greedy_heal', 'greedy + BN + heal'))


def paired_table(paired: List[Dict[str, Any]]) -> List[str]:
    """SD against constant depth per strategy and cut (``benchmarks/depth.py``'s paired rows), as a markdown table."""
    out = ['| strategy | blocks removed | SD top-1 % | constant top-1 % | SD - constant error (points) | 95% interval '
           '| McNemar p | |', '|---|---:|---:|---:|---:|---|---:|---|']
    for r in paired:
        out.append(f"| {r['strategy']} | {r['removed']} | {r['sd_top1']:.2f} | {r['constant_top1']:.2f} | "
                   f"{r['sd_minus_constant_error']:+.2f} | [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] | "
                   f"{r['p_value']:.3g} | {'differ' if r['differs'] else 'not distinguishable'} |")
    return out + ['']


def latency_base(rows: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The full-depth fp32 graph of one latency run: what its speed-ups are measured against."""
    return next((r for r in rows.values() if r.get('precision') == 'fp32'
                 and r.get('keep') == max(x.get('keep', 0) for x in rows.values())), None)


def latency_title(run: Dict[str, Any]) -> str:
    """What one latency table timed: its thread count and where its graphs came from."""
    graphs = ('the graphs `sdzoo export --keep-blocks N --int8 --data cifar10 --repository DIR` wrote (greedy + BN + '
              'heal)' if run.get('graphs') == 'export' else 'greedy + BN graphs built by benchmarks/depth.py (not healed)')
    threads = f"{run['threads']} intra-op thread(s)" if run.get('threads') else 'intra-op threads not recorded'
    turn = run.get('runs_per_turn', 1)
    warm = (f', {turn} consecutive runs per graph per turn (a graph serving a stream of requests: its weights stay '
            'in cache)') if turn > 1 else ''
    return f'{threads}, {graphs}{warm}'


def depth_section(results: Path) -> List[str]:
    """Depth on demand from ``benchmarks/results/depth.json`` (``python benchmarks/depth.py``): top-1 against blocks
    removed per model and strategy, and the measured ONNX latency of the pruned exports."""
    path = Path(results) / 'depth.json'
    if not path.is_file():
        return []
    d = json.loads(path.read_text(encoding='utf-8'))
    meta, cells = d.get('meta') or {}, d.get('cells') or []
    out = ['## Depth on demand (`sdzoo.prune_depth`, `sdzoo export --keep-blocks N`)', '',
           'One trained network served at fewer residual blocks: a removed block becomes its parameter-free shortcut, '
           'no retraining. Top-1 on the full CIFAR-10 (JPEG q75 copy) test split, from `benchmarks/results/depth.json` '
           f"(`python benchmarks/depth.py`; every command in `benchmarks/results/depth.md`; {meta.get('machine', '?')}; "
           f"cells {meta.get('first_date', '?')} to {meta.get('last_date', '?')}). **survival**: the lowest-survival "
           '(deepest) blocks go; **survival + BN**: the same, then BatchNorm statistics re-estimated on 2,000 training '
           'images; **greedy**: the block whose removal changes the output least on 500 held-out training images, '
           'repeatedly, then the same BN re-estimation; **heal**: then a short distillation from the full network on '
           'training images (300 steps, what `prune_depth` and `sdzoo export --keep-blocks` do by default when given '
           'data; `heal_steps=0` / `--heal-steps 0`: off). "–": not measured yet.', '']
    for key, model in (d.get('models') or {}).items():
        mine = [c for c in cells if c.get('model') == key]
        if not mine:
            continue
        full = next((c for c in mine if c.get('strategy') == 'full'), None)
        cuts = sorted({int(c['removed']) for c in mine} | set(int(x) for x in model.get('cuts') or ()))
        total = mine[0].get('blocks_total')
        out += [f"### {model.get('label', key)}", '',
                '| blocks removed | kept | ' + ' | '.join(f'{label} top-1 %' for _, label in DEPTH_STRATEGIES) + ' |',
                '|---:|---:|' + '---:|' * len(DEPTH_STRATEGIES)]
        for cut in cuts:
            vals = []
            for strategy, _ in DEPTH_STRATEGIES:
                c = full if cut == 0 else next((c for c in mine if c.get('strategy') == strategy
                                                 and int(c['removed']) == cut), None)
                vals.append(f"{c['top1']:.2f}" if c else '–')
            out.append(f"| {cut} | {total - cut if total else '?'} | " + ' | '.join(vals) + ' |')
        out.append('')
    paired = d.get('paired') or []
    if paired:
        out += ['### SD against constant depth, 160 epochs each, paired on the full test split', '',
                'The two ResNet-110 runs above with the same recipe and length; error difference SD minus constant in '
                "points (negative: SD better), the exact 95% interval that agrees with McNemar's exact test.", '',
                ] + paired_table(paired)
    latencies = d.get('latencies') or []
    if latencies:
        out += ['### Latency of the pruned exports (sd_resnet110.sd_cifar10)', '',
                'onnxruntime, every graph round-robin in one process, one table per CPU, thread count and graph '
                'source: median batch-1 latency and batch-64 throughput (`python benchmarks/depth.py --phase '
                'latency`; the command of each run is in benchmarks/results/depth.md).', '']
    for lat in latencies:
        rows = lat.get('rows') or {}
        base = latency_base(rows)
        out += [f"{lat.get('machine', '?')}, {lat.get('date', '?')}, {latency_title(lat)}:", '',
                '| blocks kept | precision | batch-1 ms | batch-1 speed-up | batch-64 images/s | test top-1 % |',
                '|---:|---|---:|---:|---:|---:|']
        for r in sorted(rows.values(), key=lambda r: (-r['keep'], r['precision'])):
            speed = f"{base['batch1_median_ms'] / r['batch1_median_ms']:.2f}x" if base else '–'
            out.append(f"| {r['keep']} | {r['precision']} | {r['batch1_median_ms']:.2f} | {speed} | "
                       f"{r['batch64_images_per_s']:.0f} | {r['top1']:.2f} |")
        out.append('')
    if (Path(results) / 'depth.png').is_file():
        out += ['![accuracy against blocks kept and batch-1 speed-up](benchmarks/results/depth.png)', '']
    return out


def write_cards(root: Path = _REPO_ROOT) -> Path:
    path = root / 'MODEL_CARDS.md'
    plot_comparison(load_runs(root / 'runs', _default_drop_path_rate), root / COMPARISON_FIGURE,
                    load_epoch_benchmarks(root / 'benchmarks' / 'results'))
    return atomic_write_text(path, render_cards(root))


def _cmd_cards(args: argparse.Namespace) -> int:
    print(f'wrote {write_cards(Path(args.root))}')
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('cards', help='regenerate MODEL_CARDS.md from the committed evaluation files')
    p.add_argument('--root', default=str(_REPO_ROOT), help='repository root')
    p.set_defaults(func=_cmd_cards)
