"""Research (issue 45): when `--select start-or-last` kept a new head's start (its linear probe), what would the last
epoch have scored on test?

For each run directory given (a finished `sdzoo finetune` run whose summary says it kept epoch 0), the last epoch's
weights (`last.pt`, the trainer's checkpoint) go into a copy of the run's model folder and `sdzoo validate` scores
them on the run's own test split, the way the run scored its start. One JSON line per run: steps, the start's and
the last epoch's validation top-1 (and how many validation images), and both test top-1s.

    python benchmarks/finetune_start_vs_last.py RUN_DIR ... --out benchmarks/results/finetune_start_vs_last.jsonl

Results and what they decided: benchmarks/results/finetune.md ("The last epoch as the incumbent ...").
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import append_jsonl  # noqa: E402  benchmarks/results_file.py


def last_epoch_test(run: Path, work: Path) -> dict:
    import torch
    from safetensors.torch import save_file
    summary = json.loads((run / 'summary.json').read_text())
    sel = summary.get('selected') or {}
    if sel.get('epoch') != 0:
        raise SystemExit(f'{run}: did not keep its start (selected epoch {sel.get("epoch")})')
    folder = Path(tempfile.mkdtemp(dir=work)) / run.name
    shutil.copytree(run / 'model', folder)
    ckpt = torch.load(run / 'last.pt', map_location='cpu', weights_only=False)
    save_file({k: v.contiguous() for k, v in ckpt['model'].items()}, str(folder / 'model.safetensors'),
              {'format': 'pt'})
    data = summary['data'] if isinstance(summary['data'], str) else summary['data'].get('path')
    out = folder / 'validate.json'
    subprocess.run(['sdzoo', 'validate', str(folder), '--data', str(data), '--threads', '1', '--workers', '0',
                    '--out', str(out)], check=True, capture_output=True, text=True)
    last_row = list(csv.DictReader(open(run / 'metrics.csv')))[-1]
    n_val = json.loads((run / 'model' / 'data.json').read_text()).get('val')
    subset = json.loads((run / 'config.json').read_text()).get('val_subset')
    n_val = min(n_val, subset) if subset and n_val else n_val  # --val-subset: what was validated
    return dict(run=str(run), model=summary['model'], data=str(data), steps=summary['steps'],
                epochs=summary['epochs'], val_images=n_val, val_start=sel['val_top1'],
                val_last=float(last_row['val_top1']), test_start=summary['test']['top1'],
                test_last=json.loads(out.read_text())['top1'])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', type=Path)
    p.add_argument('--out', type=Path, required=True)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for run in dict.fromkeys(args.runs):  # each run once
            row = last_epoch_test(run, Path(tmp))
            print(json.dumps(row), flush=True)
            append_jsonl(args.out, row)
    return 0


if __name__ == '__main__':
    sys.exit(main())
