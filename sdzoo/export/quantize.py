"""INT8 quantization of sdzoo ONNX exports with onnxruntime's own tools, behind an accuracy gate.

Static quantization (``quant_pre_process`` -> ``quantize_static``, QDQ format, per-channel weights) is
calibrated on images of the data set's *training* split, never on the split it is judged on. Before
the INT8 file lands, top-1 of the fp32 and INT8 graphs is measured side by side on the validation
(or test) split; a drop beyond ``max_accuracy_drop`` points raises :class:`QuantizationError` with the
numbers and writes nothing. QDQ graphs are what TensorRT's explicit-precision INT8 path consumes too.

``mode='dynamic'`` (``quantize_dynamic`` of the MatMuls only, no calibration) exists for the ViT
comparison in ``docs/int8.md``; static is the default because it was measured faster and as accurate.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.images import ImageGeometry

__all__ = ['CALIBRATION_METHODS', 'DEFAULT_METHOD', 'DEFAULT_CALIBRATION_IMAGES', 'DEFAULT_MAX_ACCURACY_DROP',
           'QuantizationError', 'load_labelled_images', 'top1', 'hits', 'accuracy_gate', 'judge_drop',
           'quantize_onnx', 'int8_path_for', 'training_split']

from .int8_recipe import (  # noqa: E402  (re-exported: the recipe's defaults)
    CALIBRATION_METHODS, DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_ACCURACY_DROP, DEFAULT_METHOD, EVAL_SPLITS,
)


class QuantizationError(ValueError):
    """Bad calibration/evaluation data, or an INT8 model that fails the accuracy gate (nothing written)."""


def int8_path_for(onnx_path: Union[str, os.PathLike]) -> Path:
    """``model.onnx`` -> ``model_int8.onnx`` (same folder)."""
    p = Path(onnx_path)
    return p.with_name(f'{p.stem}_int8{p.suffix}')


# --------------------------------------------------------------------------------------------- data
def _class_balanced(labels: np.ndarray, limit: Optional[int]) -> np.ndarray:
    """Indices of the first ``limit`` images taken round-robin over the classes (all if ``limit`` is None)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    order = [idx[i] for i in range(max(len(x) for x in per_class)) for idx in per_class if i < len(idx)]
    return np.sort(np.asarray(order[:limit]))


def training_split(record: Optional[Mapping[str, Any]], data: str) -> Optional[Dict[str, Any]]:
    """``load_splits`` arguments that reproduce a model's own train/validation split of ``data``.

    ``record`` is the training run's ``data.json``; it applies only when it describes this very data set
    (same name for cifar10/fashion_mnist, same folder otherwise). ``val_size`` 0 means the model saw every
    image of train/; ``val_sha256`` (a random holdout) lets the caller check the folder did not change."""
    if not record:
        return None
    from ..data.sources import named_data_set
    named = named_data_set(data)
    if named:
        same = named_data_set(str(record.get('name', ''))) == named
    else:
        same = bool(record.get('source')) and Path(record['source']).resolve() == Path(data).expanduser().resolve()
    if not same:
        return None
    split = record.get('split') or {}
    if split.get('holdout', '').startswith('stratified'):
        return dict(val_size=int(split['val_size']), holdout='stratified', split_seed=int(split.get('seed', 0)),
                    val_sha256=split.get('val_sha256'))
    return dict(val_size=int(record.get('val') or 0), holdout='last', split_seed=0, val_sha256=None,
                val_folder=int(record.get('val') or 0) > 0 and not record.get('split'))


