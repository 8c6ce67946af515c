"""Run records: per-epoch metrics.csv, the training-curve plot, a run's test result, and the per-image hits of an
evaluation (compact enough to commit beside it, so two networks can be compared image by image later)."""
from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..files import atomic_write

__all__ = ['METRIC_FIELDS', 'append_metrics', 'write_metrics', 'read_metrics', 'plot_curves', 'hardware_summary',
           'session_label', 'clean_epoch_labels', 'read_test_result', 'encode_per_image', 'decode_correct']

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

    def write(tmp: str) -> None:
        with open(tmp, 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction='ignore')
            w.writeheader()
            for r in rows:
                out = {}
                for k in METRIC_FIELDS:
                    v = r.get(k, '')
                    out[k] = int(v) if k == 'epoch' else (f'{v:.6g}' if isinstance(v, float) else v)
                w.writerow(out)
    atomic_write(path, write)


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
    try:
        atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=90, format='png'))
    finally:
        plt.close(fig)


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


PER_IMAGE_ENCODING = 'top1_correct: base64 of numpy.packbits (big-endian bits) of each image\'s top-1 hit, in the split\'s order'


def _labels_digest(labels: Any) -> str:
    import numpy as np
    return hashlib.sha256(np.ascontiguousarray(labels, dtype='<i8').tobytes()).hexdigest()


def encode_per_image(correct: Any, labels: Any) -> Dict[str, Any]:
    """The JSON record of one evaluation's per-image hits; the labels' digest identifies the image order."""
    import numpy as np
    hits = np.asarray(correct, dtype=bool).ravel()
    labels = np.asarray(labels).ravel()
    if hits.shape != labels.shape:
        raise ValueError(f'{hits.size} per-image results for {labels.size} labels')
    return dict(images=int(hits.size), encoding=PER_IMAGE_ENCODING, labels_sha256=_labels_digest(labels),
                top1_correct=base64.b64encode(np.packbits(hits).tobytes()).decode('ascii'))


def decode_correct(record: Mapping[str, Any]) -> Any:
    """Each image's top-1 hit (a numpy bool array) from :func:`encode_per_image`'s record."""
    import numpy as np
    try:
        n = int(record['images'])
        bits = np.frombuffer(base64.b64decode(record['top1_correct'], validate=True), dtype=np.uint8)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f'not a per-image record ({e})') from None
    if bits.size != (n + 7) // 8:
        raise ValueError(f'per-image record says {n} images but holds {bits.size * 8} bits')
    return np.unpackbits(bits)[:n].astype(bool)
