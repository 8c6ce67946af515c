"""ONNX export of sdzoo models: folded, BatchNorm fused, metadata inside, validated before it lands.

The exported graph is the one of the plain (no stochastic depth) architecture: survival factors are
folded into the weights (:func:`sdzoo.fold`) and BatchNorms into the convolutions
(:func:`sdzoo.export.fold_batchnorm`), so there is no survival Mul, no Dropout and no
BatchNormalization. Input ``input`` float32 NCHW (or ``image`` uint8 NHWC with the preprocessing in
the graph), output ``logits`` float32, batch dimension dynamic (``batch``); metadata keys are those
of ``notes/runtime_contract.md``.

Exporter: ``torch.onnx.export(dynamo=True)`` (the default since PyTorch 2.9, needs ``onnxscript``);
``dynamo=False`` selects the legacy TorchScript exporter, faster to run but deprecated.
"""
from __future__ import annotations

import collections
import copy
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .fold import fold, fold_batchnorm, is_folded
from ..compat import moved_names
from ..files import atomic_write, atomic_write_json as _write_json
from ..layers import sd_modules
from ..models import load as model_load

__all__ = [
    'DEFAULT_OPSET', 'INPUT_NAME', 'IMAGE_INPUT_NAME', 'OUTPUT_NAME', 'ExportError', 'op_histogram', 'export_onnx',
    'set_metadata', 'report_path_for',
]

from . import DEFAULT_OPSET  # noqa: E402  (defined with the package: `sdzoo export --help` shows it)
INPUT_NAME, IMAGE_INPUT_NAME, OUTPUT_NAME = 'input', 'image', 'logits'
FORBIDDEN_OPS = ('BatchNormalization', 'Dropout')


__getattr__ = moved_names(__name__, {n: 'sdzoo.models.load' for n in (
    'CIFAR10_CLASSES', 'create_model', 'load_checkpoint', 'data_config', 'image_folder_classes', 'resolve_labels')})


class ExportError(RuntimeError):
    """The export produced a graph that is wrong or does not match the PyTorch model."""


