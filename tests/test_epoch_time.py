"""benchmarks/epoch_time.py: whole epochs of the real trainer, SD and constant depth alternated, into a record
that `sdzoo cards` reads (MODEL_CARDS.md's per-epoch columns)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from sdzoo.hub.comparison import load_epoch_benchmarks


def test_epoch_time_trains_real_epochs_abba_and_writes_the_record_cards_read(repo_root, tiny_cifar, tmp_path):
    out = tmp_path / 'results' / 'epoch_time_tiny.md'
    done = subprocess.run([sys.executable, str(repo_root / 'benchmarks' / 'epoch_time.py'), '--model', 'sd_resnet20',
                           '--data', str(tiny_cifar), '--threads', '1', '--out', str(out)],
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
    assert [b['file'] for b in load_epoch_benchmarks(out.parent)] == ['epoch_time_tiny.json']
