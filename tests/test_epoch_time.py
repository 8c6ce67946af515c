"""benchmarks/epoch_time.py: whole epochs of the real trainer, SD and constant depth alternated, into a record
that `sdzoo cards` reads (MODEL_CARDS.md's per-epoch columns)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from sdzoo.reports.comparison import load_epoch_benchmarks


def test_epoch_time_trains_real_epochs_abba_and_writes_the_record_cards_read(repo_root, tiny_cifar, tmp_path):
    out = tmp_path / 'results' / 'epoch_time_tiny.md'
    done = subprocess.run([sys.executable, str(repo_root / 'benchmarks' / 'epoch_time.py'), '--model', 'sd_resnet20',
                           '--data', str(tiny_cifar), '--threads', '1', '--batch-size', '16', '--timeline-seconds', '0',
                           '--out', str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    order = [line.split(', ')[1].split(':')[0] for line in done.stderr.splitlines() if line.startswith('round 1')]
    assert order == ['sd', 'constant', 'constant', 'sd']
    record = json.loads(out.with_suffix('.json').read_text())
    assert record['kind'] == 'sdzoo.epoch_time' and record['model'] == 'sd_resnet20' and record['drop_path_rate'] == 0.5
    assert [len(record['epochs'][s]) for s in ('sd', 'constant')] == [2, 2]
    # the SD epochs dropped blocks, the constant ones ran every block (the trainer records no fraction then)
    assert all(0 < e['blocks_run_fraction'] < 1 for e in record['epochs']['sd'])
    assert all(math.isnan(e.get('blocks_run_fraction', math.nan)) for e in record['epochs']['constant'])
    med = record['median_seconds']
    assert med['sd'] > 0 and med['constant'] > 0 and math.isclose(record['speedup'], med['constant'] / med['sd'])
    assert '| sd | 2 |' in out.read_text() and 'Speed-up per epoch' in out.read_text()
    # a progress line every step: the timeline runs from 0 to the epoch's summed step time, and the quarters'
    # ms per step add up to it
    for run in record['epochs']['sd'] + record['epochs']['constant']:
        steps, timeline = run['steps'], run['timeline']
        assert steps == 13 and timeline[0] == [0, 0.0] and timeline[-1] == [steps, run['epoch_seconds']]
        assert [p[0] for p in timeline] == sorted(p[0] for p in timeline)
        marks = [round(steps * q / 4) for q in range(5)]
        assert len(run['quarters_ms']) == 4 and all(q > 0 for q in run['quarters_ms'])
        assert math.isclose(sum(q * (b - a) for q, a, b in zip(run['quarters_ms'], marks, marks[1:])),
                            1e3 * run['epoch_seconds'], rel_tol=0.02)
    assert '| constant / SD |' in out.read_text()
    assert [b['file'] for b in load_epoch_benchmarks(out.parent)] == ['epoch_time_tiny.json']


def test_max_steps_times_the_first_steps_cards_leave_it_out_and_append_adds_runs(repo_root, tiny_cifar, tmp_path):
    out = tmp_path / 'epoch_time_steps.md'
    cmd = [sys.executable, str(repo_root / 'benchmarks' / 'epoch_time.py'), '--model', 'sd_resnet20',
           '--data', str(tiny_cifar), '--threads', '1', '--max-steps', '2', '--batch-size', '16', '--out', str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(out.with_suffix('.json').read_text())
    assert record['max_steps'] == 2
    # batches of 16 from this folder's ~216 training images: the trainer stops after 2 of its 13 steps
    for s in ('sd', 'constant'):
        for run in record['epochs'][s]:
            assert run['steps'] == 2 and run['ms_per_step'] > 0 and math.isclose(run['ms_per_step'], 1e3 * run['epoch_seconds'] / run['steps'])
    assert 'ms per step over the first 2 steps' in out.read_text()
    assert load_epoch_benchmarks(tmp_path) == []
    # --append adds another run's measurements to the same record; one of other settings is refused untouched
    before = out.with_suffix('.json').read_text()
    refused = subprocess.run(cmd + ['--append', '--drop-path-rate', '0.2'], capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and 'differs in: drop_path_rate' in refused.stderr, refused.stderr
    assert 'Traceback' not in refused.stderr and out.with_suffix('.json').read_text() == before
    appended = subprocess.run(cmd + ['--append'], capture_output=True, text=True, timeout=600)
    assert appended.returncode == 0, appended.stdout + appended.stderr
    merged = json.loads(out.with_suffix('.json').read_text())
    assert [len(merged['epochs'][s]) for s in ('sd', 'constant')] == [4, 4]
    assert merged['epochs']['sd'][:2] == record['epochs']['sd'] and merged['command'].count('epoch_time.py') == 2
