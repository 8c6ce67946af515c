"""Depth on demand (issue 50): what ``sdzoo.prune_depth`` leaves of a network's accuracy, and what it buys.

Phase ``accuracy`` (CPU-heavy, needs no quiet machine): top-1 on the full CIFAR-10 test split (the JPEG q75
copy at $SDZOO_DATA/cifar10) with 0..k residual blocks removed, per model and strategy:

  * ``survival``    the lowest-survival-probability (deepest) blocks go, nothing else changes
  * ``survival_bn`` the same blocks, then BatchNorm re-estimation (what ``prune_depth(..., data=...)`` does)
  * ``greedy``      KL-greedy on held-out training images + BatchNorm re-estimation (``prune_depth``'s default)

Greedy's removal order is computed once, for the largest cut (``greedy_order`` is sequential, so every
smaller cut is a prefix of it), then each cut applies its prefix and re-estimates the BatchNorms on the same
training images ``prune_depth`` draws (``load_images(..., 'train', bn_images, seed + 1)``); ``--verify``
checks one cut against ``prune_depth``'s own result (same blocks, same tensors, same test predictions).
Calibration images come from the training split's held-out val part, never the test split.

Phase ``latency`` (needs a quiet machine): sd_resnet110.sd_cifar10 at keep 54 / 42 / 36 (greedy), exported to
ONNX fp32 and INT8 (``sdzoo.export_onnx`` / ``quantize_onnx``, what ``sdzoo export --keep-blocks N --int8``
runs), onnxruntime with ``--threads`` intra-op threads (several: one session per graph and thread count), no
spinning, all sessions round-robin in one process: batch-1 latency (median of ``--iters`` runs) and batch-64
throughput (median of ``--iters64`` runs), plus each graph's top-1 on the full test split. When ``sdzoo export
--int8``'s accuracy gate would refuse a graph, the table says so and the graph is quantized without the gate to
be timed anyway. ``--repository DIR`` times the entries ``sdzoo export [--keep-blocks N] --int8 --repository DIR``
wrote instead (greedy + BN + heal: exactly what a user gets). Runs with fewer than 200 / 20 timed runs or fewer
than all test images are smoke tests: WORK/latency_smoke.json only, never the results.

    nice -n 10 python benchmarks/depth.py --phase accuracy                      # all models, resumes
    nice -n 10 python benchmarks/depth.py --phase accuracy --models r56 vit --strategies survival greedy
    python benchmarks/depth.py --phase latency                                   # quiet machine only
    python benchmarks/depth.py --phase latency --threads 1 2 --repository /tmp/dexp/repo   # sdzoo export's graphs
    python benchmarks/depth.py --phase latency --work /tmp/depth/latsmoke --calibration-images 8 --bn-images 50 \
        --iters 3 --iters64 2 --warmup 1 --test-images 200 --int8-calibration-images 32 --int8-eval-images 100 \
        --no-report                                                              # smoke test (minutes)
    python benchmarks/depth.py --phase report                                    # depth.md/.json/.png again

Every measured cell is appended to ``WORK/accuracy.jsonl`` (one line each, with its wall time), the greedy
orders to ``WORK/greedy.jsonl``: a restarted run skips what is there. ``--phase report`` (also run at the
end of each phase) writes ``benchmarks/results/depth.{md,json,png}`` from those files.
"""
from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from machine import busy_note, cpu_busy, describe  # benchmarks/machine.py
from results_file import append_jsonl, write_atomic  # benchmarks/results_file.py
from sdzoo.reports.cards import latency_base, latency_title, paired_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / 'benchmarks' / 'results'
DATA = 'cifar10'
DATA_NAME = 'CIFAR-10 JPEG q75 copy'

# key: (label, timm name, pretrained, checkpoint-from-git, full-depth top-1 to reproduce, blocks-removed cuts)
MODELS = {
    'r110': dict(label='SD ResNet-110, 300 ep (shipped sd_resnet110.sd_cifar10)', name='sd_resnet110',
                 pretrained=True, cuts=(0, 6, 12, 18, 24), expect=91.02),
    'r110_sd160': dict(label='SD ResNet-110, 160 ep (runs/sd_resnet110-cifar10)', name='sd_resnet110',
                       git='e598052^:runs/sd_resnet110-cifar10/last.pt', file='sd160.pt',
                       cuts=(0, 6, 12, 18, 24), expect=90.07),
    'r110_nosd160': dict(label='constant-depth ResNet-110, 160 ep (runs/sd_resnet110-cifar10-nosd, the control)',
                         name='sd_resnet110', git='b2443b7:runs/sd_resnet110-cifar10-nosd/last.pt',
                         file='nosd160.pt', cuts=(0, 6, 12, 18, 24), expect=89.82),
    'r56': dict(label='SD ResNet-56 (shipped sd_resnet56.sd_cifar10)', name='sd_resnet56', pretrained=True,
                cuts=(0, 3, 6, 9, 12)),
    'vit': dict(label='SD ViT-Lite-7/4 (shipped sd_vit_lite_patch4_32.sd_cifar10)', name='sd_vit_lite_patch4_32',
                pretrained=True, cuts=(0, 1, 2, 3)),
}
STRATEGIES = ('survival', 'survival_bn', 'greedy', 'greedy_heal')
LATENCY_KEEP = (54, 42, 36)


