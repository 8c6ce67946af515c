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
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .fold import fold, fold_batchnorm, is_folded
from ..train.checkpoint import atomic_write_json as _write_json
from ..layers import sd_modules

__all__ = [
    'DEFAULT_OPSET', 'INPUT_NAME', 'IMAGE_INPUT_NAME', 'OUTPUT_NAME', 'CIFAR10_CLASSES', 'ExportError',
    'create_model', 'load_checkpoint', 'resolve_labels', 'data_config', 'op_histogram', 'export_onnx',
]

from . import DEFAULT_OPSET  # noqa: E402  (defined with the package: `sdzoo export --help` shows it)
INPUT_NAME, IMAGE_INPUT_NAME, OUTPUT_NAME = 'input', 'image', 'logits'
FORBIDDEN_OPS = ('BatchNormalization', 'Dropout')
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


class ExportError(RuntimeError):
    """The export produced a graph that is wrong or does not match the PyTorch model."""


# --------------------------------------------------------------------------------------------- models
_BUILD_KEYS = ('drop_path_rate', 'sd_schedule', 'sd_mode', 'sd_scaling', 'num_classes', 'in_chans')


def load_checkpoint(path: Union[str, os.PathLike]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(state_dict, info)`` from a ``.safetensors`` file or a trainer checkpoint (``.pt``).

    ``.pt`` files are read with ``torch.load(weights_only=True)`` (no pickled code runs) and their
    ``'model'`` entry is the state dict. ``info`` holds what rebuilds the trained architecture:
    ``model_args`` (``drop_path_rate``, ``sd_scaling``, …: with the paper's scaling the survival
    probabilities scale the branches at test time), ``architecture`` and ``label_names``, from the
    trainer checkpoint's ``config`` or a timm ``config.json`` beside a safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    info: Dict[str, Any] = {'model_args': {}, 'architecture': None, 'label_names': None}
    if path.suffix == '.safetensors':
        from safetensors import safe_open
        from safetensors.torch import load_file
        try:
            state = load_file(str(path), device='cpu')
            with safe_open(str(path), framework='pt') as f:
                file_meta = f.metadata() or {}
        except Exception as e:
            raise ValueError(f'{path} is not a readable safetensors file ({type(e).__name__}: {e})') from e
        # the trainer records architecture / num_classes / classes in the file's metadata
        info['architecture'] = file_meta.get('architecture')
        if file_meta.get('num_classes', '').isdigit():
            info['model_args']['num_classes'] = int(file_meta['num_classes'])
        try:
            info['label_names'] = json.loads(file_meta['classes']) if file_meta.get('classes') else None
        except ValueError:
            pass
        config_file = path.with_name('config.json')
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding='utf-8'))
            except ValueError as e:
                raise ValueError(f'{config_file} (next to {path.name}) is not valid JSON: {e}') from e
            # timm's Hub layout keeps them under model_args; a trainer run folder's config.json at the top
            args = config.get('model_args') if isinstance(config.get('model_args'), dict) else config
            info['model_args'].update({k: v for k, v in args.items() if k in _BUILD_KEYS and v is not None})
            arch = config.get('architecture') or config.get('model')
            info['architecture'] = arch if isinstance(arch, str) else info['architecture']
            info['label_names'] = config.get('label_names') or info['label_names']
        return state, info
    try:
        ckpt = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise ValueError(f'cannot load {path} with torch.load(weights_only=True) ({type(e).__name__}: {first}); '
                         "expected a .safetensors state dict or a trainer checkpoint whose 'model' entry is a "
                         'state dict') from e
    if isinstance(ckpt, dict) and isinstance(ckpt.get('model'), dict):
        config = ckpt.get('config') if isinstance(ckpt.get('config'), dict) else {}
        info['model_args'] = {k: config[k] for k in _BUILD_KEYS if config.get(k) is not None}
        info['architecture'] = config.get('model')
        ckpt = ckpt['model']
    if not isinstance(ckpt, dict) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path} holds no state dict (expected tensors, or a dict with a 'model' state dict)")
    from timm.models import clean_state_dict
    return clean_state_dict(ckpt), info  # drops DDP's 'module.' prefixes


