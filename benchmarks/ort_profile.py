"""Where onnxruntime spends a run, per operator type: onnxruntime's own profiler over N runs of each ONNX file.

Used to tell whether an INT8 model is slow in its kernels or in quantize/dequantize glue, and (``--by-shape``: per
operator type and output shape) what a residual block costs in each stage of a network:

    python benchmarks/ort_profile.py export/sd_resnet110/1/model.onnx export/sd_resnet110_int8/1/model.onnx \\
        --out benchmarks/results/ort_profile_r110.md
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from machine import busy_note, cpu_busy, describe  # benchmarks/machine.py
from results_file import write_atomic


def profile(path: Path, batch: int, runs: int, threads: int,
            by_shape: bool = False) -> Tuple[Dict[str, float], Dict[str, int]]:
    """Microseconds per run and node count, per operator type (and output shape: ``by_shape``), kernel time only."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix='sdzoo-ortprof-')) / 'p')
    sess = ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])
    inp = sess.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    dtype = np.uint8 if 'uint8' in inp.type else np.float32
    x = (np.random.default_rng(0).integers(0, 256, shape) if dtype == np.uint8
         else np.random.default_rng(0).standard_normal(shape)).astype(dtype)
    for _ in range(runs):
        sess.run(None, {inp.name: x})
    trace = sess.end_profiling()
    us: Dict[str, float] = collections.Counter()
    nodes: Dict[str, int] = collections.Counter()
    for e in json.loads(Path(trace).read_text()):
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time'):
            key = e['args']['op_name']
            if by_shape:
                out = (e['args'].get('output_type_shape') or [{}])[0]
                key += ' ' + 'x'.join(map(str, next(iter(out.values()), [])))
            us[key] += e['dur'] / runs
            nodes[key] += 1
    os.remove(trace)
    return dict(us), {k: v // runs for k, v in nodes.items()}


def render(results: List[Tuple[Path, Dict[str, float], Dict[str, int]]], args, busy: str) -> str:
    lines = [f'# onnxruntime per-operator{" and output shape" if args.by_shape else ""} profile, batch {args.batch}, {args.threads} thread(s)', '',
             f'- command: `python benchmarks/ort_profile.py {" ".join(sys.argv[1:])}`',
             f'- {time.strftime("%Y-%m-%d %H:%M")}; {describe()}; {args.runs} runs per file, kernel time only',
             f'- {busy}', '']
    for path, us, nodes in results:
        total = sum(us.values())
        lines += [f'## {path} ({total / 1e3:.2f} ms of kernel time per run)', '',
                  f'| operator{" and output shape" if args.by_shape else ""} | µs per run | share | nodes | µs per node |',
                  '|---|---:|---:|---:|---:|']
        for op, t in sorted(us.items(), key=lambda kv: -kv[1])[:args.top]:
            lines.append(f'| {op} | {t:.1f} | {t / total:.0%} | {nodes[op]} | {t / max(1, nodes[op]):.1f} |')
        lines.append('')
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('files', nargs='+', type=Path)
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--runs', type=int, default=200)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--top', type=int, default=10, help='operator types shown per file')
    p.add_argument('--by-shape', action='store_true', help='one row per operator type and output shape')
    p.add_argument('--out', type=Path, default=None, help='markdown file to write (default: print only)')
    args = p.parse_args(argv)
    for f in args.files:
        if not f.is_file():
            raise SystemExit(f'{f}: no such ONNX file (sdzoo export writes export/<model>/1/model.onnx)')
    busy0 = cpu_busy()
    results = [(f, *profile(f, args.batch, args.runs, args.threads, args.by_shape)) for f in args.files]
    text = render(results, args, busy_note(busy0, cpu_busy()))
    print(text)
    if args.out:
        write_atomic(args.out, text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
