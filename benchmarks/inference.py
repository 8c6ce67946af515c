"""CPU inference latency: onnxruntime (folded) vs onnxruntime (unfolded, survival Muls) vs PyTorch eager.

All three run side by side in one process, round-robin within each repetition so machine drift
hits them alike; medians and ratios are printed as a markdown table and written to
``benchmarks/results/inference.{json,md}``.

    python benchmarks/inference.py                       # sd_resnet110, sd_vit_lite_patch4_32; batch 1, 64
    python benchmarks/inference.py --iters 3 --warmup 1  # quick smoke

Weights are random unless ``--pretrained`` (latency does not depend on them). Both ONNX files go
through ``sdzoo.export_onnx`` (validated against PyTorch); the unfolded one with
``fold_survival=False``, BatchNorm fused in both, so the difference is the survival multiplies.
onnxruntime runs without thread-pool spinning (a spinning pool steals the cores of the engine timed
next). Run it on an otherwise idle machine: the numbers are only as quiet as the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench_model(name: str, batches: List[int], iters: int, warmup: int, threads: int, pretrained: bool,
                workdir: Path, exporter: str) -> List[Dict]:
    import timm
    import sdzoo
    from sdzoo.runtime import OrtModel

    model = timm.create_model(name, pretrained=pretrained).eval()
    files = {}
    for kind, fold_survival in (('folded', True), ('unfolded', False)):
        out = workdir / f'{name}.{kind}.onnx'
        report = sdzoo.export_onnx(model, out, fold_survival=fold_survival, write_report=False,
                                   dynamo=exporter == 'dynamo')
        files[kind] = (out, report)
    # no thread-pool spinning: a spinning ORT pool would steal the cores of the next engine in the round
    sessions = {kind: OrtModel(path, intra_op_num_threads=threads, inter_op_num_threads=1,
                               session_config={'session.intra_op.allow_spinning': '0'})
                for kind, (path, _) in files.items()}
    c, h, w = model.pretrained_cfg['input_size']
    rows = []
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, c, h, w), dtype=np.float32)
        xt = torch.from_numpy(x)

        def torch_eager():
            with torch.inference_mode():
                return model(xt)

        engines = {
            'ort_folded': lambda: sessions['folded'].run(x),
            'ort_unfolded': lambda: sessions['unfolded'].run(x),
            'torch_eager': torch_eager,
        }
        for _ in range(warmup):
            for fn in engines.values():
                fn()
        times: Dict[str, List[float]] = {k: [] for k in engines}
        for _ in range(iters):
            for k, fn in engines.items():  # round-robin: drift hits all engines alike
                times[k].append(_time(fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({
            'model': name, 'batch': b, 'iters': iters,
            'median_ms': med,
            'images_per_s': {k: b / (v / 1e3) for k, v in med.items()},
            'unfolded_over_folded': med['ort_unfolded'] / med['ort_folded'],
            'torch_over_folded': med['torch_eager'] / med['ort_folded'],
            'mul_nodes': {k: rep['op_histogram'].get('Mul', 0) for k, (_, rep) in files.items()},
            'nodes': {k: rep['nodes'] for k, (_, rep) in files.items()},
        })
        print(f'  {name} batch {b}: ' + ', '.join(f'{k} {v:.2f} ms' for k, v in med.items()), file=sys.stderr)
    return rows


def to_markdown(rows: List[Dict], meta: Dict) -> str:
    lines = [
        f"CPU inference, {meta['threads']} thread(s), median of {meta['iters']} runs "
        f"(torch {meta['torch']}, onnxruntime {meta['onnxruntime']}, {meta['cpu']}).",
        '',
        '| model | batch | ORT folded ms | ORT unfolded ms | PyTorch eager ms | unfolded / folded | PyTorch / folded '
        '| Mul nodes folded / unfolded |',
        '|---|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for r in rows:
        m = r['median_ms']
        lines.append(f"| {r['model']} | {r['batch']} | {m['ort_folded']:.2f} | {m['ort_unfolded']:.2f} | "
                     f"{m['torch_eager']:.2f} | {r['unfolded_over_folded']:.3f} | {r['torch_over_folded']:.3f} | "
                     f"{r['mul_nodes']['folded']} / {r['mul_nodes']['unfolded']} |")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=['sd_resnet110', 'sd_vit_lite_patch4_32'])
    p.add_argument('--batches', nargs='+', type=int, default=[1, 64])
    p.add_argument('--iters', type=int, default=30)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=1,
                   help='torch and onnxruntime intra-op threads, the same for both (default 1: steady on a '
                        'shared 2-core machine; raise it on an idle one)')
    p.add_argument('--pretrained', action='store_true', help='shipped weights instead of random ones')
    p.add_argument('--exporter', choices=('dynamo', 'torchscript'), default='dynamo')
    p.add_argument('--out-dir', default=str(REPO / 'benchmarks' / 'results'))
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or any(b < 1 for b in args.batches):
        p.error('--iters must be >= 1, --warmup >= 0, batches >= 1')
    torch.set_num_threads(args.threads)
    import onnxruntime
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory(prefix='sdzoo-bench-') as tmp:
        for name in args.models:
            rows += bench_model(name, args.batches, args.iters, args.warmup, args.threads, args.pretrained,
                                Path(tmp), args.exporter)
    meta = {'threads': args.threads, 'iters': args.iters, 'warmup': args.warmup, 'torch': torch.__version__,
            'onnxruntime': onnxruntime.__version__, 'cpu': platform.processor() or platform.machine(),
            'cores': os.cpu_count(), 'pretrained': args.pretrained, 'exporter': args.exporter,
            'date': time.strftime('%Y-%m-%d %H:%M:%S'), 'command': ' '.join(sys.argv)}
    md = to_markdown(rows, meta)
    print(md)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'inference.json').write_text(json.dumps({'meta': meta, 'rows': rows}, indent=2) + '\n')
    (out / 'inference.md').write_text(md)
    print(f'written {out / "inference.json"} and {out / "inference.md"}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