# --------------------------------------------------------------------------------------------- graph
class _Deploy(nn.Module):
    """What gets exported: optional uint8 NHWC preprocessing and fp16 casts around the network."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 preprocess: bool = False, fp16: bool = False):
        super().__init__()
        self.model = model.half() if fp16 else model
        self.preprocess, self.fp16 = preprocess, fp16
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add
        self.register_buffer('scale', 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer('shift', -mean_t / std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocess:
            x = x.permute(0, 3, 1, 2).to(torch.float32) * self.scale + self.shift
        if self.fp16:
            x = x.to(torch.float16)
        out = self.model(x)
        return out.to(torch.float32) if self.fp16 else out


def op_histogram(model_proto) -> Dict[str, int]:
    """``{op_type: count}`` over the main graph's nodes, most frequent first."""
    counts = collections.Counter(n.op_type for n in model_proto.graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def deploy_model(model: nn.Module, fold_survival: bool = True) -> nn.Module:
    """An eval copy of ``model`` with survival factors folded and BatchNorms fused into convolutions."""
    model = copy.deepcopy(model).eval()
    if fold_survival and sd_modules(model) and not is_folded(model):
        model = fold(model, inplace=True)
    return fold_batchnorm(model)


def _export_graph(module: nn.Module, example: torch.Tensor, input_name: str, opset: int, dynamo: bool):
    """torch.onnx.export with a dynamic batch dimension named ``batch``; returns the ModelProto."""
    import onnx
    if dynamo:
        try:
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise RuntimeError('the torch.export-based ONNX exporter needs onnxscript (pip install onnxscript); '
                               'or use the legacy exporter (dynamo=False / --exporter torchscript)') from e
        batch = torch.export.Dim('batch', min=1, max=65536)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            program = torch.onnx.export(
                module, (example,), dynamo=True, input_names=[input_name], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), opset_version=opset, optimize=True, verbose=False)
        return program.model_proto
    import io
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(
            module, (example,), buf, dynamo=False, input_names=[input_name], output_names=[OUTPUT_NAME],
            dynamic_axes={input_name: {0: 'batch'}, OUTPUT_NAME: {0: 'batch'}}, opset_version=opset,
            do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def set_metadata(model_proto, meta: Dict[str, str]) -> None:
    del model_proto.metadata_props[:]
    for key, value in meta.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def export_onnx(
        model: Union[nn.Module, str],
        out: Union[str, os.PathLike],
        *,
        pretrained: bool = False,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        num_classes: Optional[int] = None,
        in_chans: Optional[int] = None,
        model_name: Optional[str] = None,
        tag: Optional[str] = None,
        labels: Optional[Sequence[str]] = None,
        fp16: bool = False,
        preprocess: bool = False,
        opset: int = DEFAULT_OPSET,
        dynamo: bool = True,
        fold_survival: bool = True,
        data_dir: Optional[Union[str, os.PathLike]] = None,
        val_images: int = 64,
        random_batches: Sequence[int] = (1, 5),
        tolerance: Optional[float] = None,
        seed: int = 0,
        write_report: bool = True,
        verbose: bool = False,
) -> Dict[str, Any]:
    """Export, validate with onnxruntime, and only then move the file to ``out``; returns the report.

    ``model`` is a model instance or a registered name (then ``pretrained``/``checkpoint``/
    ``num_classes``/``in_chans`` build it). The ONNX session is checked against the PyTorch eval model
    (unfolded, fp32) on random batches and, with ``data_dir``, on up to ``val_images`` real images;
    beyond the tolerance (:data:`sdzoo.export.validate.TOLERANCES`) an :class:`ExportError` is raised and
    nothing is written. ``fold_survival=False`` keeps the survival multiplies in the graph (only to
    measure what folding saves). The report (also ``<out stem>.report.json`` unless ``write_report=False``) has
    timings, file size, node counts, op histogram and parity.
    """
    import onnx
    import sdzoo

    out = Path(out)
    if out.suffix != '.onnx':
        raise ValueError(f'output file must end in .onnx, got {out}')
    if isinstance(opset, bool) or not isinstance(opset, int) or not 17 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f'opset must be an int in [17, {onnx.defs.onnx_opset_version()}], got {opset!r}')
    model, model_name, tag = _resolve_model(model, pretrained=pretrained, checkpoint=checkpoint,
                                            num_classes=num_classes, in_chans=in_chans, model_name=model_name, tag=tag)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f'data folder {data_dir} does not exist')

    t0 = time.perf_counter()
    reference = copy.deepcopy(model).eval().float()
    dcfg = model_load.data_config(reference)
    labels = model_load.resolve_labels(reference, labels, data_dir)
    module = _Deploy(deploy_model(reference, fold_survival), dcfg['mean'], dcfg['std'], preprocess=preprocess, fp16=fp16).eval()
    c, h, w = dcfg['input_size']
    if preprocess:
        example, input_name = torch.randint(0, 256, (2, h, w, c), dtype=torch.uint8), IMAGE_INPUT_NAME
    else:
        example, input_name = torch.randn(2, c, h, w), INPUT_NAME
    proto = _export_graph(module, example, input_name, opset, dynamo)
    hist = op_histogram(proto)
    _check_graph(proto, hist, input_name)
    meta = _metadata(reference, dcfg, model_name, tag, labels, preprocess=preprocess, fp16=fp16,
                     fold_survival=fold_survival)
    set_metadata(proto, meta)
    proto.doc_string = (f'{model_name}{"." + tag if tag else ""} exported by sdzoo {sdzoo.__version__}: '
                        'stochastic-depth survival factors folded into the weights')
    onnx.checker.check_model(proto)
    export_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    parity = _save_validated(proto, out, reference, model_name, preprocess=preprocess, fp16=fp16, dcfg=dcfg,
                             data_dir=data_dir, val_images=val_images, random_batches=random_batches,
                             tolerance=tolerance, seed=seed, labels=labels)
    validate_seconds = time.perf_counter() - t1

    report = {
        'model': model_name,
        'tag': tag,
        'file': str(out),
        'bytes': out.stat().st_size,
        'opset': opset,
        'exporter': 'dynamo' if dynamo else 'torchscript',
        'precision': meta['sdzoo.precision'],
        'preprocess': preprocess,
        **_io_spec(input_name, preprocess, dcfg['input_size'], int(getattr(reference, 'num_classes', 0) or 0)),
        'export_seconds': round(export_seconds, 3),
        'validate_seconds': round(validate_seconds, 3),
        'nodes': sum(hist.values()),
        'initializers': len(proto.graph.initializer),
        'op_histogram': hist,
        'sd_units_folded': len(sd_modules(model)) if fold_survival else 0,
        'parity': parity,
        'metadata': meta,
        'versions': _versions(),
    }
    if write_report:
        report_path = report_path_for(out)
        report['report'] = str(report_path)
        _write_json(report_path, report)
    return report


def _io_spec(input_name: str, preprocess: bool, input_size: Sequence[int], num_classes: int) -> Dict[str, Any]:
    """The graph's input and output as the report (and a serving config) describe them."""
    c, h, w = (int(v) for v in input_size)
    return {'input': {'name': input_name, 'shape': ['batch', h, w, c] if preprocess else ['batch', c, h, w],
                      'dtype': 'uint8' if preprocess else 'float32'},
            'output': {'name': OUTPUT_NAME, 'shape': ['batch', num_classes], 'dtype': 'float32'}}


