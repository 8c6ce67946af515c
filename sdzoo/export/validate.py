"""Check an exported ONNX file against the PyTorch eval model, and print export reports.

Parity is measured on the logits. With ``scale = max(1, max|logits_torch|)``:

* ``rel_max_diff = max|logits_onnx - logits_torch| / scale`` must not exceed the tolerance:
  ``1e-4`` for fp32 exports (measured ~1e-6), ``1e-2`` for fp16 weights (fp16 keeps ~3 decimal
  digits and the error grows with depth; measured 4e-4 to 7e-4 on sd_resnet20/110 and sd_vit_lite);
* top-1 may only disagree on near ties: an image whose PyTorch top-2 margin exceeds
  ``2 * tolerance * scale`` must get the same top-1 class from onnxruntime.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..data.images import IMG_EXTENSIONS

__all__ = ['TOLERANCES', 'ParityError', 'compare_logits', 'list_images', 'validate_onnx',
           'format_report']

TOLERANCES = {'fp32': 1e-4, 'fp16': 1e-2}


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree beyond the tolerance."""


def compare_logits(ref: np.ndarray, got: np.ndarray, tolerance: float) -> Dict[str, Any]:
    """Max / mean abs difference, relative difference and top-1 agreement of two logit batches."""
    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise ParityError(f'output shape {got.shape} differs from PyTorch {ref.shape}')
    if not np.isfinite(got).all():
        raise ParityError('onnxruntime produced non-finite logits')
    diff = np.abs(ref - got)
    scale = max(1.0, float(np.abs(ref).max()))
    top_ref, top_got = ref.argmax(1), got.argmax(1)
    part = np.sort(ref, axis=1)
    margin = part[:, -1] - part[:, -2] if ref.shape[1] > 1 else np.full(len(ref), np.inf)
    flips = top_ref != top_got
    hard_flips = int((flips & (margin > 2 * tolerance * scale)).sum())
    rel = float(diff.max()) / scale
    return {
        'n': int(ref.shape[0]),
        'max_abs_diff': float(diff.max()),
        'mean_abs_diff': float(diff.mean()),
        'logit_scale': scale,
        'rel_max_diff': rel,
        'top1_agreement': float(1.0 - flips.mean()),
        'top1_flips': int(flips.sum()),
        'top1_flips_beyond_ties': hard_flips,
        'passed': bool(rel <= tolerance and hard_flips == 0),
    }


def list_images(data_dir: Union[str, os.PathLike], limit: int) -> List[Tuple[Path, Optional[str]]]:
    """Up to ``limit`` ``(image, class folder)`` pairs, taken round-robin over the class folders.

    A folder with images directly inside gives ``(image, None)`` pairs in sorted order.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f'data folder {root} does not exist')
    is_img = lambda p: p.is_file() and p.suffix.lower() in IMG_EXTENSIONS  # noqa: E731
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        return [(p, None) for p in sorted(filter(is_img, root.iterdir()))[:limit]]
    per_class = [iter(sorted(filter(is_img, c.iterdir()))) for c in classes]
    picked: List[Tuple[Path, Optional[str]]] = []
    while len(picked) < limit and per_class:
        alive = []
        for c, it in zip(classes, per_class):
            p = next(it, None)
            if p is not None and len(picked) < limit:
                picked.append((p, c.name))
                alive.append((c, it))
        classes, per_class = [c for c, _ in alive], [it for _, it in alive]
    return picked


def _torch_input(x: np.ndarray, preprocess: bool, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The reference model's input for what the ONNX graph is fed."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if not preprocess:
        return t.float()
    t = t.permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (t - m) / s


def _run_both(ort_model, reference: nn.Module, x: np.ndarray, preprocess: bool, mean, std,
              chunk: int = 64) -> Tuple[np.ndarray, np.ndarray]:
    refs, gots = [], []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        got = ort_model.run(xb)
        if got.shape[0] != xb.shape[0]:
            raise ParityError(f'batch of {xb.shape[0]} gave {got.shape[0]} outputs: batch dimension not dynamic?')
        with torch.no_grad():
            refs.append(reference(_torch_input(xb, preprocess, mean, std)).float().numpy())
        gots.append(got)
    return np.concatenate(refs), np.concatenate(gots)


def validate_onnx(
        path: Union[str, os.PathLike],
        reference: nn.Module,
        *,
        preprocess: bool = False,
        fp16: bool = False,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        data_dir: Optional[Union[str, os.PathLike]] = None,
        val_images: int = 64,
        random_batches: Sequence[int] = (1, 5),
        tolerance: Optional[float] = None,
        seed: int = 0,
        labels: Optional[Sequence[str]] = None,
        providers: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Parity of an ONNX file with ``reference`` (eval PyTorch model) on random and real inputs.

    Raises :class:`ParityError` when a check fails; returns the measurements otherwise.
    """
    from PIL import Image
    from ..runtime import OrtModel

    tolerance = TOLERANCES['fp16' if fp16 else 'fp32'] if tolerance is None else float(tolerance)
    if not tolerance > 0:
        raise ValueError(f'tolerance must be > 0, got {tolerance}')
    reference = reference.eval()
    ort_model = OrtModel(path, providers=providers)
    rng = np.random.default_rng(seed)
    h, w = ort_model.spatial_size
    c = ort_model.in_chans
    xs = []
    for b in random_batches:
        if preprocess:
            xs.append(rng.integers(0, 256, size=(b, h, w, c), dtype=np.uint8))
        else:
            xs.append(rng.standard_normal((b, c, h, w), dtype=np.float32))
    refs, gots = zip(*(_run_both(ort_model, reference, x, preprocess, mean, std) for x in xs))
    result: Dict[str, Any] = {
        'provider': ort_model.provider,
        'tolerance': tolerance,
        'random': dict(compare_logits(np.concatenate(refs), np.concatenate(gots), tolerance),
                       batches=list(random_batches)),
        'images': None,
    }
    if data_dir is not None and val_images > 0:
        picked = list_images(data_dir, val_images)
        if not picked:
            raise FileNotFoundError(f'no images ({", ".join(IMG_EXTENSIONS)}) found in {data_dir}')
        images = []
        for p, _ in picked:
            with Image.open(p) as img:
                images.append(img.convert('RGB'))
        x = ort_model.preprocess(images)
        ref, got = _run_both(ort_model, reference, x, preprocess, mean, std)
        res = compare_logits(ref, got, tolerance)
        res['data'] = str(data_dir)
        folders = [cls for _, cls in picked]
        names = list(labels or [])
        if all(folders) and names and set(folders) <= set(names):
            target = np.array([names.index(f) for f in folders])
            res['accuracy_torch'] = float((ref.argmax(1) == target).mean())
            res['accuracy_onnx'] = float((got.argmax(1) == target).mean())
        result['images'] = res
    result['passed'] = bool(result['random']['passed'] and (result['images'] or {'passed': True})['passed'])
    if not result['passed']:
        bad = {k: {m: result[k][m] for m in ('rel_max_diff', 'max_abs_diff', 'top1_agreement', 'top1_flips_beyond_ties')}
               for k in ('random', 'images') if result[k] and not result[k]['passed']}
        raise ParityError(f'tolerance {tolerance:g} (relative to the logit scale) exceeded: {bad}')
    return result


