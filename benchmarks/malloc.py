"""Training-step time with glibc's allocator defaults vs ``--malloc reuse`` (sdzoo/train/allocator.py).

The setting belongs to a process, so each measurement is its own ``benchmarks/train_speed.py --timm-models``
process (timm's model and its ``sdzoo.convert`` copy, steps interleaved), alternated system, reuse, reuse,
system, ... over ``--rounds`` pairs; the table takes the median of each process's medians:

    python benchmarks/malloc.py --timm-models resnet50,vit_small_patch16_224,convnext_tiny --rounds 2 \\
        --steps 4 --warmup 1 --threads 2

Extra arguments after ``--`` go to train_speed.py as they are. Writes benchmarks/results/malloc.md and its .json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from machine import busy_note, cpu_busy, describe  # benchmarks/machine.py
from results_file import write_atomic

HERE = Path(__file__).resolve().parent
MODES = ('system', 'reuse')
DEFAULT_OUT = HERE / 'results' / 'malloc.md'


def measure(models: str, mode: str, args: argparse.Namespace, extra: List[str], tmp: Path, i: int) -> dict:
    """One train_speed.py process with ``--malloc mode``; its JSON record."""
    out = tmp / f'{i}-{mode}.md'
    cmd = [sys.executable, str(HERE / 'train_speed.py'), '--timm-models', models, '--malloc', mode,
           '--configs', args.configs, '--batch-size', str(args.batch_size), '--img-size', str(args.img_size),
           '--drop-path-rate', str(args.drop_path_rate), '--steps', str(args.steps), '--warmup', str(args.warmup),
           '--out', str(out)] + (['--threads', str(args.threads)] if args.threads else []) + extra
    print(f'round {i // 2 + 1}: --malloc {mode}', file=sys.stderr, flush=True)
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f'train_speed.py --malloc {mode} failed: {r.stderr.strip().splitlines()[-1:]}')
    return json.loads(out.with_suffix('.json').read_text())


def summarize(records: Dict[str, List[dict]]) -> List[dict]:
    """Per model and precision: medians over the processes of each mode, and the ratios between them."""
    rows = []
    for first in records['system'][0]['rows']:
        key = (first['model'], first['config'])
        med: Dict[str, Dict[str, float]] = {}
        for mode in MODES:
            runs = [next(x for x in rec['rows'] if (x['model'], x['config']) == key) for rec in records[mode]]
            med[mode] = {f'{v}_ms': statistics.median(x['median_ms'][v] for x in runs) for v in ('timm', 'converted')}
            med[mode].update({f'{v}_faults': statistics.median(x['page_faults'][v] for x in runs)
                              for v in ('timm', 'converted')})
        rows.append(dict(model=key[0], config=key[1], ideal=first['ideal'], processes=len(records['system']), **{
            f'{mode}_{k}': v for mode in MODES for k, v in med[mode].items()}))
    return rows


def render(rows: List[dict], args: argparse.Namespace, command: str, busy: str, settings: Dict[str, str],
           threads: int) -> str:
    lines = [
        f'# Training-step time: glibc malloc defaults vs `--malloc reuse`, batch {args.batch_size}, '
        f'{args.img_size}x{args.img_size}, CPU', '',
        f'- date: {datetime.datetime.now().isoformat(timespec="seconds")}; command: `{command}`',
        f'- {describe()}; {threads} threads; malloc: {settings["system"]} / {settings["reuse"]}',
        f'- each cell: median over {args.rounds} processes per setting (alternated system, reuse, reuse, '
        f'system, ...) of each process\'s median of {args.steps} timed steps after {args.warmup} warm-up; '
        f'drop_path_rate {args.drop_path_rate}, row mode; step = forward + cross-entropy + backward + SGD on a '
        'synthetic batch; page faults: minor faults per step',
        f'- {busy}', '',
        '| model | precision | timm ms: system / reuse | reuse speed-up, timm | converted ms: system / reuse | '
        'reuse speed-up, converted | converted vs timm: system / reuse (ideal) | page faults per step, timm: '
        'system / reuse | converted: system / reuse |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['config']} | {r['system_timm_ms']:.0f} / {r['reuse_timm_ms']:.0f} | "
            f"{r['system_timm_ms'] / r['reuse_timm_ms']:.2f}x | {r['system_converted_ms']:.0f} / "
            f"{r['reuse_converted_ms']:.0f} | {r['system_converted_ms'] / r['reuse_converted_ms']:.2f}x | "
            f"{r['system_timm_ms'] / r['system_converted_ms']:.2f}x / {r['reuse_timm_ms'] / r['reuse_converted_ms']:.2f}x"
            f" ({r['ideal']:.2f}x) | {r['system_timm_faults']:,.0f} / {r['reuse_timm_faults']:,.0f} | "
            f"{r['system_converted_faults']:,.0f} / {r['reuse_converted_faults']:,.0f} |")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    own = argv[:argv.index('--')] if '--' in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--timm-models', default='resnet50', help='comma list of timm model names')
    p.add_argument('--rounds', type=int, default=2, help='pairs of processes (system + reuse) per model')
    p.add_argument('--configs', default='bf16-cl', help='train_speed.py precisions (default: bf16-cl)')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--drop-path-rate', type=float, default=0.4)
    p.add_argument('--steps', type=int, default=4)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--out', type=Path, default=DEFAULT_OUT)
    args = p.parse_args(own)
    if args.rounds < 1 or args.steps < 1:
        p.error('--rounds and --steps must be >= 1')
    busy0 = cpu_busy()
    records: Dict[str, List[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds * 2):
            mode = MODES[(i + i // 2) % 2]  # system, reuse, reuse, system, system, reuse, ...
            records[mode].append(measure(args.timm_models, mode, args, extra, Path(tmp), i))
    busy = busy_note(busy0, cpu_busy())
    rows = summarize(records)
    command = 'python benchmarks/malloc.py ' + ' '.join(argv)
    settings = {m: records[m][0]['malloc'] for m in MODES}
    text = render(rows, args, command, busy, settings, records['reuse'][0]['threads'])
    print(text)
    write_atomic(args.out, text)
    write_atomic(args.out.with_suffix('.json'), json.dumps(dict(
        kind='sdzoo.malloc', machine=describe(), busy=busy, command=command, settings=settings, rows=rows,
        date=datetime.datetime.now().isoformat(timespec='seconds')), indent=1) + '\n')
    print(f'written to {args.out} and its .json', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
