"""Run records: per-epoch metrics.csv, the training-curve plot, and a run's test result."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

__all__ = ['METRIC_FIELDS', 'append_metrics', 'write_metrics', 'read_metrics', 'plot_curves', 'hardware_summary',
           'session_label', 'clean_epoch_labels', 'read_test_result']

METRIC_FIELDS = ['epoch', 'lr', 'train_loss', 'train_top1', 'val_loss', 'val_top1', 'val_top5',
                 'epoch_seconds', 'images_per_sec', 'wall_clock_hours', 'blocks_run_fraction']


def read_metrics(path: os.PathLike | str) -> List[Dict[str, float]]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline='') as f:
        return [{k: float(v) if v not in ('', None) else float('nan') for k, v in row.items()}
                for row in csv.DictReader(f)]


def read_test_result(folder: os.PathLike | str) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """(file, record) of a folder's test result: sdzoo validate's validate.json first, else the ``test`` of the
    trainer's summary.json; None when it has neither."""
    folder = Path(folder)
    validated = folder / 'validate.json'
    if validated.is_file():
        return validated, json.loads(validated.read_text())
    summary = folder / 'summary.json'
    if summary.is_file():
        test = json.loads(summary.read_text()).get('test')
        if isinstance(test, dict):
            return summary, test
    return None


def append_metrics(path: os.PathLike | str, row: Dict[str, float]) -> None:
    """Rewrite the file atomically with ``row`` appended (drops rows of epochs >= row's: a resume)."""
    rows = [r for r in read_metrics(path) if r['epoch'] < row['epoch']]
    write_metrics(path, rows + [row])


def write_metrics(path: os.PathLike | str, rows: List[Dict[str, float]]) -> None:
    """Write ``rows`` as metrics.csv, atomically."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    with open(tmp, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction='ignore')
        w.writeheader()
        for r in rows:
            out = {}
            for k in METRIC_FIELDS:
                v = r.get(k, '')
                out[k] = int(v) if k == 'epoch' else (f'{v:.6g}' if isinstance(v, float) else v)
            w.writerow(out)
    os.replace(tmp, path)


def plot_curves(metrics_csv: os.PathLike | str, out_png: os.PathLike | str, title: str = '') -> None:
    """Loss, train/val accuracy and learning rate against epochs."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = read_metrics(metrics_csv)
    if not rows:
        return
    ep = [r['epoch'] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(ep, [r['train_loss'] for r in rows], label='train')
    axes[0].plot(ep, [r['val_loss'] for r in rows], label='val')
    axes[0].set_title('loss')
    axes[1].plot(ep, [r['train_top1'] for r in rows], label='train (SD active)')
    axes[1].plot(ep, [r['val_top1'] for r in rows], label='val')
    axes[1].set_title('top-1 accuracy (%)')
    axes[2].plot(ep, [r['lr'] for r in rows])
    axes[2].set_yscale('log')
    axes[2].set_title('learning rate')
    for ax in axes:
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    tmp = out_png.with_name(f'.{out_png.stem}.tmp.png')
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out_png)


def session_label(session: Dict[str, Any]) -> str:
    """The hardware and precision of one stretch of a run (a ``sessions.json`` entry)."""
    prec = {'bfloat16': 'bf16 autocast', 'float16': 'fp16 autocast'}.get(session.get('amp'), 'fp32')
    # records written before "1 thread" was spelled right still name the same machine
    hw = session['hardware'].replace(', 1 threads', ', 1 thread') if session.get('hardware') else None
    return f"{hw}, {prec}" if hw else session.get('note', 'not recorded')


def clean_epoch_labels(sessions: List[Dict[str, Any]], epochs: int) -> Dict[int, str]:
    """Epoch -> :func:`session_label` for the epochs trained whole within one stretch: an epoch in which
    a session started (or resumed) took part of its time elsewhere, so its seconds compare with nothing."""
    out: Dict[int, str] = {}
    for i, s in enumerate(sessions):
        end = sessions[i + 1]['epoch'] - 1 if i + 1 < len(sessions) else epochs
        for epoch in range(int(s['epoch']) + 1, int(end) + 1):
            out[epoch] = session_label(s)
    return out


def hardware_summary(sessions: List[Dict[str, Any]], epochs: int) -> str:
    """Where a run trained, as epoch ranges per (hardware, precision): long runs span machines."""
    groups: List[List[Any]] = []  # [label, first epoch, last epoch]
    for i, s in enumerate(sessions):
        label = session_label(s)
        end = max(s['epoch'], sessions[i + 1]['epoch'] if i + 1 < len(sessions) else epochs)
        if groups and groups[-1][0] == label:
            groups[-1][2] = end
        else:
            groups.append([label, s['epoch'], end])
    if len(groups) == 1:
        return groups[0][0]
    return '; '.join(f'{g[0]} (epochs {g[1]}-{g[2]})' for g in groups)