def load_labelled_images(data: str, split: str, input_size: Sequence[int], num_classes: int,
                         mean: Sequence[float], std: Sequence[float], limit: Optional[int] = None,
                         channels_last: bool = False,
                         trained_split: Optional[Mapping[str, Any]] = None,
                         geometry: Optional[ImageGeometry] = None) -> Tuple[np.ndarray, np.ndarray, str]:
    """``(x, labels, description)`` of one split of a data set, preprocessed as ``sdzoo validate`` does.

    ``data`` is a data set name (``cifar10``, ``fashion_mnist``) or a folder with ``train/`` (and
    ``val/``/``test/``) or class sub-folders; ``split`` is ``train`` (the training images without the
    validation hold-out), ``val`` or ``test``. ``x`` is float32 NCHW normalized with ``mean``/``std``,
    or uint8 NHWC with ``channels_last`` (graphs that normalize inside). ``trained_split``
    (:func:`training_split`) draws train and val exactly as the model's training run did. ``geometry`` (the
    model's crop; an exported model's: ``OrtModel.geometry``) brings images of another size
    to the input size as ``sdzoo serve`` does, so a folder of photos calibrates and gates the model it serves.
    """
    from ..data.sources import default_data_root, load_splits, named_data_set, normalized, split_pixels
    c, h, w = (int(v) for v in input_size)
    named = named_data_set(data)
    if named is None:
        root = Path(data).expanduser()
        if not root.is_dir():
            raise QuantizationError(f'data set {data!r} not found: neither cifar10/fashion_mnist nor a folder '
                                    f'({root.resolve()})')
    elif named == 'cifar10' and not (default_data_root() / 'cifar10').is_dir():
        raise QuantizationError(f'CIFAR-10 image folders not found at {default_data_root() / "cifar10"} '
                                '(set SDZOO_DATA or pass a folder)')
    try:
        kw = {} if not trained_split else {k: trained_split[k] for k in ('val_size', 'holdout', 'split_seed')}
        if trained_split and trained_split.get('val_folder'):
            kw = {}  # the run validated on the folder's own val/
        splits = load_splits(data, (c, h, w), geometry=geometry, **kw)
    except (FileNotFoundError, ValueError) as e:
        raise QuantizationError(f'cannot read data set {data!r}: {e}') from e
    want = (trained_split or {}).get('val_sha256')
    if want and (splits.split_record or {}).get('val_sha256') != want:
        raise QuantizationError(f'{splits.source} changed since the model was trained: its held-out file list no '
                                "longer matches the run's data.json, so training and held-out images cannot be told "
                                'apart; gate on a test/ folder (--eval-split test) or retrain')
    if splits.num_classes != num_classes:
        raise QuantizationError(f'data set {data!r} has {splits.num_classes} classes ({", ".join(splits.classes[:5])}'
                                f'{", …" if splits.num_classes > 5 else ""}), the model has {num_classes}')
    chosen = getattr(splits, split)
    if chosen is None or len(chosen) == 0:
        if split == 'val' and splits.test is not None and len(splits.test):
            raise QuantizationError(f'data set {data!r} has no val split ({splits.source}): gate on its test/ '
                                    'folder with --eval-split test')
        raise QuantizationError(f'data set {data!r} has no {split} split ({splits.source})')
    labels = chosen.labels.numpy()
    idx = _class_balanced(labels, limit)
    pixels = split_pixels(chosen, idx, (c, h, w), split)
    x = np.ascontiguousarray(pixels) if channels_last else normalized(pixels, mean, std)
    desc = f'{len(idx)} {split} images of {splits.name} ({splits.source})'
    return x, labels[idx], desc