def _log(msg: str) -> None:
    print(f'[{time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def _read_jsonl(path: Path) -> List[Dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------------
# models and data

def build_model(key: str, work: Path):
    import torch  # noqa: F401
    import sdzoo
    from sdzoo.models.load import create_model
    sdzoo.register_models()
    spec = MODELS[key]
    if spec.get('git'):
        ckpt = work / spec['file']
        if not ckpt.is_file():  # finished runs keep their checkpoints in git history only (runs/README.md)
            blob = subprocess.run(['git', '-C', str(REPO), 'show', spec['git']], capture_output=True, check=True).stdout
            tmp = ckpt.with_suffix('.tmp')
            tmp.write_bytes(blob)
            tmp.rename(ckpt)
        return create_model(spec['name'], checkpoint=ckpt)
    return create_model(spec['name'], pretrained=True)


def test_set(model, work: Path, limit: Optional[int] = None):
    """``(x, y)`` of the test split, preprocessed as ``sdzoo validate`` does; cached per normalization."""
    from sdzoo.export.quantize import load_labelled_images
    from sdzoo.models.load import data_config
    cfg = data_config(model)
    tag = hashlib.sha1(json.dumps([cfg['input_size'], cfg['mean'], cfg['std']]).encode()).hexdigest()[:10]
    fx, fy = work / f'test_{tag}_x.npy', work / f'test_{tag}_y.npy'
    if fx.is_file() and fy.is_file():
        x, y = np.load(fx, mmap_mode='r'), np.load(fy)
    else:
        x, y, _ = load_labelled_images(DATA, 'test', cfg['input_size'], model.num_classes, cfg['mean'], cfg['std'])
        tmp = fx.with_suffix(f'.{os.getpid()}.npy')  # runs side by side may both write it
        np.save(tmp, x)
        os.replace(tmp, fx)
        tmp = fy.with_suffix(f'.{os.getpid()}.npy')
        np.save(tmp, y)
        os.replace(tmp, fy)
    if limit:
        x, y = x[:limit], y[:limit]
    return np.array(x), y  # a writable in-memory copy (torch.from_numpy warns on the read-only memory map)


def predict(model, x: np.ndarray, batch: int = 250) -> np.ndarray:
    import torch
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy()
                               for i in range(0, len(x), batch)])


def _packbits(hits: np.ndarray) -> str:
    return base64.b64encode(np.packbits(hits.astype(bool))).decode()


def remove_blocks(model, names: List[str]):
    """An eval copy of ``model`` with the named residual blocks replaced by their shortcut, as prune_depth does."""
    from sdzoo.models.depth import remove_blocks as remove_in_place
    return remove_in_place(copy.deepcopy(model).eval(), names)


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------
# phase 1: accuracy vs depth

def greedy_removal_order(key: str, model, work: Path, n_remove: int, calibration_images: int, seed: int,
                         results: Path = RESULTS) -> Dict:
    """The greedy order for ``n_remove`` removals (cached in WORK/greedy.jsonl or recorded in the committed
    depth.json; a longer cached one serves)."""
    import torch
    from sdzoo.models.depth import greedy_order, load_images
    path = work / 'greedy.jsonl'
    for row in _read_jsonl(path) + _previous(results).get('greedy', []):
        if (row['model'] == key and row['calibration_images'] == calibration_images and row['seed'] == seed
                and len(row['order']) >= n_remove):
            return row
    calib, desc = load_images(model, DATA, 'val', calibration_images, seed)
    _log(f'{key}: greedy order for {n_remove} removals on {desc}')
    t0 = time.time()
    order = greedy_order(model, calib, n_remove, log=lambda m: _log(f'{key}: {m} ({time.time() - t0:.0f} s)'))
    row = dict(model=key, calibration_images=calibration_images, seed=seed, calibration=desc,
               order=[n for n, _ in order], kl=[round(k, 6) for _, k in order], seconds=round(time.time() - t0, 1),
               threads=torch.get_num_threads(), machine=describe(), date=time.strftime('%Y-%m-%d %H:%M:%S'))
    append_jsonl(path, row)
    return row


