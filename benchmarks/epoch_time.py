"""Seconds per training epoch, stochastic depth against constant depth, whole epochs alternated on one machine.

The long runs of ``runs/`` cross machines whose speeds differ 3-4x, so their own epoch times rarely share a
hardware stretch. This benchmark trains whole epochs of the real recipe with the real trainer (``sdzoo train``,
the same data pipeline, augmentation, precision and threads), alternating the two settings in ABBA order
(SD, constant, constant, SD per round) so a drift of the machine's speed falls on both alike:

    python benchmarks/epoch_time.py --model sd_resnet110 --rounds 1 --out benchmarks/results/epoch_time_r110.md

Each epoch is its own fresh one-epoch run in a temporary folder; the trainer's ``epoch_seconds`` (the summed
step times, not data waits or validation) is read from its ``metrics.csv``, and its progress lines (every
``--timeline-seconds``) give the ms per step in each quarter of the epoch: whether a setting slows down or speeds
up within an epoch, apart from the machine's drift between epochs. Stop the training queue first: a
second trainer on the same cores measures the sharing. ``sdzoo cards`` reads the ``.json`` record this writes
(``kind: sdzoo.epoch_time``) into MODEL_CARDS.md's comparison table and picture.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from machine import busy_note, cpu_busy, describe  # benchmarks/machine.py
from results_file import write_atomic

DEFAULT_OUT = Path(__file__).resolve().parent / 'results' / 'epoch_time.md'
SETTINGS = ('sd', 'constant')


def _sdzoo() -> str:
    """The ``sdzoo`` console script of this Python (its bin/ need not be on PATH)."""
    script = Path(sys.executable).with_name('sdzoo')
    return str(script) if script.exists() else (shutil.which('sdzoo') or 'sdzoo')


def _train_command(args: argparse.Namespace, rate: float, out: Path) -> List[str]:
    """``sdzoo train`` for one fresh one-epoch run of the recipe, a progress line every ``--timeline-seconds``."""
    cmd = [_sdzoo(), 'train', args.model, '--data', args.data, '--epochs', '1', '--drop-path-rate', str(rate),
           '--batch-size', str(args.batch_size), '--amp', args.amp, '--threads', str(args.threads), '--no-test',
           '--no-progress', '--log-seconds', str(args.timeline_seconds), '--out', str(out)]
    if args.train_subset:
        cmd += ['--train-subset', str(args.train_subset), '--val-subset', '500']
    if args.max_steps:
        cmd += ['--max-steps', str(args.max_steps)]
    if args.workers is not None:
        cmd += ['--workers', str(args.workers)]
    return cmd


def train_one_epoch(args: argparse.Namespace, rate: float, out: Path) -> Dict[str, float]:
    """One whole epoch of a fresh run (the trainer's own row of metrics.csv); with ``--max-steps`` its first
    steps only, read from the checkpoint's partial-epoch record."""
    cmd = _train_command(args, rate, out)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = '\n'.join(done.stdout.splitlines()[-5:])
        raise SystemExit(f'error: {shlex.join(cmd)} exited with {done.returncode}:\n{tail}')
    if args.max_steps:
        import torch
        p = torch.load(out / 'last.pt', map_location='cpu', weights_only=False)['partial']
        steps = p['seen'] / args.batch_size
        result = dict(epoch_seconds=p['seconds'], steps=steps, ms_per_step=1e3 * p['seconds'] / steps,
                      blocks_run_fraction=p['kept'] / p['units'] if p['units'] else float('nan'))
    else:
        with open(out / 'metrics.csv', newline='') as f:
            row = list(csv.DictReader(f))[-1]
        result = {k: float(row[k]) for k in ('epoch_seconds', 'images_per_sec', 'blocks_run_fraction') if row.get(k)}
        result['steps'] = round(result['images_per_sec'] * result['epoch_seconds'] / args.batch_size)
    timeline = _timeline(done.stdout, args.batch_size) + [[int(result['steps']), result['epoch_seconds']]]
    result.update(timeline=timeline, quarters_ms=_quarters(timeline))
    return result


_PROGRESS = re.compile(r'^epoch \d+ batch (\d+)/\d+: .* ([\d.]+) img/s', re.M)


def _timeline(log: str, batch_size: int) -> List[List[float]]:
    """[step, summed step seconds so far] from the trainer's progress lines (images seen / its img/s)."""
    return [[0, 0.0]] + [[int(b), int(b) * batch_size / float(ips)] for b, ips in _PROGRESS.findall(log)
                         if float(ips) > 0]


def _quarters(timeline: List[List[float]]) -> Optional[List[float]]:
    """ms per step in each quarter of the steps, between the logged points nearest the quarter marks; None
    when the points are too few to tell the quarters apart."""
    steps = timeline[-1][0]
    marks = [min(timeline, key=lambda p: abs(p[0] - steps * q / 4)) for q in range(5)]
    if len({m[0] for m in marks}) < 5:
        return None
    return [1e3 * (b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(marks, marks[1:])]


_SAME = ('model', 'data', 'drop_path_rate', 'amp', 'threads', 'workers', 'train_subset', 'max_steps', 'machine')


def _previous_record(args: argparse.Namespace) -> dict:
    """The record ``--append`` adds to; refused when it measured something else or on another machine."""
    path = args.out.with_suffix('.json')
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f'error: --append needs a readable record at {path}: {e}')
    mine = dict(model=args.model, data=args.data, drop_path_rate=args.drop_path_rate, amp=args.amp,
                threads=args.threads, workers=args.workers, train_subset=args.train_subset, max_steps=args.max_steps,
                machine=describe())
    differ = [k for k in _SAME if previous.get(k) != mine[k]]
    if previous.get('kind') != 'sdzoo.epoch_time' or differ:
        raise SystemExit(f'error: {path} is not a record of the same measurement (differs in: '
                         f'{", ".join(differ) or "kind"}); write a new --out instead of --append')
    return previous


def render(args: argparse.Namespace, record: dict) -> str:
    med = record['median_seconds']
    partial = bool(args.max_steps)
    what = f'ms per step over the first {args.max_steps} steps' if partial else 'seconds per epoch'
    title = what if partial else what.capitalize()  # 'ms' stays lower case
    lines = [f'# {title}: {args.model} SD (drop_path_rate {args.drop_path_rate:g}) vs constant depth',
             '', f'Command: `{record["command"]}`', '',
             f'Machine: {record["machine"]}; `--amp {args.amp}`, {args.threads} threads'
             f'{"" if args.workers is None else f", {args.workers} data-loading processes"}; {record["date"]}. '
             f'{record["busy"]}', '',
             *([f'**Smoke run: epochs of {args.train_subset} images, not a measurement.**', '']
               if args.train_subset else []),
             (f'The first {args.max_steps} steps of fresh runs of the real recipe (`sdzoo train ... --max-steps '
              f'{args.max_steps}`), ABBA order per round; the trainer\'s summed step times from the checkpoint\'s '
              'partial-epoch record. Not an epoch time: `sdzoo cards` leaves this record out.' if partial else
              'Whole epochs of the real recipe (`sdzoo train ... --epochs 1`), ABBA order per round; seconds are the '
              "trainer's summed step times (metrics.csv `epoch_seconds`)."), '',
             f'| setting | runs | {what} (each, in order) | median | blocks run |',
             '|---|---:|---|---:|---:|']
    for s in SETTINGS:
        runs = record['epochs'][s]
        each = ', '.join(f'{e["ms_per_step"] if partial else e["epoch_seconds"]:.0f}' for e in runs)
        fractions = [e['blocks_run_fraction'] for e in runs if e.get('blocks_run_fraction') is not None
                     and e['blocks_run_fraction'] == e['blocks_run_fraction']]
        frac = f'{statistics.fmean(fractions):.3f}' if fractions else '1 (every block)'
        mid = statistics.median(e['ms_per_step'] for e in runs) if partial else med[s]
        lines.append(f'| {s} | {len(runs)} | {each} | {mid:.0f} | {frac} |')
    lines += ['', f'Speed-up {"per step" if partial else "per epoch"} (constant / SD, medians): '
              f'**{record["speedup"]:.2f}x**.', '', *_quarter_lines(record)]
    return '\n'.join(lines)


def _quarter_lines(record: dict) -> List[str]:
    """The ms per step by quarter of the run (medians over the runs that logged a timeline), and their ratio:
    a ratio steady across the quarters puts a difference between epochs on the machine, not on the settings."""
    quarters = {s: [e['quarters_ms'] for e in record['epochs'][s] if e.get('quarters_ms')] for s in SETTINGS}
    if not all(quarters.values()):
        return []
    med = {s: [statistics.median(q[i] for q in quarters[s]) for i in range(4)] for s in SETTINGS}
    lines = ['ms per step in each quarter of the run, medians of the runs with a progress timeline '
             f'({len(quarters["sd"])} SD, {len(quarters["constant"])} constant):', '',
             '| setting | 1st quarter | 2nd | 3rd | 4th |', '|---|---:|---:|---:|---:|']
    lines += [f'| {s} | ' + ' | '.join(f'{v:.0f}' for v in med[s]) + ' |' for s in SETTINGS]
    lines.append('| constant / SD | ' + ' | '.join(f'{c / d:.2f}x' for c, d in zip(med['constant'], med['sd'])) + ' |')
    return lines + ['']


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', default='sd_resnet110')
    ap.add_argument('--data', default='cifar10')
    ap.add_argument('--drop-path-rate', type=float, default=0.5, help='the SD setting (the constant one is 0)')
    ap.add_argument('--rounds', type=int, default=1, help='ABBA rounds: 2 epochs of each setting per round')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--amp', default='auto')
    ap.add_argument('--workers', type=int, help="data-loading processes (default: the trainer's, 2); 0 loads in "
                    'the trainer between steps, so no loading shares the cores while a step is timed')
    ap.add_argument('--train-subset', type=int, help='smoke run: epochs of N images (not a measurement)')
    ap.add_argument('--max-steps', type=int, help='time only the first N steps of each run (ms per step; the '
                    'record is then not an epoch time and sdzoo cards leaves it out)')
    ap.add_argument('--timeline-seconds', type=float, default=10,
                    help='a trainer progress line this often (0: every step), for the ms per step by quarter')
    ap.add_argument('--batch-size', type=int, default=128, help='default: 128, the recipe\'s')
    ap.add_argument('--out', type=Path, default=DEFAULT_OUT)
    ap.add_argument('--append', action='store_true',
                    help='add this run\'s epochs to the record at --out (same settings and machine)')
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error('--rounds must be at least 1')
    if args.timeline_seconds < 0:
        ap.error('--timeline-seconds must be >= 0')
    previous = _previous_record(args) if args.append else None
    rates = {'sd': args.drop_path_rate, 'constant': 0.0}
    epochs: Dict[str, List[Dict[str, float]]] = {s: [] for s in SETTINGS}
    before = cpu_busy()
    with tempfile.TemporaryDirectory(prefix='sdzoo-epoch-time-') as tmp:
        for r in range(args.rounds):
            for i, s in enumerate(('sd', 'constant', 'constant', 'sd')):
                row = train_one_epoch(args, rates[s], Path(tmp) / f'{s}-{r}-{i}')
                epochs[s].append(row)
                print(f'round {r + 1}, {s}: {row["epoch_seconds"]:.0f} s', file=sys.stderr, flush=True)
    after = cpu_busy()
    record = dict(kind='sdzoo.epoch_time', model=args.model, data=args.data, drop_path_rate=args.drop_path_rate,
                  amp=args.amp, threads=args.threads, workers=args.workers, train_subset=args.train_subset,
                  max_steps=args.max_steps,
                  machine=describe(), busy=busy_note(before, after),
                  date=datetime.datetime.now().isoformat(timespec='seconds'),
                  command='python benchmarks/epoch_time.py ' + shlex.join(argv if argv is not None else sys.argv[1:]),
                  epochs=epochs)
    if previous is not None:
        record = dict(record, epochs={s: previous['epochs'][s] + epochs[s] for s in SETTINGS},
                      busy=f'{previous["busy"]} Then: {record["busy"]}',
                      command=f'{previous["command"]}`, then `{record["command"]}')
    median = {s: statistics.median(e['epoch_seconds'] for e in record['epochs'][s]) for s in SETTINGS}
    record.update(median_seconds=median, speedup=median['constant'] / median['sd'])
    text = render(args, record)
    print(text)
    write_atomic(args.out, text)
    write_atomic(args.out.with_suffix('.json'), json.dumps(record, indent=1) + '\n')
    print(f'written to {args.out} and its .json', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