def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import sdzoo
    return {'sdzoo': sdzoo.__version__, 'torch': torch.__version__, 'onnx': onnx.__version__,
            'onnxruntime': onnxruntime.__version__}


def _resolve_model(model: Union[nn.Module, str], *, pretrained: bool, checkpoint, num_classes, in_chans,
                   model_name: Optional[str], tag: Optional[str]) -> Tuple[nn.Module, str, str]:
    """A name builds the model (and names the tag of its pretrained weights); an instance is taken as is."""
    if isinstance(model, str):
        model_name = model_name or model
        model = model_load.create_model(model, pretrained=pretrained, checkpoint=checkpoint,
                             num_classes=num_classes, in_chans=in_chans)
        if tag is None:
            tag = ((model.pretrained_cfg or {}).get('tag') or '') if pretrained else ''
    elif pretrained or checkpoint:
        raise ValueError('pretrained/checkpoint only apply when the model is given by name')
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return model, model_name or cfg.get('architecture') or type(model).__name__, tag or ''


def _check_graph(proto, hist: Dict[str, int], input_name: str) -> None:
    """The deploy graph has no training-only ops left and exactly the serving contract's input and output."""
    bad = {op: hist[op] for op in FORBIDDEN_OPS if op in hist}
    if bad:
        raise ExportError(f'exported graph still has {bad}: BatchNorm/Dropout were not folded away')
    names = ([i.name for i in proto.graph.input], [o.name for o in proto.graph.output])
    if names != ([input_name], [OUTPUT_NAME]):
        raise ExportError(f'exported graph has inputs/outputs {names}, expected [{input_name}] -> [{OUTPUT_NAME}]')


def _metadata(reference: nn.Module, dcfg: Dict[str, Any], model_name: str, tag: str, labels: Sequence[str], *,
              preprocess: bool, fp16: bool, fold_survival: bool) -> Dict[str, str]:
    """What a runtime needs to preprocess and label without sdzoo or timm: stored in the ONNX metadata."""
    import sdzoo
    depth = (getattr(reference, 'pretrained_cfg', None) or {}).get('depth')
    extra = {'sdzoo.depth': json.dumps(depth)} if depth else {}  # sdzoo.prune_depth: kept / removed blocks
    return {
        **extra,
        'sdzoo.model': model_name,
        'sdzoo.tag': tag,
        'sdzoo.mean': json.dumps([float(v) for v in dcfg['mean']]),
        'sdzoo.std': json.dumps([float(v) for v in dcfg['std']]),
        'sdzoo.input_size': json.dumps([int(v) for v in dcfg['input_size']]),
        'sdzoo.labels': json.dumps(labels),
        'sdzoo.preprocess': '1' if preprocess else '0',
        'sdzoo.precision': 'fp16' if fp16 else 'fp32',
        'sdzoo.crop_pct': repr(float(dcfg['crop_pct'])),
        'sdzoo.crop_mode': str(dcfg['crop_mode']),
        'sdzoo.interpolation': str(dcfg['interpolation']),
        'sdzoo.num_classes': str(int(getattr(reference, 'num_classes', 0) or 0)),
        'sdzoo.folded': '1' if fold_survival else '0',
        'sdzoo.version': sdzoo.__version__,
    }


def _save_validated(proto, out: Path, reference: nn.Module, model_name: str, *, preprocess: bool, fp16: bool,
                    dcfg: Dict[str, Any], data_dir, val_images: int, random_batches: Sequence[int],
                    tolerance: Optional[float], seed: int, labels: Sequence[str]) -> Dict[str, Any]:
    """Write to a temporary file beside ``out``, check it with onnxruntime, and only then move it into place."""
    import onnx
    from .validate import ParityError, validate_onnx
    parity: Dict[str, Any] = {}

    def write_checked(tmp: str) -> None:  # nothing lands unless onnxruntime agrees with PyTorch
        onnx.save_model(proto, tmp)
        try:
            parity.update(validate_onnx(
                tmp, reference, preprocess=preprocess, fp16=fp16, mean=dcfg['mean'], std=dcfg['std'],
                data_dir=data_dir, val_images=val_images, random_batches=random_batches, tolerance=tolerance,
                seed=seed, labels=labels))
        except ParityError as e:
            raise ExportError(f'{model_name}: ONNX output does not match PyTorch, nothing written to {out}: {e}') from e
    atomic_write(out, write_checked)
    return parity


def report_path_for(onnx_path: Union[str, os.PathLike]) -> Path:
    """``model.onnx`` -> ``model.report.json`` (same folder)."""
    p = Path(onnx_path)
    return p.with_name(p.stem + '.report.json')