def top1(session, x: np.ndarray, labels: np.ndarray, batch_size: int = 250) -> float:
    """Top-1 accuracy (fraction) of an :class:`sdzoo.runtime.OrtModel` on preprocessed images."""
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((session.run(x[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
    return correct / len(x)


def hits(model, x: np.ndarray, labels: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Per-image top-1 hit (bool): what the paired gates compare. ``model`` is an
    :class:`sdzoo.runtime.OrtModel` or any callable from a batch of ``x`` to numpy logits."""
    predict = model.run if hasattr(model, 'run') else model
    return np.concatenate([np.asarray(predict(x[i:i + batch_size])).argmax(1) == labels[i:i + batch_size]
                           for i in range(0, len(x), batch_size)])


def accuracy_gate(hits_fp32: np.ndarray, hits_int8: np.ndarray, max_drop: float) -> Dict[str, Any]:
    """The INT8 accuracy gate at the resolution of its image set.

    The drop is fp32 minus INT8 top-1 in points with a paired 95% interval (normal approximation on the
    per-image differences, so only images the two graphs disagree on widen it). ``verdict``: ``pass`` when
    the whole interval is within ``max_drop``; ``fail`` when the whole interval is beyond it (clearly
    worse); ``undecided`` when it straddles the limit: the set is too small to decide, ``needed`` says about
    how many images would (at the observed disagreement rate).
    """
    d = hits_fp32.astype(np.float64) - hits_int8.astype(np.float64)
    n = int(len(d))
    drop = 100.0 * float(d.mean())
    half = 196.0 * float(d.std(ddof=1)) / n ** 0.5 if n > 1 else float('inf')
    lo, hi = drop - half, drop + half
    verdict = 'fail' if lo > max_drop else 'pass' if hi <= max_drop else 'undecided'
    disagree = int((d != 0).sum())
    rate = max(disagree, 1) / max(n, 1)
    margin = max(abs(drop - max_drop), 0.25 * max_drop, 0.1)
    needed = int(np.ceil((196.0 / margin) ** 2 * rate)) if verdict == 'undecided' else None
    return {'images': n, 'drop_points': round(drop, 4), 'interval_points': [round(lo, 4), round(hi, 4)],
            'disagreeing_images': disagree, 'point_per_image': round(100.0 / max(n, 1), 4),
            'verdict': verdict, 'needed_images': needed}


class _Reader:
    """onnxruntime ``CalibrationDataReader``: the calibration images in batches, then ``None``."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int = 32):
        self.input_name, self.x, self.batch_size = input_name, x, batch_size
        self._it: Iterator[Dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[Dict[str, np.ndarray]]:
        for i in range(0, len(self.x), self.batch_size):
            yield {self.input_name: self.x[i:i + self.batch_size]}

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def _reader(input_name: str, x: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader
    reader = type('SdzooCalibrationReader', (_Reader, CalibrationDataReader), {})
    return reader(input_name, x)


# --------------------------------------------------------------------------------------------- quantize
class _PerTensorWeights(logging.Filter):
    """Collects the weights onnxruntime quantizes per tensor although ``per_channel`` is on (rank-1 LayerNorm
    scales: its default channel axis 1 does not exist), instead of one root-logger WARNING line each."""
    PATTERN = re.compile(r"Axis -?\d+ is out-of-range for weight '(.+)' with rank 1$")

    def __init__(self) -> None:
        super().__init__()
        self.names: List[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        m = self.PATTERN.match(record.getMessage())
        if m:
            self.names.append(m.group(1))
        return m is None


def _quantize(pre: Path, out: Path, mode: str, method: str, calib: Optional[np.ndarray], input_name: str,
              per_channel: bool, activation_type: str, op_types: Optional[Sequence[str]],
              reduce_range: bool = False) -> List[str]:
    """Runs onnxruntime's quantizer; returns the weights it kept per tensor (see :class:`_PerTensorWeights`)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    if mode == 'dynamic':
        quantize_dynamic(str(pre), str(out), per_channel=per_channel, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                         op_types_to_quantize=list(op_types or ['MatMul']))
        return []
    act = {'int8': QuantType.QInt8, 'uint8': QuantType.QUInt8}[activation_type]
    # symmetric int8 activations are what TensorRT's explicit quantization accepts
    extra = {'ActivationSymmetric': activation_type == 'int8', 'WeightSymmetric': True}
    per_tensor = _PerTensorWeights()
    logging.getLogger().addFilter(per_tensor)
    try:
        quantize_static(str(pre), str(out), _reader(input_name, calib), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, reduce_range=reduce_range, activation_type=act, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(op_types) if op_types else None,
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]), extra_options=extra)
    finally:
        logging.getLogger().removeFilter(per_tensor)
    return per_tensor.names


def _check_args(method: str, mode: str, activation_type: str, calibration_images: int, eval_split: str,
                max_accuracy_drop: float, eval_images: Optional[int]) -> None:
    if method not in CALIBRATION_METHODS:
        raise ValueError(f'calibration method must be one of {sorted(CALIBRATION_METHODS)}, got {method!r}')
    if mode not in ('static', 'dynamic'):
        raise ValueError(f"mode must be 'static' or 'dynamic', got {mode!r}")
    if activation_type not in ('int8', 'uint8'):
        raise ValueError(f"activation_type must be 'int8' or 'uint8', got {activation_type!r}")
    if isinstance(calibration_images, bool) or not isinstance(calibration_images, int) or calibration_images < 1:
        raise ValueError(f'calibration_images must be a positive int, got {calibration_images!r}')
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f'eval split must be one of {EVAL_SPLITS} (never the calibration split), got {eval_split!r}')
    if not max_accuracy_drop >= 0:
        raise ValueError(f'max_accuracy_drop must be >= 0 (top-1 points), got {max_accuracy_drop!r}')
    if eval_images is not None and eval_images < 1:
        raise ValueError(f'eval_images must be >= 1, got {eval_images!r}')


def default_reduce_range() -> bool:
    """7-bit weights where this x86 CPU lacks VNNI: AVX2's 8-bit dot products saturate in 16 bits, which cost
    sd_resnet20 1.0-1.2 top-1 points on an AVX2-only AMD EPYC (Zen 3) and failed the accuracy gate."""
    from ..train.hardware import cpu_has_vnni
    return not cpu_has_vnni()


def _gate_split(trained: Optional[Mapping[str, Any]], data: str, eval_split: str,
                model: str) -> Tuple[str, Optional[str]]:
    """The split the gate measures and why: a model trained on all of train/ (--val-size 0) is gated on test/."""
    if not (trained and trained['val_size'] == 0 and not trained.get('val_folder') and eval_split == 'val'):
        return eval_split, None
    from ..data.sources import named_data_set
    if named_data_set(data) is None and not (Path(data).expanduser() / 'test').is_dir():
        raise QuantizationError(f"{model} was trained on every image of {data}'s train/ (--val-size 0) and {data} "
                                'has no test/: there are no held-out images to gate INT8 on (add a test/ folder, '
                                'or fine-tune with a holdout)')
    return 'test', 'trained on all of train/ (--val-size 0): gated on test/ instead of val'


def judge_drop(h_fp32: np.ndarray, h_int8: np.ndarray, eval_split: str, eval_desc: str, max_accuracy_drop: float,
               model: str, out: Path, names: Tuple[str, str] = ('fp32', 'INT8')) -> Dict[str, Any]:
    """The gate's record for a cheaper graph (``names[1]``: INT8, or fewer blocks) against its reference
    (``names[0]``); raises :class:`QuantizationError` (one message: numbers, interval, split) on a fail."""
    acc_fp32, acc_int8 = float(h_fp32.mean()), float(h_int8.mean())
    drop = (acc_fp32 - acc_int8) * 100
    gate = accuracy_gate(h_fp32, h_int8, max_accuracy_drop)
    accuracy = {'split': eval_split, 'images': int(len(h_fp32)), 'data': eval_desc,
                'top1_fp32': round(acc_fp32 * 100, 4), 'top1_int8': round(acc_int8 * 100, 4),
                'drop_points': round(drop, 4), 'max_drop_points': float(max_accuracy_drop), 'gate': gate}
    lo, hi = gate['interval_points']
    said = (f'{names[1]} top-1 {acc_int8 * 100:.2f}% vs {names[0]} {acc_fp32 * 100:.2f}% on {eval_desc} (the {eval_split} '
            f'split): drop {drop:.2f} points, paired 95% interval [{lo:.2f}, {hi:.2f}] over {gate["images"]} '
            f'images ({gate["disagreeing_images"]} disagree)')
    if gate['verdict'] == 'undecided':
        accuracy['note'] = (f'the {gate["images"]}-image gate set is too small to decide against the '
                            f'{max_accuracy_drop:g}-point limit (about {gate["needed_images"]:,} images would)')
    if gate['verdict'] == 'fail' or round(drop, 2) > max_accuracy_drop:  # at the resolution printed
        why = ('clearly: the whole interval lies beyond it' if gate['verdict'] == 'fail' else
               f"by its point estimate, though {accuracy['note']}; refused to be safe")
        raise QuantizationError(f'{model}: {said}; the drop exceeds the allowed {max_accuracy_drop:g} '
                                f'(--max-accuracy-drop) {why}; nothing written to {out}')
    return accuracy


def quantize_onnx(
        fp32_path: Union[str, os.PathLike],
        out: Union[str, os.PathLike],
        *,
        data: str,
        calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
        method: str = DEFAULT_METHOD,
        mode: str = 'static',
        per_channel: bool = True,
        activation_type: str = 'uint8',
        op_types: Optional[Sequence[str]] = None,
        eval_split: str = 'val',
        eval_images: Optional[int] = None,
        max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
        write_report: bool = True,
        threads: Optional[int] = None,
        reduce_range: Optional[bool] = None,
        trained_on: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Quantize a validated fp32 sdzoo export to INT8, gate it on accuracy, then write it; returns the report.

    ``data`` names the data set (see :func:`load_labelled_images`): ``calibration_images`` class-balanced
    images of its training split calibrate the activation ranges (``method``: minmax / entropy /
    percentile). Top-1 of both graphs is measured on ``eval_images`` (default all) images of
    ``eval_split``; when INT8 loses more than ``max_accuracy_drop`` points, :class:`QuantizationError`
    is raised and ``out`` is not touched. The ONNX metadata records precision, calibration and the
    accuracies; the report also goes to ``<out stem>.report.json`` unless ``write_report=False``.

    ``reduce_range``: 7-bit weights, by default where this CPU has no VNNI (see :func:`default_reduce_range`).
    ``trained_on``: the training run's ``data.json``; on that data set the gate uses the run's own held-out
    images, and a model trained on all of train/ (``--val-size 0``) is gated on test/, never on train/.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import quant_pre_process
    from ..runtime import OrtModel
    from ..files import atomic_write_json, land_file
    from .onnx import op_histogram, report_path_for, set_metadata

    _check_args(method, mode, activation_type, calibration_images, eval_split, max_accuracy_drop, eval_images)
    fp32_path, out = Path(fp32_path), Path(out)
    if out.suffix != '.onnx':
        raise ValueError(f'output file must end in .onnx, got {out}')
    session_kw = dict(intra_op_num_threads=threads, providers=['CPUExecutionProvider'])
    fp32 = OrtModel(fp32_path, **session_kw)
    meta = dict(fp32.metadata)
    if meta.get('sdzoo.precision', 'fp32') != 'fp32':
        raise ValueError(f'{fp32_path} is a {meta["sdzoo.precision"]} export: quantize the fp32 one')
    img_kw = dict(input_size=[fp32.in_chans, *fp32.spatial_size], num_classes=fp32.num_classes,
                  mean=json.loads(meta.get('sdzoo.mean', '[0.5]')), std=json.loads(meta.get('sdzoo.std', '[0.5]')),
                  channels_last=fp32.channels_last, geometry=fp32.geometry)
    img_kw['trained_split'] = trained = training_split(trained_on, data)
    eval_split, split_note = _gate_split(trained, data, eval_split, meta.get('sdzoo.model', fp32_path.name))
    t0 = time.perf_counter()
    x_cal, _, cal_desc = load_labelled_images(data, 'train', limit=calibration_images, **img_kw)
    x_eval, y_eval, eval_desc = load_labelled_images(data, eval_split, limit=eval_images, **img_kw)

    with tempfile.TemporaryDirectory(prefix='sdzoo-int8-') as tmp:
        pre, q = Path(tmp) / 'pre.onnx', Path(tmp) / 'int8.onnx'
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        reduce_range = default_reduce_range() if reduce_range is None else reduce_range
        per_tensor = _quantize(pre, q, mode, method, x_cal if mode == 'static' else None, fp32.input_name,
                               per_channel, activation_type, op_types, reduce_range=reduce_range)
        quant_seconds = time.perf_counter() - t0
        int8 = OrtModel(q, **session_kw)
        t1 = time.perf_counter()
        h_fp32, h_int8 = hits(fp32, x_eval, y_eval), hits(int8, x_eval, y_eval)
        eval_seconds = time.perf_counter() - t1
        accuracy = judge_drop(h_fp32, h_int8, eval_split, eval_desc, max_accuracy_drop,
                          meta.get('sdzoo.model', fp32_path.name), out)
        if trained:
            accuracy['held_out'] = ("the training run's own holdout (data.json)" if eval_split == 'val'
                                    else split_note or f'the {eval_split} split')
        quant = {'tool': f'onnxruntime.quantization {onnxruntime.__version__}', 'mode': mode,
                 'format': 'QDQ' if mode == 'static' else 'QOperator (dynamic)', 'per_channel': per_channel,
                 'weights': 'int8 symmetric' + (' (7-bit range: reduce_range)' if reduce_range else ''),
                 'reduce_range': bool(reduce_range), 'activations': (f'{activation_type} '
                 f'{"symmetric" if activation_type == "int8" else "asymmetric"}') if mode == 'static' else 'dynamic uint8',
                 'calibration_method': method if mode == 'static' else None,
                 'calibration_images': int(len(x_cal)) if mode == 'static' else 0,
                 'calibration_data': cal_desc if mode == 'static' else None,
                 'per_tensor_weights': per_tensor}
        proto = onnx.load(str(q))
        meta.update({'sdzoo.precision': 'int8', 'sdzoo.quantization': json.dumps(quant),
                     'sdzoo.calibration_method': str(quant['calibration_method'] or ''),
                     'sdzoo.calibration_images': str(quant['calibration_images']),
                     'sdzoo.accuracy': json.dumps(accuracy)})
        set_metadata(proto, meta)
        proto.doc_string = f'{proto.doc_string or ""} INT8 ({quant["format"]}) by sdzoo; accuracy gate passed.'.strip()
        staged = Path(tmp) / 'final.onnx'
        onnx.save_model(proto, str(staged))
        land_file(staged, out)
    report = {'model': meta.get('sdzoo.model'), 'tag': meta.get('sdzoo.tag', ''), 'file': str(out),
              'bytes': out.stat().st_size, 'fp32_bytes': fp32_path.stat().st_size, 'precision': 'int8',
              'quantization': quant, 'accuracy': accuracy, 'quantize_seconds': round(quant_seconds, 2),
              'eval_seconds': round(eval_seconds, 2), 'op_histogram': op_histogram(proto), 'metadata': meta}
    if write_report:
        report['report'] = str(report_path_for(out))
        atomic_write_json(report_path_for(out), report)
    return report


def measure_pair(fp32_path: Union[str, os.PathLike], int8_path: Union[str, os.PathLike], data: str,
                 split: str = 'test', limit: Optional[int] = None, threads: Optional[int] = None) -> Dict[str, Any]:
    """Top-1 of an fp32 export and its INT8 model side by side on one split (e.g. the full test set)."""
    from ..runtime import OrtModel
    kw = dict(intra_op_num_threads=threads, providers=['CPUExecutionProvider'])
    fp32, int8 = OrtModel(fp32_path, **kw), OrtModel(int8_path, **kw)
    x, y, desc = load_labelled_images(
        data, split, [fp32.in_chans, *fp32.spatial_size], fp32.num_classes, json.loads(fp32.metadata['sdzoo.mean']),
        json.loads(fp32.metadata['sdzoo.std']), limit=limit, channels_last=fp32.channels_last,
        geometry=fp32.geometry)
    a, b = top1(fp32, x, y) * 100, top1(int8, x, y) * 100
    return {'split': split, 'images': int(len(y)), 'data': desc, 'top1_fp32': round(a, 4), 'top1_int8': round(b, 4),
            'drop_points': round(a - b, 4)}


def _per_tensor_note(names: Optional[Sequence[str]]) -> str:
    return f' (rank-1 weights such as LayerNorm scales per tensor: {len(names)})' if names else ''


def format_int8_report(report: Dict[str, Any]) -> str:
    """One paragraph for the console: what was quantized, how, and what it cost."""
    q, a = report['quantization'], report['accuracy']
    calib = (f"{q['calibration_method']} calibration on {q['calibration_data']}" if q['mode'] == 'static'
             else 'dynamic (no calibration)')
    return (f"INT8 {report['file']} ({report['bytes'] / 1e6:.2f} MB, fp32 {report['fp32_bytes'] / 1e6:.2f} MB): "
            f"{q['format']}, per-channel {q['per_channel']}"
            f"{_per_tensor_note(q.get('per_tensor_weights'))}, {calib}\n"
            f"  top-1 on {a['data']}" + (f" ({a['split']} split)" if a.get('split') else '')
            + f": fp32 {a['top1_fp32']:.2f}%  int8 {a['top1_int8']:.2f}%  "
            f"drop {a['drop_points']:+.2f} points"
            + (f" (paired 95% interval [{a['gate']['interval_points'][0]:+.2f}, "
               f"{a['gate']['interval_points'][1]:+.2f}], {a['images']} images)" if 'gate' in a else '')
            + f" (allowed {a['max_drop_points']:g}) -> ok"
            + (f"\n  held-out images: {a['held_out']}" if a.get('held_out') else '')
            + (f"\n  note: {a['note']}" if a.get('note') else ''))