def create_model(
        name: str,
        pretrained: bool = False,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        num_classes: Optional[int] = None,
        in_chans: Optional[int] = None,
        **kwargs,
) -> nn.Module:
    """A registered model in eval mode, with shipped weights or a checkpoint loaded (``strict=True``).

    A checkpoint's recorded model arguments (see :func:`load_checkpoint`) are defaults; explicit
    ``num_classes`` / ``in_chans`` / ``kwargs`` (e.g. ``drop_path_rate``) win.
    """
    import timm
    import sdzoo  # noqa: F401  (registers the sd_* models)
    from ..hub.model_folder import local_dir_name
    if Path(name).is_dir():  # a model folder (timm Hub layout) or a finished run's directory
        ref = local_dir_name(name)
        if ref is None:
            raise ValueError(f'{name} is a folder but holds no model: expected config.json + model.safetensors, '
                             'or a finished run directory with model/ in it')
        if checkpoint:
            raise ValueError(f'{name} is a model folder: it brings its own weights, drop --checkpoint')
        name, pretrained = ref, True
    if pretrained and checkpoint:
        raise ValueError('give either pretrained weights or a checkpoint, not both')
    if name.startswith('local-dir:'):
        config = json.loads((Path(name.split(':', 1)[1]) / 'config.json').read_text(encoding='utf-8'))
        arch = config['architecture']
    elif name.startswith('hf-hub:'):
        arch = None
    else:
        arch = name.split('.', 1)[0]
    if arch is not None and not timm.is_model(arch):
        raise ValueError(f'unknown model {name!r}; `sdzoo list` shows the registered sd_* models')
    if num_classes is not None:
        kwargs['num_classes'] = int(num_classes)
    if in_chans is not None:
        kwargs['in_chans'] = int(in_chans)
    state, info = load_checkpoint(checkpoint) if checkpoint else (None, {})  # a bad file fails before building
    if info.get('architecture') and arch and info['architecture'].split('.', 1)[0] != arch:
        raise ValueError(f'checkpoint {checkpoint} was trained as {info["architecture"]}, not {arch}')
    for k, v in (info.get('model_args') or {}).items():
        kwargs.setdefault(k, v)
    if not arch.startswith('sd_'):  # timm's own model (e.g. a converted run): its eval network is plain timm's
        for k in ('sd_schedule', 'sd_mode', 'sd_scaling'):
            kwargs.pop(k, None)
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            lines = str(e).splitlines()
            raise ValueError(f'checkpoint {checkpoint} does not fit {name} '
                             f'(num_classes={getattr(model, "num_classes", "?")}; pass --num-classes / '
                             f'--in-chans if it was trained with others): {lines[0]} '
                             + ' '.join(lines[1:])[:400]) from e
    label_names = info.get('label_names')
    if pretrained and not label_names:
        from ..hub.weights import weights_dirs
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        folder = next((d / f"{cfg.get('architecture', arch)}.{cfg['tag']}" for d in weights_dirs() if cfg.get('tag')
                       and (d / f"{cfg.get('architecture', arch)}.{cfg['tag']}" / 'model.safetensors').is_file()), None)
        if folder is not None and (folder / 'config.json').is_file():
            label_names = json.loads((folder / 'config.json').read_text(encoding='utf-8')).get('label_names')
    if label_names:
        model.pretrained_cfg = dict(getattr(model, 'pretrained_cfg', None) or {}, label_names=list(label_names))
    return model.eval()


def data_config(model: nn.Module) -> Dict[str, Any]:
    """Mean, std, input size and crop of a model, from its pretrained cfg (timm's resolution)."""
    from timm.data import resolve_data_config
    cfg = resolve_data_config({}, model=model)
    c = cfg['input_size'][0]
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != c:
        c = first.in_channels
    mean, std = list(cfg['mean']), list(cfg['std'])
    if len(mean) != c:  # e.g. in_chans=1: timm's convention is the mean of the RGB statistics
        mean, std = [sum(mean) / len(mean)] * c, [sum(std) / len(std)] * c
    return dict(input_size=[c, *cfg['input_size'][1:]], mean=mean, std=std,
                crop_pct=cfg.get('crop_pct', 0.875), crop_mode=cfg.get('crop_mode', 'center'),
                interpolation=cfg.get('interpolation', 'bilinear'))


def image_folder_classes(data_dir: Union[str, os.PathLike]) -> List[str]:
    """Sorted class sub-folders of an image folder (torchvision ``ImageFolder`` order)."""
    d = Path(data_dir)
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def resolve_labels(
        model: nn.Module,
        labels: Optional[Sequence[str]] = None,
        data_dir: Optional[Union[str, os.PathLike]] = None,
) -> List[str]:
    """Class names for a model's outputs: given, from the cfg, the data folder, or the known data sets.

    Known: 1000 classes -> ImageNet-1k descriptions (timm ships them), a 10-class 32x32 model ->
    CIFAR-10. Otherwise empty (servers then answer with class indices).
    """
    n = int(getattr(model, 'num_classes', 0) or 0)
    if labels is not None:
        labels = [str(x) for x in labels]
        if len(labels) != n:
            raise ValueError(f'{len(labels)} labels given for a model with {n} classes')
        return labels
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('label_names') and len(cfg['label_names']) == n:
        return list(cfg['label_names'])
    if data_dir is not None:
        classes = image_folder_classes(data_dir)
        if len(classes) == n:
            return classes
    if n == 1000:
        from timm.data import ImageNetInfo
        return list(ImageNetInfo().label_descriptions())
    if n == 10 and tuple(cfg.get('input_size', ()))[1:] == (32, 32):
        return list(CIFAR10_CLASSES)
    return []


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


def _set_metadata(model_proto, meta: Dict[str, str]) -> None:
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
    dcfg = data_config(reference)
    labels = resolve_labels(reference, labels, data_dir)
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
    _set_metadata(proto, meta)
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
        model = create_model(model, pretrained=pretrained, checkpoint=checkpoint,
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
    return {
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
    try:
        onnx.save_model(proto, str(tmp))
        try:
            parity = validate_onnx(
                tmp, reference, preprocess=preprocess, fp16=fp16, mean=dcfg['mean'], std=dcfg['std'],
                data_dir=data_dir, val_images=val_images, random_batches=random_batches, tolerance=tolerance,
                seed=seed, labels=labels)
        except ParityError as e:
            raise ExportError(f'{model_name}: ONNX output does not match PyTorch, nothing written to {out}: {e}') from e
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return parity


def report_path_for(onnx_path: Union[str, os.PathLike]) -> Path:
    """``model.onnx`` -> ``model.report.json`` (same folder)."""
    p = Path(onnx_path)
    return p.with_name(p.stem + '.report.json')
