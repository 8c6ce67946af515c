"""CPU inference: PyTorch eager vs onnxruntime fp32 vs onnxruntime INT8 (and the unfolded fp32 graph).

All engines run side by side in one process, round-robin within each repetition so machine drift
hits them alike, for every thread count and batch size; medians and ratios are printed as markdown
and written to ``benchmarks/results/inference.{json,md}`` (``--out-name`` changes the stem).

    python benchmarks/inference.py --pretrained --data cifar10 --threads 1 2          # INT8 included
    python benchmarks/inference.py --engines torch_eager ort_fp32 ort_unfolded      # the folding study
    python benchmarks/inference.py --iters 3 --warmup 1 --accuracy-images 0         # quick smoke

The ONNX files go through ``sdzoo.export_onnx`` (validated against PyTorch; ``ort_unfolded`` keeps
the survival multiplies) and INT8 through ``sdzoo.export.quantize.quantize_onnx`` (what ``sdzoo export
--int8`` runs: calibrated on training-split images, behind its accuracy gate), which needs trained
weights (``--pretrained``) and ``--data``. With ``--accuracy-images`` (default: the full test split)
each engine's top-1 is measured on the same test images. onnxruntime runs without thread-pool
spinning (a spinning pool steals the cores of the engine timed next).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from machine import busy_note, cpu_busy, cpu_flags, cpu_name, describe  # benchmarks/machine.py

REPO = Path(__file__).resolve().parents[1]
ENGINES = ('torch_eager', 'ort_fp32', 'ort_int8', 'ort_unfolded')


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _from_repository(repository: Path, name: str) -> Dict[str, Dict]:
    """The fp32 and INT8 files ``sdzoo export --int8`` put into a model repository, if both are there."""
    import onnx
    from sdzoo.export.onnx import op_histogram
    found = {}
    for kind, entry in (('ort_fp32', name), ('ort_int8', f'{name}_int8')):
        path = repository / entry / '1' / 'model.onnx'
        if not path.is_file():
            return {}
        proto = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        found[kind] = {'path': path, 'nodes': len(proto.graph.node), 'mul': op_histogram(proto).get('Mul', 0)}
        if kind == 'ort_int8':
            found[kind].update(gate=json.loads(meta['sdzoo.accuracy']), quantization=json.loads(meta['sdzoo.quantization']))
    return found


def build_files(name: str, engines: List[str], pretrained: bool, data: Optional[str], workdir: Path,
                exporter: str, calibration_images: int, repository: Optional[Path] = None) -> Dict[str, Dict]:
    """``{engine: {'path', 'nodes', 'mul'}}`` for the ONNX engines asked for, plus the PyTorch model."""
    import timm
    import sdzoo
    model = timm.create_model(name, pretrained=pretrained).eval()
    files: Dict[str, Dict] = {'model': model}
    if repository is not None and pretrained:
        files.update(_from_repository(repository, name))
        if 'ort_fp32' in files:
            print(f'  {name}: fp32 and INT8 files from {repository}', file=sys.stderr)
    for kind, fold in (('ort_fp32', True), ('ort_unfolded', False)):
        if kind in files:
            continue
        if kind in engines or (kind == 'ort_fp32' and 'ort_int8' in engines):
            out = workdir / f'{name}.{kind}.onnx'
            rep = sdzoo.export_onnx(model, out, fold_survival=fold, write_report=False, dynamo=exporter == 'dynamo')
            files[kind] = {'path': out, 'nodes': rep['nodes'], 'mul': rep['op_histogram'].get('Mul', 0)}
    if 'ort_int8' in engines and 'ort_int8' not in files:
        from sdzoo.export.quantize import quantize_onnx
        out = workdir / f'{name}.int8.onnx'
        rep = quantize_onnx(files['ort_fp32']['path'], out, data=data, calibration_images=calibration_images,
                            write_report=False)
        files['ort_int8'] = {'path': out, 'nodes': sum(rep['op_histogram'].values()), 'mul': None,
                             'gate': rep['accuracy'], 'quantization': rep['quantization']}
    return files


def accuracy(files: Dict[str, Dict], engines: List[str], data: str, images: Optional[int]) -> Dict[str, float]:
    """Top-1 % of every engine on the same test images (preprocessed as ``sdzoo validate`` does)."""
    from sdzoo.export.quantize import load_labelled_images, top1
    from sdzoo.runtime import OrtModel
    model = files['model']
    cfg = model.pretrained_cfg
    x, y, desc = load_labelled_images(data, 'test', cfg['input_size'], model.num_classes, cfg['mean'], cfg['std'],
                                      limit=images)
    out = {'images': int(len(y)), 'data': desc}
    torch.set_num_threads(1)  # accuracy does not depend on it; a 2-thread pool on a busy machine only stalls
    for e in engines:
        if e == 'torch_eager':
            with torch.inference_mode():
                pred = torch.cat([model(torch.from_numpy(x[i:i + 250])).argmax(1) for i in range(0, len(x), 250)])
            out[e] = float((pred.numpy() == y).mean() * 100)
        else:
            out[e] = top1(OrtModel(files[e]['path'], providers=['CPUExecutionProvider']), x, y) * 100
    return out


def bench(files: Dict[str, Dict], engines: List[str], batches: List[int], threads: List[int], iters: int,
          warmup: int, name: str) -> List[Dict]:
    from sdzoo.runtime import OrtModel
    model = files['model']
    c, h, w = model.pretrained_cfg['input_size']
    rows = []
    for t in threads:
        sessions = {e: OrtModel(files[e]['path'], intra_op_num_threads=t, inter_op_num_threads=1,
                                providers=['CPUExecutionProvider'],
                                session_config={'session.intra_op.allow_spinning': '0'})
                    for e in engines if e != 'torch_eager'}
        for b in batches:
            x = np.random.default_rng(0).standard_normal((b, c, h, w), dtype=np.float32)
            xt = torch.from_numpy(x)

            def torch_eager():
                torch.set_num_threads(t)
                with torch.inference_mode():
                    return model(xt)

            fns = {e: (torch_eager if e == 'torch_eager' else (lambda s=sessions[e]: s.run(x))) for e in engines}
            for _ in range(warmup):
                for fn in fns.values():
                    fn()
            times: Dict[str, List[float]] = {e: [] for e in engines}
            n = iters if b == 1 else max(3, iters // 4)
            for _ in range(n):
                for e, fn in fns.items():  # round-robin: drift hits all engines alike
                    times[e].append(_time(fn))
            med = {e: statistics.median(v) for e, v in times.items()}
            rows.append({'model': name, 'threads': t, 'batch': b, 'iters': n, 'median_ms': med,
                         'images_per_s': {e: b / (v / 1e3) for e, v in med.items()}})
            print(f'  {name} {t} thread(s) batch {b}: ' + ', '.join(f'{e} {v:.2f} ms' for e, v in med.items()),
                  file=sys.stderr)
    return rows


def to_markdown(rows: List[Dict], acc: Dict[str, Dict], files_info: Dict[str, Dict], meta: Dict) -> str:
    engines = meta['engines']
    base = 'ort_fp32' if 'ort_fp32' in engines else engines[0]
    lines = [f"CPU inference on {meta['machine']}; torch "
             f"{meta['torch']}, onnxruntime {meta['onnxruntime']}; {meta['date']}. Median of the timed runs (batch 1: "
             f"{meta['iters']}, batch 64: {max(3, meta['iters'] // 4)}), all engines round-robin in one process. "
             f"{meta['busy']} {meta['note']}".rstrip(), '', f"Command: `{meta['command']}`", '',
             '| model | threads | batch | ' + ' | '.join(f'{e} ms' for e in engines) + ' | '
             + ' | '.join(f'{e} speed vs {base}' for e in engines if e != base) + ' | img/s (' + ', '.join(engines) + ') |',
             '|---|---:|---:|' + '---:|' * (2 * len(engines) - 1) + '---|']
    for r in rows:
        m = r['median_ms']
        lines.append(f"| {r['model']} | {r['threads']} | {r['batch']} | "
                     + ' | '.join(f'{m[e]:.2f}' for e in engines) + ' | '
                     + ' | '.join(f'{m[base] / m[e]:.2f}x' for e in engines if e != base) + ' | '
                     + ', '.join(f"{r['images_per_s'][e]:.0f}" for e in engines) + ' |')
    if acc:
        lines += ['', 'Top-1 on the test split of CIFAR-10 (JPEG q75 copy), every engine on the same images:', '',
                  '| model | images | ' + ' | '.join(f'{e} top-1 %' for e in engines) + ' |',
                  '|---|---:|' + '---:|' * len(engines)]
        for name, a in acc.items():
            lines.append(f"| {name} | {a['images']} | " + ' | '.join(f'{a[e]:.2f}' for e in engines) + ' |')
    q = {n: f['ort_int8'] for n, f in files_info.items() if 'ort_int8' in f}
    if q:
        lines += ['', 'INT8 files: ' + '; '.join(
            f"{n}: {v['quantization']['format']}, {v['quantization']['calibration_method']} calibration on "
            f"{v['quantization']['calibration_images']} training images, gate {v['gate']['top1_fp32']:.2f} -> "
            f"{v['gate']['top1_int8']:.2f} % on {v['gate']['images']} {v['gate']['split']} images" for n, v in q.items())]
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=['sd_resnet110', 'sd_vit_lite_patch4_32'])
    p.add_argument('--engines', nargs='+', choices=ENGINES, default=['torch_eager', 'ort_fp32', 'ort_int8'])
    p.add_argument('--batches', nargs='+', type=int, default=[1, 64])
    p.add_argument('--threads', nargs='+', type=int, default=[1, 2],
                   help='intra-op thread counts, the same for torch and onnxruntime (default 1 2)')
    p.add_argument('--iters', type=int, default=20, help='timed runs at batch 1 (a quarter of it at larger batches)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--pretrained', action='store_true', help='shipped weights (needed for INT8 and accuracy)')
    p.add_argument('--data', default='cifar10', help='data set for INT8 calibration and the accuracy column')
    p.add_argument('--calibration-images', type=int, default=512)
    p.add_argument('--accuracy-images', type=int, default=None,
                   help='test images for the accuracy table (default all; 0 skips it)')
    p.add_argument('--exporter', choices=('dynamo', 'torchscript'), default='dynamo')
    p.add_argument('--repository', default=None,
                   help='take fp32 and INT8 files from this model repository (NAME/1, NAME_int8/1) when both exist, '
                        'e.g. export (the files MODEL_CARDS.md measured); else export and quantize afresh')
    p.add_argument('--note', default='', help='free text for the results header (e.g. what else ran)')
    p.add_argument('--out-dir', default=str(REPO / 'benchmarks' / 'results'))
    p.add_argument('--out-name', default='inference')
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or any(b < 1 for b in args.batches) or any(t < 1 for t in args.threads):
        p.error('--iters must be >= 1, --warmup >= 0, batches and threads >= 1')
    if 'ort_int8' in args.engines and not args.pretrained:
        p.error('ort_int8 needs trained weights: add --pretrained (or drop ort_int8 from --engines)')
    import onnxruntime
    busy0 = cpu_busy()
    rows: List[Dict] = []
    acc: Dict[str, Dict] = {}
    info: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory(prefix='sdzoo-bench-') as tmp:
        for name in args.models:
            files = build_files(name, args.engines, args.pretrained, args.data, Path(tmp), args.exporter,
                                args.calibration_images, Path(args.repository) if args.repository else None)
            info[name] = {k: v for k, v in files.items() if k != 'model'}
            rows += bench(files, args.engines, args.batches, args.threads, args.iters, args.warmup, name)
            if args.pretrained and args.accuracy_images != 0:
                acc[name] = accuracy(files, args.engines, args.data, args.accuracy_images)
    meta = {'threads': args.threads, 'iters': args.iters, 'warmup': args.warmup, 'torch': torch.__version__,
            'onnxruntime': onnxruntime.__version__, 'cpu': cpu_name(), 'cpu_flags': cpu_flags(),
            'cores': os.cpu_count(), 'machine': describe(), 'busy': busy_note(busy0, cpu_busy()), 'pretrained': args.pretrained, 'exporter': args.exporter,
            'engines': args.engines, 'note': args.note, 'date': time.strftime('%Y-%m-%d %H:%M:%S'),
            'command': 'python benchmarks/inference.py ' + shlex.join(argv if argv is not None else sys.argv[1:])}
    md = to_markdown(rows, acc, info, meta)
    print(md)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    serial = {n: {k: {kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in v.items()} for k, v in f.items()}
              for n, f in info.items()}
    (out / f'{args.out_name}.json').write_text(json.dumps({'meta': meta, 'rows': rows, 'accuracy': acc,
                                                           'files': serial}, indent=2) + '\n')
    (out / f'{args.out_name}.md').write_text(md)
    print(f'written {out / (args.out_name + ".json")} and {out / (args.out_name + ".md")}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