def _fmt_bytes(n: int) -> str:
    for unit in ('GiB', 'MiB', 'KiB'):
        div = {'GiB': 1 << 30, 'MiB': 1 << 20, 'KiB': 1 << 10}[unit]
        if n >= div:
            return f'{n / div:.2f} {unit}'
    return f'{n} B'


def format_report(report: Dict[str, Any]) -> str:
    """The export report as a plain-text table (what ``sdzoo export`` prints)."""
    rows = [
        ('model', f"{report['model']}{'.' + report['tag'] if report.get('tag') else ''}"),
        ('file', report['file']),
        ('size', _fmt_bytes(report['bytes'])),
        ('precision / preprocess', f"{report['precision']} / {'in graph (uint8 NHWC)' if report['preprocess'] else 'no'}"),
        ('opset / exporter', f"{report['opset']} / {report['exporter']}"),
        ('input -> output', f"{report['input']['name']} {report['input']['dtype']}{report['input']['shape']} -> "
                            f"{report['output']['name']} {report['output']['dtype']}{report['output']['shape']}"),
        ('export / validate time', f"{report['export_seconds']:.2f} s / {report['validate_seconds']:.2f} s"),
        ('nodes / initializers', f"{report['nodes']} / {report['initializers']}"),
        ('SD units folded', str(report['sd_units_folded'])),
        ('ops', ', '.join(f'{k} {v}' for k, v in report['op_histogram'].items())),
    ]
    parity = report['parity']
    rows.append(('parity provider / tol', f"{parity['provider']} / {parity['tolerance']:g} x logit scale"))
    for kind in ('random', 'images'):
        p = parity.get(kind)
        if not p:
            continue
        extra = ''
        if 'accuracy_onnx' in p:
            extra = f", acc onnx {p['accuracy_onnx']:.4f} torch {p['accuracy_torch']:.4f}"
        rows.append((f'parity {kind} (n={p["n"]})',
                     f"max {p['max_abs_diff']:.3g}, mean {p['mean_abs_diff']:.3g}, rel {p['rel_max_diff']:.3g}, "
                     f"top-1 agree {p['top1_agreement']:.4f}{extra} -> {'ok' if p['passed'] else 'FAIL'}"))
    if report.get('report'):
        rows.append(('report', report['report']))
    width = max(len(k) for k, _ in rows)
    line = '-' * (width + 2) + '+' + '-' * 60
    out = [line] + [f' {k:<{width}} | {v}' for k, v in rows] + [line]
    return '\n'.join(out)
