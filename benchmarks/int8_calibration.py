"""Which INT8 recipe: calibration method (MinMax / Entropy / Percentile) and, for the ViT, static QDQ vs
dynamic quantization of the MatMuls, by measured top-1 (fp32 vs INT8 side by side) and latency.

Each variant goes through ``sdzoo.export.quantize.quantize_onnx`` (the code ``sdzoo export --int8`` runs),
calibrated on training-split images and measured on the validation split (the 5,000 held-out training
images for CIFAR-10); then fp32 and all INT8 variants of a model are timed round-robin in one process.

    python benchmarks/int8_calibration.py --models sd_resnet110 sd_vit_lite_patch4_32 --data cifar10
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import busy_note, cpu_busy, describe  # noqa: E402  (benchmarks/machine.py)


def latency(files: Dict[str, Path], batch: int, iters: int, threads: int, shape) -> Dict[str, float]:
    """Median ms per run of each file at ``batch``, round-robin (drift hits all alike)."""
    from sdzoo.runtime import OrtModel
    sessions = {k: OrtModel(f, intra_op_num_threads=threads, inter_op_num_threads=1,
                            session_config={'session.intra_op.allow_spinning': '0'}) for k, f in files.items()}
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    times: Dict[str, List[float]] = {k: [] for k in files}
    for k, s in sessions.items():
        s.run(x)
    for _ in range(iters):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(x)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=['sd_resnet110', 'sd_vit_lite_patch4_32'])
    p.add_argument('--data', default='cifar10')
    p.add_argument('--methods', nargs='+', default=['minmax', 'entropy', 'percentile'])
    p.add_argument('--calibration-images', type=int, default=512)
    p.add_argument('--eval-images', type=int, default=None, help='validation images (default all)')
    p.add_argument('--symmetric', action='store_true', help='add static minmax with symmetric int8 activations')
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'int8_calibration.md'))
    args = p.parse_args(argv)
    import onnxruntime
    from sdzoo.export.onnx import export_onnx
    from sdzoo.export.quantize import quantize_onnx
    busy0 = cpu_busy()
    rows = []
    with tempfile.TemporaryDirectory(prefix='sdzoo-int8cal-') as tmp:
        for name in args.models:
            fp32 = Path(tmp) / f'{name}.onnx'
            export_onnx(f'{name}.sd_cifar10', fp32, pretrained=True, write_report=False)
            variants = [('static', m, 'uint8') for m in args.methods]
            if args.symmetric:  # what TensorRT needs
                variants.append(('static', 'minmax', 'int8'))
            if 'vit' in name:
                variants.append(('dynamic', None, None))
            files = {'fp32': fp32}
            for mode, method, act in variants:
                key = (f'static {method}, {act} activations' + (' (symmetric)' if act == 'int8' else '')
                       if mode == 'static' else 'dynamic (MatMul only, no calibration)')
                out = Path(tmp) / f'{name}.{mode}.{method}.{act}.onnx'
                t0 = time.perf_counter()
                r = quantize_onnx(fp32, out, data=args.data, calibration_images=args.calibration_images,
                                  method=method or 'minmax', mode=mode, eval_images=args.eval_images,
                                  activation_type=act or 'uint8',
                                  max_accuracy_drop=100.0, write_report=False, threads=args.threads)
                files[key] = out
                rows.append({'model': name, 'variant': key, 'seconds': time.perf_counter() - t0, **r['accuracy']})
                print(json.dumps(rows[-1]), file=sys.stderr)
            shape = (3, 32, 32)
            for b in (1, 64):
                med = latency(files, b, args.iters if b == 1 else max(3, args.iters // 3), args.threads, shape)
                for row in rows:
                    if row['model'] == name:
                        row[f'ms_b{b}'] = med[row['variant']]
                        row[f'fp32_ms_b{b}'] = med['fp32']
    lines = [f'INT8 recipe comparison: {describe()}, {args.threads} thread(s), onnxruntime {onnxruntime.__version__}, '
             f'{time.strftime("%Y-%m-%d")}. {busy_note(busy0, cpu_busy())}',
             f'Calibration: {args.calibration_images} class-balanced training-split images of {args.data}; top-1 on '
             'the validation split (held-out training images) of CIFAR-10 (JPEG q75 copy).', '',
             f'Command: `python benchmarks/int8_calibration.py {" ".join(argv if argv is not None else sys.argv[1:])}`', '',
             '| model | INT8 variant | images | top-1 fp32 % | top-1 INT8 % | drop (points) | quantize+eval s '
             '| fp32 / INT8 latency b1 | fp32 / INT8 time b64 |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['images']} | {r['top1_fp32']:.2f} | {r['top1_int8']:.2f} | "
                     f"{r['drop_points']:+.2f} | {r['seconds']:.0f} | {r['fp32_ms_b1'] / r['ms_b1']:.2f}x | "
                     f"{r['fp32_ms_b64'] / r['ms_b64']:.2f}x |")
    md = '\n'.join(lines) + '\n'
    print(md)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)
    Path(args.out).with_suffix('.json').write_text(json.dumps(rows, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