def run_accuracy(args) -> None:
    import torch
    from sdzoo.models.depth import bn_recalibrate, heal, load_images, residual_blocks
    torch.set_num_threads(args.eval_threads)
    work = Path(args.work)
    cells_path = work / 'accuracy.jsonl'
    for key in args.models:
        spec = MODELS[key]
        done = {(r['model'], r['strategy'], r['removed']) for r in _read_jsonl(cells_path)
                + _previous(Path(args.results)).get('cells', []) if r.get('test_images') == (args.test_images or 10000)}
        cuts = spec['cuts']
        # the largest cut first, then the middle one, then the rest: a run cut short still spans the range
        nonzero = [c for c in cuts if c]
        spread = list(dict.fromkeys([nonzero[-1], nonzero[(len(nonzero) - 1) // 2]] + nonzero))
        todo = [(s, c) for s in args.strategies for c in spread if (key, s, c) not in done]
        if (key, 'full', 0) in done and not todo and not (args.verify and args.verify.split(':')[0] == key):
            _log(f'{key}: all cells cached')
            continue
        model = build_model(key, work)
        infos = residual_blocks(model)
        x, y = test_set(model, work, args.test_images)
        _log(f'{key}: {len(infos)} residual blocks, {len(y)} test images')

        def cell(strategy: str, removed_names: List[str], t0: float, extra: Dict, pruned) -> None:
            t_eval = time.time()
            pred = predict(pruned, x)
            hits = pred == y
            row = dict(model=key, name=spec['name'], strategy=strategy, removed=len(removed_names),
                       kept=len(infos) - len(removed_names), blocks_total=len(infos), top1=round(100 * hits.mean(), 2),
                       test_images=len(y), params=_n_params(pruned), removed_blocks=removed_names,
                       eval_seconds=round(time.time() - t_eval, 1), seconds=round(time.time() - t0, 1),
                       hits=_packbits(hits), date=time.strftime('%Y-%m-%d %H:%M:%S'), command=_command(), **extra)
            append_jsonl(cells_path, row)
            _log(f"{key} {strategy} -{row['removed']}: top-1 {row['top1']:.2f} ({row['seconds']:.0f} s)")

        if (key, 'full', 0) not in done:
            cell('full', [], time.time(), {}, model)
        bn_x = bn_desc = None
        if any(s in ('survival_bn', 'greedy', 'greedy_heal') for s, _ in todo) or args.verify:
            bn_x, bn_desc = load_images(model, DATA, 'train', args.bn_images, args.seed + 1)
        survival_order = [b.name for b in sorted((b for b in infos if not b.downsampling),
                                                 key=lambda b: (b.survival_prob, -b.index))]
        greedy = heal_x = None
        for strategy, c in todo:
            t0 = time.time()
            if strategy in ('greedy', 'greedy_heal'):
                if greedy is None:  # once, for the largest cut: smaller cuts are its prefixes
                    greedy = greedy_removal_order(key, model, work, max(cuts), args.calibration_images, args.seed,
                                                    Path(args.results))
                names = greedy['order'][:c]
                extra = dict(calibration=greedy['calibration'], greedy_seconds=greedy['seconds'],
                             kl=greedy['kl'][c - 1])
            else:
                names = survival_order[:c]
                extra = {}
            pruned = remove_blocks(model, names)
            if strategy in ('greedy', 'survival_bn', 'greedy_heal'):
                extra['bn_recalibrated'] = bn_recalibrate(pruned, bn_x)
                extra['bn_images'] = bn_desc
            if strategy == 'greedy_heal':  # what prune_depth(..., heal_steps=N) does after the BN re-estimation
                if heal_x is None:
                    heal_x, heal_desc = load_images(model, DATA, 'train', args.heal_images, args.seed + 2)
                torch.set_num_threads(args.threads[0])
                extra['heal'] = dict(heal(pruned, model, heal_x, args.heal_steps, lr=args.heal_lr, seed=args.seed),
                                     images=heal_desc)
                torch.set_num_threads(args.eval_threads)
            cell(strategy, names, t0, extra, pruned)
        if args.verify and args.verify.split(':')[0] == key:
            verify(key, model, work, int(args.verify.split(':')[1]), args, x, y, bn_x)
        del model


def verify(key: str, model, work: Path, cut: int, args, x, y, bn_x) -> None:
    """prune_depth's own greedy result at ``cut`` removed against prefix-of-the-longest-order + BN re-estimation."""
    import torch
    import sdzoo
    from sdzoo.models.depth import bn_recalibrate, residual_blocks
    path = work / 'verify.jsonl'
    if any(r['model'] == key and r['removed'] == cut for r in _read_jsonl(path)):
        return
    infos = residual_blocks(model)
    longest = greedy_removal_order(key, model, work, max(MODELS[key]['cuts']), args.calibration_images,
                                   args.seed, Path(args.results))
    t0 = time.time()
    theirs = sdzoo.prune_depth(model, keep=len(infos) - cut, strategy='greedy', data=DATA,
                               calibration_images=args.calibration_images, bn_images=args.bn_images, heal_steps=0,
                               seed=args.seed)
    seconds = time.time() - t0
    mine = remove_blocks(model, longest['order'][:cut])
    bn_recalibrate(mine, bn_x)
    sd_t, sd_m = theirs.state_dict(), mine.state_dict()
    same_keys = sd_t.keys() == sd_m.keys()
    max_tensor = max(float((sd_t[k].double() - sd_m[k].double()).abs().max()) if sd_t[k].numel() else 0.0
                     for k in sd_t) if same_keys else None
    with torch.inference_mode():
        lt, lm = theirs(torch.from_numpy(x[:1000])), mine(torch.from_numpy(x[:1000]))
    pt, pm = predict(theirs, x), predict(mine, x)
    row = dict(model=key, removed=cut, prune_depth_removed=theirs.pretrained_cfg['depth']['removed_blocks'],
               prefix_removed=sorted(longest['order'][:cut], key=[b.name for b in infos].index),
               same_blocks=set(theirs.pretrained_cfg['depth']['removed_blocks']) == set(longest['order'][:cut]),
               same_state_keys=same_keys, max_abs_tensor_diff=max_tensor,
               max_abs_logit_diff_1000=float((lt - lm).abs().max()),
               same_test_predictions=int((pt == pm).sum()), test_images=len(y),
               top1_prune_depth=round(100 * float((pt == y).mean()), 2), top1_prefix=round(100 * float((pm == y).mean()), 2),
               prune_depth_seconds=round(seconds, 1), depth_record={k: v for k, v in theirs.pretrained_cfg['depth'].items()
                                                                    if k not in ('kept_blocks', 'removed_blocks')},
               date=time.strftime('%Y-%m-%d %H:%M:%S'))
    append_jsonl(path, row)
    _log(f"{key}: verify -{cut}: same blocks {row['same_blocks']}, max |dtensor| {max_tensor}, "
         f"max |dlogit| {row['max_abs_logit_diff_1000']:.2e}, same predictions {row['same_test_predictions']}/{len(y)}")


# ----------------------------------------------------------------------------------------------------
# phase 2: latency (quiet machine)

def run_latency(args) -> Dict:
    import torch
    import onnxruntime
    import sdzoo
    from sdzoo.export.quantize import QuantizationError, quantize_onnx, top1
    from sdzoo.models.depth import bn_recalibrate, load_images, residual_blocks
    from sdzoo.runtime import OrtModel
    torch.set_num_threads(1)
    work = Path(args.work)
    gdir = work / 'latency_graphs'
    gdir.mkdir(parents=True, exist_ok=True)
    key = 'r110'
    model = build_model(key, work)
    infos = residual_blocks(model)
    n_total = len(infos)
    files: Dict[str, Dict] = {}
    greedy = None
    for keep in args.keep if not args.repository else ():
        cut = n_total - keep
        fp32, int8 = gdir / f'keep{keep}.fp32.onnx', gdir / f'keep{keep}.int8.onnx'
        if not (fp32.is_file() and int8.is_file()):
            if cut:
                if greedy is None:  # the same order (and calibration) phase 1 used; smaller cuts are prefixes
                    greedy = greedy_removal_order(key, model, work, max(n_total - k for k in args.keep),
                                                  args.calibration_images, args.seed, Path(args.results))
                    bn_x, _ = load_images(model, DATA, 'train', args.bn_images, args.seed + 1)
                pruned = remove_blocks(model, greedy['order'][:cut])
                bn_recalibrate(pruned, bn_x)
                pruned.pretrained_cfg = dict(pruned.pretrained_cfg or {}, depth=dict(
                    strategy='greedy', blocks_total=n_total, removed_blocks=greedy['order'][:cut],
                    kept_blocks=[b.name for b in infos if b.name not in set(greedy['order'][:cut])],
                    calibration=greedy['calibration']))
            else:
                pruned = model
            _log(f'latency: export keep {keep}')
            sdzoo.export_onnx(pruned, fp32, model_name='sd_resnet110', tag='sd_cifar10', write_report=False,
                              dynamo=args.exporter == 'dynamo')
            kw = {} if args.int8_calibration_images is None else dict(calibration_images=args.int8_calibration_images)
            kw.update(data=DATA, eval_images=args.int8_eval_images, write_report=False)
            try:  # what `sdzoo export --int8` would do
                gate = dict(quantize_onnx(fp32, int8, **kw)['accuracy'], refused=None)
            except QuantizationError as e:  # the export would refuse: still time the graph, and say so
                _log(f'latency: keep {keep}: INT8 gate refused ({str(e)[:160]}...); quantized without the gate')
                gate = dict(quantize_onnx(fp32, int8, max_accuracy_drop=100.0, **kw)['accuracy'], refused=str(e))
            (gdir / f'keep{keep}.int8.gate.json').write_text(json.dumps(gate))
        gate = json.loads((gdir / f'keep{keep}.int8.gate.json').read_text())
        files[f'keep{keep}_fp32'] = dict(keep=keep, precision='fp32', path=str(fp32))
        files[f'keep{keep}_int8'] = dict(keep=keep, precision='int8', path=str(int8), gate=gate)
    if args.repository:
        files = repository_graphs(Path(args.repository), n_total)
    x_test, y_test = test_set(model, work, args.test_images)
    del model
    busy0 = cpu_busy()
    # one session per graph and thread count, all timed round-robin: drift hits every graph and thread count alike
    cells = {(k, t): dict(v) for t in args.threads for k, v in files.items()}
    sessions = {c: OrtModel(v['path'], intra_op_num_threads=c[1], inter_op_num_threads=1,
                            providers=['CPUExecutionProvider'], session_config={'session.intra_op.allow_spinning': '0'})
                for c, v in cells.items()}
    rng = np.random.default_rng(0)
    for batch, iters in ((1, args.iters), (64, args.iters64)):
        xb = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
        for _ in range(args.warmup):
            for s in sessions.values():
                s.run(xb)
        times: Dict = {c: [] for c in sessions}
        turn = min(args.runs_per_turn, iters)
        for _ in range(-(-iters // turn)):
            for c, s in sessions.items():
                for _ in range(turn):  # 1: each graph's weights leave the cache between its calls
                    t0 = time.perf_counter()
                    s.run(xb)
                    times[c].append((time.perf_counter() - t0) * 1e3)
        for c, v in times.items():
            med = statistics.median(v)
            cells[c][f'batch{batch}_median_ms'] = med
            cells[c][f'batch{batch}_iters'] = iters
            if batch != 1:
                cells[c][f'batch{batch}_images_per_s'] = batch / (med / 1e3)
        _log(f'latency batch {batch}: ' + ', '.join(f'{k}@{t} {statistics.median(v):.2f} ms'
                                                    for (k, t), v in times.items()))
    busy1 = cpu_busy()
    for k in files:  # the thread count does not change the predictions: score each graph once
        hit = round(100 * top1(sessions[(k, args.threads[0])], x_test, y_test), 2)
        for t in args.threads:
            cells[(k, t)].update(top1=hit, test_images=len(y_test), path=Path(files[k]['path']).name)
    final = args.iters >= 200 and args.iters64 >= 20 and (args.test_images or 10000) == 10000
    graphs = 'export' if args.repository else 'greedy_bn'
    runs = [dict(final=final, rows={k: cells[(k, t)] for k in files}, threads=t, graphs=graphs,
                 warmup=args.warmup, iters=args.iters, iters64=args.iters64, runs_per_turn=args.runs_per_turn,
                 machine=describe(),
                 busy=busy_note(busy0, busy1), busy_before=busy0, busy_after=busy1,
                 onnxruntime=onnxruntime.__version__, torch=torch.__version__,
                 date=time.strftime('%Y-%m-%d %H:%M:%S'), command=_command(), thread_counts=list(args.threads))
            for t in args.threads]
    target = work / ('latency.json' if final else 'latency_smoke.json')
    write_atomic(target, json.dumps(runs, indent=2) + '\n')
    _log(f'latency: written {target}' + ('' if final else ' (smoke test: not a results file)'))
    return runs


def repository_graphs(repo: Path, n_total: int) -> Dict[str, Dict]:
    """The entries ``sdzoo export [--keep-blocks N] [--int8] --repository REPO`` wrote, keyed by entry name; blocks
    kept, precision and both gates (depth, INT8) read from each graph's sdzoo metadata."""
    import onnx
    files: Dict[str, Dict] = {}
    for path in sorted(repo.glob('*/1/model.onnx')):
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        depth = json.loads(meta['sdzoo.depth']) if meta.get('sdzoo.depth') else {}
        keep = len(depth['kept_blocks']) if depth else n_total
        precision = meta.get('sdzoo.precision', 'fp32')
        row = dict(keep=keep, precision=precision, path=str(path), entry=path.parent.parent.name,
                   heal=depth.get('heal'), strategy=depth.get('strategy'), depth_gate=depth.get('accuracy'))
        if precision == 'int8':
            row['gate'] = dict(json.loads(meta.get('sdzoo.accuracy') or '{}'), refused=None)
        files[row['entry']] = row  # two graphs may keep as many blocks (e.g. chosen by two strategies)
    if not files:
        raise SystemExit(f'{repo}: no */1/model.onnx entries (write them with sdzoo export --repository {repo})')
    full = [r['entry'] for r in files.values() if r['precision'] == 'fp32' and r['keep'] == n_total]
    if len(full) != 1:
        raise SystemExit(f'{repo}: the speed-ups are against one full-depth fp32 entry, found {len(full)}'
                         + (f' ({", ".join(full)})' if full else ' (add it: sdzoo export NAME --repository DIR)'))
    return dict(sorted(files.items(), key=lambda kv: (-kv[1]['keep'], kv[1]['precision'], kv[0])))


# ----------------------------------------------------------------------------------------------------
# report

def _command(argv=None) -> str:
    n = os.nice(0)
    return (f'nice -n {n} ' if n else '') + 'python benchmarks/depth.py ' + shlex.join(sys.argv[1:] if argv is None else argv)


def _machine_line() -> str:
    try:
        lscpu = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
        name = next(l.split(':', 1)[1].strip() for l in lscpu.splitlines() if l.startswith('Model name'))
    except (OSError, StopIteration):
        name = None
    return describe() + (f' (lscpu Model name: {name})' if name else '')


def plot(rows: List[Dict], out: Path, latencies: Optional[List[Dict]] = None) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    groups = [('ResNet-110 (54 blocks)', ('r110', 'r110_sd160', 'r110_nosd160')), ('ResNet-56 (27 blocks)', ('r56',)),
              ('ViT-Lite-7/4 (7 blocks)', ('vit',))]
    groups = [(t, ks) for t, ks in groups if any(r['model'] in ks for r in rows)]
    latencies = [r for r in latencies or [] if r['machine'] == latencies[-1]['machine']]  # one CPU: comparable
    lat = bool(latencies)
    fig, axes = plt.subplots(1, len(groups) + lat, figsize=(5.2 * (len(groups) + lat), 4.4), squeeze=False)
    if lat:  # speed-up against each machine's own full-depth fp32 graph: machines differ in absolute ms
        ax = axes[0][-1]
        for i, run in enumerate(latencies):
            base = latency_base(run['rows'])['batch1_median_ms']
            cpu = run['machine'].split(' (')[0]
            for prec, mk in (('fp32', 'o'), ('int8', 's')):
                pts = sorted(((base / r['batch1_median_ms'], r['top1'], r['keep']) for r in run['rows'].values()
                              if r['precision'] == prec), key=lambda p: -p[2])
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=mk, ls='-' if i == 0 else '--',
                        label=f"ONNX {prec}, {cpu}, {run['threads']} thr, {run.get('graphs', 'greedy_bn')}")
                for x_, y_, k in pts:
                    ax.annotate(str(k), (x_, y_), fontsize=7, xytext=(3, 3), textcoords='offset points')
        ax.set_title('sd_resnet110.sd_cifar10 (labels: blocks kept)', fontsize=9)
        ax.set_xlabel('batch-1 speed-up vs 54 blocks fp32 of the same run and thread count (onnxruntime)')
        ax.set_ylabel('top-1 % (test)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    colors = {'r110': 'tab:blue', 'r110_sd160': 'tab:green', 'r110_nosd160': 'tab:red', 'r56': 'tab:blue',
              'vit': 'tab:blue'}
    styles = {'survival': (':', 'v'), 'survival_bn': ('--', 's'), 'greedy': ('-', 'o'), 'greedy_heal': ('-.', 'D')}
    short = {'r110': 'SD 300 ep (shipped)', 'r110_sd160': 'SD 160 ep', 'r110_nosd160': 'constant depth 160 ep',
             'r56': 'SD (shipped)', 'vit': 'SD (shipped)'}
    for ax, (title, keys) in zip(axes[0], groups):
        for key in keys:
            full = next((r for r in rows if r['model'] == key and r['strategy'] == 'full'), None)
            for s, (ls, mk) in styles.items():
                pts = sorted([(r['kept'], r['top1']) for r in rows if r['model'] == key and r['strategy'] == s]
                             + ([(full['kept'], full['top1'])] if full else []))
                if len(pts) < 2:
                    continue
                ax.plot(*zip(*pts), ls=ls, marker=mk, color=colors[key], ms=4, label=f'{short[key]}, {s}')
        ax.set_title(title)
        ax.set_xlabel('residual blocks kept')
        ax.set_ylabel(f'top-1 % ({DATA_NAME}, test)')
        ax.grid(alpha=0.3)
        ax.invert_xaxis()
        lo = min([r['top1'] for r in rows if r['model'] in keys] + [100])
        ax.set_ylim(max(0, lo - 2), 100 if lo < 50 else None)
        ax.legend(fontsize=7)
    fig.suptitle('Depth on demand (sdzoo.prune_depth)', fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


PAIR = ('r110_sd160', 'r110_nosd160')  # equal recipe and training length: SD against constant depth


def _cells_with_hits(rows: List[Dict]) -> Dict:
    return {(r['model'], r['strategy'], r['removed']): r for r in rows if r.get('hits')}


def _paired(a: Dict, b: Dict):
    """Cells a and b paired image by image (sdzoo.reports.paired: McNemar's exact test and the interval that agrees
    with it); None when they were not scored on the same number of test images. Every cell was evaluated on the same
    cached test tensors (same images, same order)."""
    from sdzoo.reports.paired import paired_comparison
    from sdzoo.train.records import PER_IMAGE_ENCODING
    if a is None or b is None or a['test_images'] != b['test_images']:
        return None
    return paired_comparison(*[dict(images=c['test_images'], encoding=PER_IMAGE_ENCODING,
                                    labels_sha256='depth-test-split', top1_correct=c['hits']) for c in (a, b)])


def paired_rows(rows: List[Dict]) -> List[Dict]:
    """SD against constant depth (PAIR) at each strategy and cut both were measured at, paired image by image on the
    full test split."""
    cell = _cells_with_hits(rows)
    out = []
    for (model, strategy, removed), sd in sorted(cell.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        const = cell.get((PAIR[1], strategy, removed))
        p = _paired(sd, const) if model == PAIR[0] else None
        if p is None:
            continue
        out.append(dict(strategy=strategy, removed=removed, kept=sd['kept'], sd_top1=sd['top1'],
                        constant_top1=const['top1'], images=p.images, only_sd=p.only_a, only_constant=p.only_b,
                        sd_minus_constant_error=round(p.error_difference, 4),
                        ci95=[round(p.ci95[0], 4), round(p.ci95[1], 4)], p_value=p.p_value, differs=p.differs))
    return out


def heal_rows(rows: List[Dict]) -> List[Dict]:
    """Healing against none: greedy + BN and the same + heal, per model and cut, paired image by image on the full
    test split (what chose ``sdzoo.models.depth.default_heal_steps``)."""
    cell = _cells_with_hits(rows)
    out = []
    for model in MODELS:
        for removed in MODELS[model]['cuts'][1:]:
            plain, healed = cell.get((model, 'greedy', removed)), cell.get((model, 'greedy_heal', removed))
            p = _paired(healed, plain)
            if p is None:
                continue
            out.append(dict(model=model, removed=removed, kept=plain['kept'], greedy_top1=plain['top1'],
                            heal_top1=healed['top1'], images=p.images, only_heal=p.only_a, only_greedy=p.only_b,
                            p_value=p.p_value, differs=p.differs))
    return out


def heal_table(rows: List[Dict]) -> List[str]:
    md = ['| network | blocks removed | kept | greedy + BN | + heal | heal minus none (points) | only heal right | '
          'only none right | McNemar p | verdict |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    for r in rows:
        verdict = ('heal better' if r['heal_top1'] > r['greedy_top1'] else 'heal worse') if r['differs'] else 'no difference'
        md.append(f"| {MODELS[r['model']]['label']} | {r['removed']} | {r['kept']} | {r['greedy_top1']:.2f} | "
                  f"{r['heal_top1']:.2f} | {r['heal_top1'] - r['greedy_top1']:+.2f} | {r['only_heal']} | "
                  f"{r['only_greedy']} | {r['p_value']:.3g} | {verdict} |")
    return md + ['']


def _previous(results: Path) -> Dict:
    """The committed record: WORK lives in /tmp and each session's machine is another, so a report adds to what
    earlier sessions measured instead of replacing it with this session's cells only."""
    path = results / 'depth.json'
    if not path.is_file():
        return {}
    d = json.loads(path.read_text())
    return dict(cells=d.get('cells') or [], greedy=d.get('greedy_orders') or [], verify=d.get('verify') or [],
                runs=(d.get('meta') or {}).get('runs') or [], latencies=d.get('latencies') or [])


def _latency_key(run: Dict):
    return run['machine'], run.get('threads'), run.get('graphs', 'greedy_bn'), run.get('runs_per_turn', 1)


def merge_latencies(previous: List[Dict], new) -> List[Dict]:
    """One final latency run per machine, thread count and graph source, oldest first; a new run replaces the
    old one with the same three. ``new``: one run (older latency.json files) or the list one run writes."""
    out = [r for r in previous if r.get('final')]
    for run in ([new] if isinstance(new, dict) else new or []):
        if run.get('final'):
            out = [r for r in out if _latency_key(r) != _latency_key(run)] + [run]
    return out


def report(args) -> None:
    work = Path(args.work)
    prev = _previous(Path(args.results))
    cells = prev.get('cells', []) + _read_jsonl(work / 'accuracy.jsonl')
    # the last measurement of each cell wins (a re-run replaces)
    by = {}
    for r in cells:
        by[(r['model'], r['strategy'], r['removed'], r['test_images'])] = r
    rows = [r for r in by.values() if r['test_images'] >= args.min_test_images]
    greedy = {r['model']: r for r in prev.get('greedy', []) + _read_jsonl(work / 'greedy.jsonl')}
    checks = list({(v['model'], v['removed']): v for v in prev.get('verify', []) + _read_jsonl(work / 'verify.jsonl')}
                  .values())
    lat_path = work / 'latency.json'
    latencies = merge_latencies(prev.get('latencies', []), json.loads(lat_path.read_text()) if lat_path.is_file() else None)
    runs = list({(r['command'], r['started']): r for r in prev.get('runs', []) + _read_jsonl(work / 'runs.jsonl')
                 if r.get('busy_before') is not None}.values())
    commands = list(dict.fromkeys([r['command'] for r in rows if r.get('command')] + [r['command'] for r in runs]))
    dates = [r['date'] for r in rows] + [r['started'] for r in runs]
    busy = ''
    if runs and all(r.get('busy_after') is not None for r in runs):
        busy = busy_note(max(r['busy_before'] for r in runs), max(r['busy_after'] for r in runs)).replace(
            'just before / after the run', 'just before / after the runs (highest)')
    machines = list(dict.fromkeys(r['machine'] for r in runs)) or [_machine_line()]
    meta = dict(machine='; '.join(machines), busy=busy, commands=commands,
                first_date=min(dates, default='?'), last_date=max(dates, default='?'), runs=runs)
    md = [f'# Depth on demand: accuracy vs residual blocks kept (issue 50)', '',
          f'`sdzoo.prune_depth` on {DATA_NAME} (`$SDZOO_DATA/cifar10`), top-1 on the full test split (10,000 images). '
          'A removed block becomes its parameter-free shortcut; downsampling blocks always stay. '
          '**survival**: the lowest-survival-probability (deepest) blocks go, nothing else changes; '
          '**survival + BN**: the same blocks, then the BatchNorms after the first removed block re-estimate their '
          f'statistics on {args.bn_images} training images (what `prune_depth(..., data=...)` does for every strategy); '
          '**greedy**: `prune_depth`\'s default, KL-greedy on '
          f'{args.calibration_images} held-out training images (the val split) + the same BN re-estimation; '
          '**greedy + BN + heal**: then `sdzoo.models.depth.heal`, a short distillation from the full network on '
          f'{args.heal_images} training images (`prune_depth(..., heal_steps={args.heal_steps})`, heal\'s default '
          'learning rate: SGD 0.002 for the ResNets, AdamW 1e-4 for the ViT, chosen on held-out training images in '
          '`depth_heal_lr.md`; lr 0.01, the first default, cost sd_resnet110 0.42 / 0.28 points at 48 / 42 blocks). '
          'Greedy\'s order was computed once for the largest cut; smaller cuts are its prefixes (greedy is '
          'sequential), ' + ('checked against `prune_depth` itself below.' if checks else 'to be checked against '
                             '`prune_depth` itself by `--verify r56:3` (not run at full scale yet).')
          + ' No test image is used for any choice.', '',
          f"Machines of the accuracy runs: {meta['machine']}. {meta['busy'] + ' ' if meta['busy'] else ''}"
          'Accuracy does not depend on the load or the CPU (the greedy order came out the same on two CPUs); wall times '
          '(per cell, in depth.json) do.', '',
          'Commands (run side by side, each resuming from the shared cache ' + f"{work}/accuracy.jsonl; cells "
          f"dated {meta['first_date']} to {meta['last_date']}, $SDZOO_DATA=/work/shared/datasets):", '']
    md += [f'    {c}' for c in commands] + ['']
    strat_cols = [('survival', 'survival'), ('survival_bn', 'survival + BN'), ('greedy', 'greedy + BN'),
                  ('greedy_heal', 'greedy + BN + heal')]
    for key, spec in MODELS.items():
        mine = [r for r in rows if r['model'] == key]
        if not mine:
            continue
        full = next((r for r in mine if r['strategy'] == 'full'), None)
        present = [(s, t) for s, t in strat_cols if any(r['strategy'] == s for r in mine)]
        md += [f"## {spec['label']}", '', 'Command: ' + ' ; '.join(
            f'`{c}`' for c in dict.fromkeys(r['command'] for r in mine if r.get('command'))) + '.', '']
        if full is not None:
            exp = f" (its recorded top-1: {spec['expect']:.2f})" if spec.get('expect') else ''
            md += [f"Full depth: {full['top1']:.2f}%{exp}, {full['blocks_total']} residual blocks, "
                   f"{full['params'] / 1e6:.3f} M parameters.", '']
        md += ['| blocks removed | kept | ' + ' | '.join(f'{t} top-1 %' for _, t in present) + ' | params (M) |',
               '|---:|---:|' + '---:|' * len(present) + '---:|']
        for c in spec['cuts']:
            vals = []
            params = None
            for s, _ in present:
                r = full if c == 0 else next((r for r in mine if r['strategy'] == s and r['removed'] == c), None)
                vals.append(f"{r['top1']:.2f}" if r else '–')
                params = params or (r and r['params'])
            kept = (full or mine[0])['blocks_total'] - c
            md.append(f'| {c} | {kept} | ' + ' | '.join(vals) + f" | {params / 1e6:.3f} |" if params else
                      f'| {c} | {kept} | ' + ' | '.join(vals) + ' | – |')
        g = greedy.get(key)
        if g and any(r['strategy'] == 'greedy' for r in mine):
            how = f"{g['threads']} thread(s), {g.get('machine', '')}" if g.get('threads') else 'single-threaded on the shared machine'
            md += ['', f"Greedy order ({g['calibration']}, {g['seconds'] / 60:.1f} min, {how}): "
                   + ', '.join(f'`{n}`' for n in g['order'][:max(spec['cuts'])]) + '.']
        md.append('')
    # the paper's comparison
    r110 = {k: {(r['strategy'], r['removed']): r['top1'] for r in rows if r['model'] == k}
            for k in ('r110_sd160', 'r110_nosd160')}
    if all(r110.values()):
        md += ['## SD vs constant depth (ResNet-110, same 160-epoch recipe)', '',
               'Top-1 loss in points against each network\'s own full depth:', '',
               '| blocks removed | ' + ' | '.join(f'SD 160 {t}' for _, t in strat_cols) + ' | '
               + ' | '.join(f'constant {t}' for _, t in strat_cols) + ' |',
               '|---:|' + '---:|' * (2 * len(strat_cols))]
        for c in MODELS['r110_sd160']['cuts'][1:]:
            cellv = []
            for k in ('r110_sd160', 'r110_nosd160'):
                f0 = r110[k].get(('full', 0))
                for s, _ in strat_cols:
                    v = r110[k].get((s, c))
                    cellv.append(f'{v - f0:+.2f}' if v is not None and f0 is not None else '–')
            md.append(f'| {c} | ' + ' | '.join(cellv) + ' |')
        md.append('')
    if checks:
        md += ['## Check: prefix of the longest greedy order + BN re-estimation = `prune_depth`', '']
        for v in checks:
            keep = int(v['depth_record']['blocks_total']) - v['removed']
            md.append(f"- {MODELS[v['model']]['label']}, {v['removed']} blocks removed: `sdzoo.prune_depth(model, "
                      f"keep={keep}, strategy='greedy', data='cifar10')` ({v['prune_depth_seconds'] / 60:.1f} min) "
                      f"removed {'the same blocks' if v['same_blocks'] else 'DIFFERENT blocks'} as the first "
                      f"{v['removed']} of the longest order ({', '.join(v['prune_depth_removed'])}); state dicts: "
                      f"same keys {v['same_state_keys']}, max |Δ| {v['max_abs_tensor_diff']:.3g}; logits on the first "
                      f"{min(1000, v['test_images']):,} test images max |Δ| {v['max_abs_logit_diff_1000']:.3g}; same "
                      f"top-1 prediction on {v['same_test_predictions']:,} of {v['test_images']:,} test images "
                      f"({v['top1_prune_depth']:.2f} vs {v['top1_prefix']:.2f}%).")
        md.append('')
    missing = [(k, s_, c) for k in MODELS for s_, _ in strat_cols for c in MODELS[k]['cuts'][1:]
               if not any(r['model'] == k and r['strategy'] == s_ and r['removed'] == c for r in rows)]
    if missing:
        md += ['## Not measured yet', '',
               f'{len(missing)} cells are missing (`–` above, and the models without a section): no accuracy run '
               'has reached them yet. The same command skips the cells the committed depth.json holds (and those '
               f'cached in {work}/accuracy.jsonl; greedy orders likewise):', '',
               '    SDZOO_DATA=/work/shared/datasets python benchmarks/depth.py --phase accuracy --eval-threads 2 '
               '--models ' + ' '.join(dict.fromkeys(k for k, _, _ in missing)) + ' --strategies '
               + ' '.join(dict.fromkeys(s_ for _, s_, _ in missing)), '']
    paired = paired_rows(rows)
    if paired:
        md += [f"## SD against constant depth at equal training length (160 epochs), paired on the full test split", '',
               f"{MODELS[PAIR[0]]['label']} against {MODELS[PAIR[1]]['label']}, the same recipe otherwise; error "
               'difference SD minus constant in points (negative: SD better), with the exact 95% interval that agrees '
               "with McNemar's exact test on the images the two disagree on.", '',
               ] + paired_table(paired)
    healed = heal_rows(rows)
    if healed:
        better = sum(r['differs'] and r['heal_top1'] > r['greedy_top1'] for r in healed)
        worse = sum(r['differs'] and r['heal_top1'] < r['greedy_top1'] for r in healed)
        md += ['## Healing against none, paired on the full test split (why `prune_depth` heals by default)', '',
               f'Greedy + BN against the same blocks + {args.heal_steps} heal steps, image by image (McNemar\'s exact '
               f'test): heal better beyond chance in {better} of {len(healed)} cuts, worse beyond chance in {worse}. '
               'So `sdzoo.prune_depth` and `sdzoo export --keep-blocks` heal whenever they have training images '
               '(`--heal-steps 0` / `heal_steps=0` turns it off; its price is time, minutes for sd_resnet110).', '',
               ] + heal_table(healed)
    if args.note:
        md += [args.note, '']
    md += ['## Latency (sd_resnet110.sd_cifar10, onnxruntime)', '']
    lat_cmd = 'python benchmarks/depth.py --phase latency   # defaults: keep 54 42 36, --iters 300 --iters64 30, --threads 2'
    for lat in latencies:
        together = lat.get('thread_counts') or [lat['threads']]
        md += [f"### {lat['machine']}: {latency_title(lat)}", '',
               f"Measured {lat['date']}; onnxruntime {lat['onnxruntime']}. "
               f"{lat['busy']} Batch 1: median of {lat['iters']} runs, batch 64: median of "
               f"{lat['iters64']} runs, after {lat['warmup']} warm-up runs, all {len(lat['rows']) * len(together)} "
               f"sessions ({len(lat['rows'])} graphs x {', '.join(map(str, together))} intra-op thread(s)) round-robin "
               f"in one process, {lat.get('runs_per_turn', 1)} consecutive run(s) of a session per turn.", '',
               f"Command: `{lat['command']}`", '',
               '| blocks kept | precision | batch-1 latency ms | vs 54 fp32 | batch-64 img/s | vs 54 fp32 | '
               'top-1 % (test, 10,000) | export gate (val images) |',
               '|---:|---|---:|---:|---:|---:|---:|---|']
        base = latency_base(lat['rows'])
        for k, r in lat['rows'].items():
            g, dg = r.get('gate'), r.get('depth_gate')
            gate = '' if not g else ('**refused** by `sdzoo export --int8` (timed anyway)' if g.get('refused')
                                     else f"INT8 passed ({g.get('top1_fp32', float('nan')):.2f} -> "
                                          f"{g.get('top1_int8', float('nan')):.2f} on {g.get('images')} val images)")
            if dg:  # prune_depth's gate: the full network against the pruned one (fp32), --max-accuracy-drop
                gate = (f"depth: full {dg['top1_fp32']:.2f} -> {dg['top1_int8']:.2f} on {dg['images']} val images, "
                        f"allowed drop {dg['max_drop_points']:g}" + (f'; {gate}' if gate else ''))
            kept = f"{r['keep']} (`{r['entry']}`)" if r.get('entry') else f"{r['keep']}"
            md.append(f"| {kept} | {r['precision']} | {r['batch1_median_ms']:.2f} | "
                      f"{base['batch1_median_ms'] / r['batch1_median_ms']:.2f}x | {r['batch64_images_per_s']:.0f} | "
                      f"{r['batch64_images_per_s'] / base['batch64_images_per_s']:.2f}x | {r['top1']:.2f} | {gate} |")
        md.append('')
    if not latencies:
        md += ['Not measured yet: timings need a quiet machine (the training queue was running when the accuracy '
               'tables were made). Command for the final run (stop the queue first):', '', f'    {lat_cmd}', '']
    md += ['Plot: [depth.png](depth.png) (top-1 vs blocks kept). Raw cells (per-image hits as base64 packbits, '
           'wall times, removed blocks): depth.json.', '']
    results = Path(args.results)
    write_atomic(results / 'depth.md', '\n'.join(md))
    raw = dict(meta=meta, data=DATA_NAME, models={k: {kk: vv for kk, vv in v.items()} for k, v in MODELS.items()},
               cells=sorted(rows, key=lambda r: (list(MODELS).index(r['model']), r['strategy'], r['removed'])),
               greedy_orders=list(greedy.values()), verify=checks, paired=paired, heal_paired=healed,
               latencies=latencies)
    write_atomic(results / 'depth.json', json.dumps(raw, indent=1) + '\n')
    if rows:
        plot(rows, results / 'depth.png', latencies)
    _log(f'written {results}/depth.md, depth.json' + (', depth.png' if rows else ''))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--phase', choices=('accuracy', 'latency', 'report'), default='accuracy')
    p.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS))
    p.add_argument('--strategies', nargs='+', choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument('--work', default='/tmp/depth', help='checkpoints, cached test tensors, JSON-lines cells')
    p.add_argument('--calibration-images', type=int, default=500, help="greedy's held-out images (prune_depth's default)")
    p.add_argument('--bn-images', type=int, default=2000, help="BN re-estimation images (prune_depth's default)")
    p.add_argument('--eval-threads', type=int, default=1, help='torch threads of the accuracy phase (1: runs side by side)')
    p.add_argument('--heal-steps', type=int, default=300, help='greedy_heal: distillation steps (sdzoo.models.depth.heal)')
    p.add_argument('--heal-lr', type=float, default=None, help="greedy_heal: learning rate (default: heal's)")
    p.add_argument('--heal-images', type=int, default=20000, help="greedy_heal: training images (prune_depth's default)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--test-images', type=int, default=None, help='first N test images only (default all 10,000)')
    p.add_argument('--verify', default=None, metavar='MODEL:CUT',
                   help="also run prune_depth itself at this cut and compare, e.g. r110:6")
    p.add_argument('--no-report', action='store_true')
    p.add_argument('--note', default='', help='free text for depth.md (e.g. what else ran)')
    p.add_argument('--results', default=str(RESULTS), help='where depth.{md,json,png} go')
    p.add_argument('--min-test-images', type=int, default=10000, help=argparse.SUPPRESS)
    # latency
    p.add_argument('--keep', nargs='+', type=int, default=list(LATENCY_KEEP))
    p.add_argument('--threads', nargs='+', type=int, default=[2],
                   help='latency: onnxruntime intra-op threads, one session set per value; accuracy: torch threads of heal (one value)')
    p.add_argument('--repository', default=None, metavar='DIR',
                   help='latency: time the entries sdzoo export --repository DIR wrote instead of building graphs')
    p.add_argument('--iters', type=int, default=300, help='batch-1 timed runs (>= 200 for a results file)')
    p.add_argument('--iters64', type=int, default=30, help='batch-64 timed runs (>= 20 for a results file)')
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--runs-per-turn', type=int, default=1,
                   help='consecutive timed runs of one session before the next takes its turn (1: one call each, so '
                        'every graph meets a cache the others filled; more: a graph serving a stream of requests)')
    p.add_argument('--int8-calibration-images', type=int, default=None, help='default: sdzoo export --int8\'s')
    p.add_argument('--int8-eval-images', type=int, default=None, help="the INT8 gate's val images (default all)")
    p.add_argument('--exporter', choices=('dynamo', 'torchscript'), default='dynamo')
    args = p.parse_args(argv)
    if args.phase == 'accuracy' and len(args.threads) != 1:
        p.error('--threads: the accuracy phase takes one value')
    os.environ.setdefault('SDZOO_DATA', str(REPO.parent / 'shared' / 'datasets'))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.phase == 'accuracy':
        busy0 = cpu_busy()
        started = time.strftime('%Y-%m-%d %H:%M:%S')
        run_accuracy(args)
        if args.test_images is None:  # one line per accuracy run (several may run side by side)
            append_jsonl(work / 'runs.jsonl', dict(command=_command(argv), started=started,
                                              ended=time.strftime('%Y-%m-%d %H:%M:%S'), machine=_machine_line(),
                                              busy_before=busy0, busy_after=cpu_busy()))
    elif args.phase == 'latency':
        run_latency(args)
    if not args.no_report:
        report(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
