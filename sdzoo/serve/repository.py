"""The model repository (Triton layout) as the server sees it: ``<root>/<name>/config.pbtxt``,
``<root>/<name>/labels.txt`` and ``<root>/<name>/<version>/model.onnx``.

Every entry is loaded on its own: a broken one is kept with its error (the server reports it not ready and
answers its requests with that error) while the others serve.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    'ModelEntry', 'RepositoryConfig', 'TensorConfig', 'load_repository', 'load_entry', 'parse_config_pbtxt',
    'parse_text_proto', 'triton_dtype', 'numpy_dtype', 'UNLOADED', 'model_directories',
]

_logger = logging.getLogger('sdzoo.serve')

UNLOADED = 'unloaded'  # the error of an entry unloaded through the repository API (Triton's reason string)

# Open Inference Protocol tensor datatypes <-> numpy; config.pbtxt spells them TYPE_<...> (FP32 -> TYPE_FP32)
_TRITON_TO_NUMPY = {
    'BOOL': np.bool_, 'UINT8': np.uint8, 'UINT16': np.uint16, 'UINT32': np.uint32, 'UINT64': np.uint64,
    'INT8': np.int8, 'INT16': np.int16, 'INT32': np.int32, 'INT64': np.int64,
    'FP16': np.float16, 'FP32': np.float32, 'FP64': np.float64,
}
_NUMPY_TO_TRITON = {np.dtype(v): k for k, v in _TRITON_TO_NUMPY.items()}


def triton_dtype(dtype: Any) -> str:
    """Protocol datatype string (``FP32``) of a numpy dtype."""
    try:
        return _NUMPY_TO_TRITON[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f'no Open Inference Protocol datatype for numpy dtype {np.dtype(dtype)}') from None


def numpy_dtype(datatype: str) -> np.dtype:
    """numpy dtype of a protocol datatype string; ValueError naming the supported ones otherwise."""
    try:
        return np.dtype(_TRITON_TO_NUMPY[datatype])
    except (KeyError, TypeError):
        raise ValueError(f'unknown datatype {datatype!r}; expected one of {sorted(_TRITON_TO_NUMPY)}') from None


# --- config.pbtxt -------------------------------------------------------------------------------------------
# The server only needs a handful of ModelConfig fields, and the serve extra should not need grpcio just to get
# Triton's generated model_config_pb2, so it reads the protobuf text format schema-free into nested dicts.
# tests/test_triton_config.py checks the same files against Triton's real ModelConfig proto.

_TOKEN_RE = re.compile(
    r'\s+|#[^\n]*'
    r'|(?P<str>"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\')'
    r'|(?P<punct>[{}\[\]:,;<>])'
    r'|(?P<word>[^\s{}\[\]:,;<>"\'#]+)'
)
_CLOSE = {'{': '}', '<': '>'}


def _tokenize(text: str) -> List[Tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise ValueError(f'cannot tokenize config text at offset {pos}: {text[pos:pos + 20]!r}')
        pos = m.end()
        kind = m.lastgroup
        if kind is not None:
            tokens.append((kind, m.group(kind)))
    return tokens


def _scalar(kind: str, tok: str) -> Any:
    if kind == 'str':
        return bytes(tok[1:-1], 'utf-8').decode('unicode_escape')
    if re.fullmatch(r'[+-]?\d+', tok):
        return int(tok)
    try:
        return float(tok)
    except ValueError:
        return tok  # enum name or true/false


def parse_text_proto(text: str) -> Dict[str, List[Any]]:
    """Protobuf text format -> ``{field: [values...]}`` (messages become nested dicts), without a schema."""
    tokens = _tokenize(text)

    def fields(i: int, end: Optional[str]) -> Tuple[Dict[str, List[Any]], int]:
        out: Dict[str, List[Any]] = {}
        while i < len(tokens):
            kind, tok = tokens[i]
            if kind == 'punct' and tok == end:
                return out, i + 1
            if kind == 'punct' and tok in ',;':
                i += 1
                continue
            if kind != 'word':
                raise ValueError(f'expected a field name, got {tok!r}')
            i += 1
            if i < len(tokens) and tokens[i] == ('punct', ':'):
                i += 1
            values, i = value(i)
            out.setdefault(tok, []).extend(values)
        if end is not None:
            raise ValueError(f'unexpected end of config text: missing {end!r}')
        return out, i

    def value(i: int) -> Tuple[List[Any], int]:
        if i >= len(tokens):
            raise ValueError('unexpected end of config text: missing a value')
        kind, tok = tokens[i]
        if kind == 'punct' and tok in _CLOSE:
            sub, i = fields(i + 1, _CLOSE[tok])
            return [sub], i
        if kind == 'punct' and tok == '[':
            items, i = [], i + 1
            while True:
                if i >= len(tokens):
                    raise ValueError("unexpected end of config text: missing ']'")
                if tokens[i] == ('punct', ']'):
                    return items, i + 1
                if tokens[i] == ('punct', ','):
                    i += 1
                    continue
                vals, i = value(i)
                items.extend(vals)
        if kind == 'punct':
            raise ValueError(f'expected a value, got {tok!r}')
        return [_scalar(kind, tok)], i + 1

    return fields(0, None)[0]


@dataclass
class TensorConfig:
    name: str
    data_type: str  # protocol spelling, e.g. FP32
    dims: List[int]
    label_filename: Optional[str] = None


@dataclass
class RepositoryConfig:
    """The config.pbtxt fields the server uses (None where the file does not set them)."""
    name: Optional[str] = None
    platform: Optional[str] = None
    backend: Optional[str] = None
    max_batch_size: Optional[int] = None
    dynamic_batching: bool = False
    max_queue_delay_us: Optional[int] = None
    inputs: List[TensorConfig] = field(default_factory=list)
    outputs: List[TensorConfig] = field(default_factory=list)


def _one(d: Dict[str, List[Any]], key: str, default: Any = None) -> Any:
    values = d.get(key)
    return values[-1] if values else default


def _tensors(d: Dict[str, List[Any]], key: str) -> List[TensorConfig]:
    out = []
    for t in d.get(key, []):
        if not isinstance(t, dict):
            raise ValueError(f'{key} entries must be messages')
        data_type = str(_one(t, 'data_type', 'TYPE_INVALID'))
        out.append(TensorConfig(
            name=str(_one(t, 'name', '')),
            data_type=data_type[5:] if data_type.startswith('TYPE_') else data_type,
            dims=[int(v) for v in t.get('dims', [])],
            label_filename=_one(t, 'label_filename'),
        ))
    return out


def parse_config_pbtxt(source: Union[str, Path]) -> RepositoryConfig:
    """Read a Triton config.pbtxt (path or text) into :class:`RepositoryConfig`."""
    text = Path(source).read_text() if isinstance(source, Path) else source
    d = parse_text_proto(text)
    batching = _one(d, 'dynamic_batching')
    mbs = _one(d, 'max_batch_size')
    return RepositoryConfig(
        name=_one(d, 'name'),
        platform=_one(d, 'platform'),
        backend=_one(d, 'backend'),
        max_batch_size=None if mbs is None else int(mbs),
        dynamic_batching=batching is not None,
        max_queue_delay_us=(int(_one(batching, 'max_queue_delay_microseconds', 0))
                            if isinstance(batching, dict) else None),
        inputs=_tensors(d, 'input'),
        outputs=_tensors(d, 'output'),
    )


# --- entries ------------------------------------------------------------------------------------------------

@dataclass
class ModelEntry:
    """One repository entry: the loaded model, or the error that kept it from loading."""
    name: str
    directory: Path
    version: Optional[str] = None
    config: Optional[RepositoryConfig] = None
    model: Any = None  # sdzoo.runtime.OrtModel
    labels: List[str] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def ready(self) -> bool:
        return self.model is not None and self.error is None

    @property
    def versions(self) -> List[str]:
        return [self.version] if self.version else []

    @property
    def input_datatype(self) -> str:
        return triton_dtype(self.model.input_dtype)

    @property
    def input_shape(self) -> List[int]:
        """Protocol shape of the input, batch dim included; -1 for dynamic dims."""
        return [d if isinstance(d, int) and d > 0 else -1 for d in self.model.input_shape]

    @property
    def output_shape(self) -> List[int]:
        return [self.input_shape[0], int(self.model.num_classes)]

    @property
    def item_elements(self) -> int:
        """Elements of one batch item (the input without its batch dim): what a request may send per item."""
        dims = self.input_shape[1:]
        if all(d > 0 for d in dims):
            return math.prod(dims)
        try:  # dynamic spatial dims: the size the model was exported for (check_input insists on it)
            h, w = self.model.spatial_size
            return int(self.model.in_chans) * h * w
        except ValueError:  # no recorded size either: check_input refuses every request
            return math.prod(d for d in dims if d > 0)

    @property
    def unloaded(self) -> bool:
        """Released through the repository API (not a load failure): not served, not counted for readiness."""
        return self.model is None and self.error == UNLOADED

    def without_model(self) -> 'ModelEntry':
        """This entry as :attr:`unloaded`: same name, directory and version, no session."""
        return ModelEntry(name=self.name, directory=self.directory, version=self.version, config=self.config,
                          labels=self.labels, error=UNLOADED)

    @property
    def batchable(self) -> bool:
        """Requests can be concatenated along dim 0 (dynamic batch dim, config max_batch_size not 0)."""
        return self.input_shape[0] == -1 and (self.config is None or self.config.max_batch_size != 0)


def _latest_version(directory: Path) -> Tuple[str, Path]:
    versions = sorted((int(p.name), p) for p in directory.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / 'model.onnx').is_file())
    if not versions:
        raise FileNotFoundError(f'no <version>/model.onnx under {directory}')
    v, path = versions[-1]
    return str(v), path / 'model.onnx'


def _check_config(entry: ModelEntry) -> None:
    """Raise ValueError where config.pbtxt disagrees with the ONNX file (Triton would refuse it too)."""
    cfg, model = entry.config, entry.model
    if cfg.name is not None and cfg.name != entry.name:
        raise ValueError(f'config.pbtxt name {cfg.name!r} does not match the directory name {entry.name!r}')
    if cfg.platform is not None and cfg.platform != 'onnxruntime_onnx':
        raise ValueError(f'config.pbtxt platform {cfg.platform!r} is not onnxruntime_onnx')
    if cfg.max_batch_size is not None and cfg.max_batch_size < 0:
        raise ValueError(f'config.pbtxt max_batch_size must be >= 0, got {cfg.max_batch_size}')
    onnx_dims = entry.input_shape[1:] if cfg.max_batch_size != 0 else entry.input_shape
    expected = [(model.input_name, entry.input_datatype, onnx_dims),
                (model.output_name, 'FP32', entry.output_shape[1:] if cfg.max_batch_size != 0
                 else entry.output_shape)]
    for kind, tensors, (name, dtype, dims) in (('input', cfg.inputs, expected[0]), ('output', cfg.outputs, expected[1])):
        if not tensors:
            continue
        names = [t.name for t in tensors]
        if names != [name]:
            raise ValueError(f'config.pbtxt {kind} {names} does not match the ONNX {kind} {name!r}')
        t = tensors[0]
        if t.data_type != dtype:
            raise ValueError(f'config.pbtxt {kind} {name!r} data_type TYPE_{t.data_type} but the ONNX file has '
                             f'TYPE_{dtype}')
        if len(t.dims) != len(dims) or any(a != b and -1 not in (a, b) for a, b in zip(t.dims, dims)):
            raise ValueError(f'config.pbtxt {kind} {name!r} dims {t.dims} do not match the ONNX shape {dims}')


def _read_labels(entry: ModelEntry) -> List[str]:
    label_file = next((t.label_filename for t in (entry.config.outputs if entry.config else [])
                       if t.label_filename), None)
    path = entry.directory / (label_file or 'labels.txt')
    if path.is_file():
        labels = [line.rstrip('\r') for line in path.read_text().split('\n')]
        while labels and not labels[-1]:
            labels.pop()
    elif label_file:
        raise FileNotFoundError(f'config.pbtxt label_filename {label_file!r} not found in {entry.directory}')
    else:
        labels = list(getattr(entry.model, 'labels', None) or [])
    if labels and len(labels) != entry.model.num_classes:
        raise ValueError(f'{path.name} has {len(labels)} labels but the model outputs '
                         f'{entry.model.num_classes} classes')
    return labels


def load_entry(directory: Union[str, Path], **ort_kwargs: Any) -> ModelEntry:
    """Load one repository entry; any failure is recorded in ``entry.error`` (and logged), never raised."""
    directory = Path(directory)
    entry = ModelEntry(name=directory.name, directory=directory)
    try:
        from sdzoo.runtime import OrtModel
        cfg_path = directory / 'config.pbtxt'
        if cfg_path.is_file():
            try:
                entry.config = parse_config_pbtxt(cfg_path)
            except ValueError as e:
                raise ValueError(f'cannot parse {cfg_path.name}: {e}') from None
        entry.version, onnx_path = _latest_version(directory)
        entry.model = OrtModel(onnx_path, **ort_kwargs)
        if entry.config is not None:
            _check_config(entry)
        entry.labels = _read_labels(entry)
    except Exception as e:  # noqa: BLE001 - a broken entry must not take the others down
        entry.error = f'{type(e).__name__}: {e}'
        entry.model = None
        _logger.error('failed to load model %r', entry.name,
                      extra={'event': 'model_load_failed', 'model': entry.name, 'error': entry.error})
    else:
        _logger.info('loaded model %r version %s', entry.name, entry.version,
                     extra={'event': 'model_loaded', 'model': entry.name, 'version': entry.version,
                            'provider': getattr(entry.model, 'provider', None)})
    return entry


def model_directories(root: Path) -> List[str]:
    """Names of the entries of repository ``root``: its non-hidden subdirectories, sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))


def load_repository(
        root: Union[str, Path],
        models: Optional[Sequence[str]] = None,
        **ort_kwargs: Any,
) -> Dict[str, ModelEntry]:
    """Load every ``<root>/<name>/`` entry (or only ``models``); broken entries carry their error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'model repository {str(root)!r} is not a directory')
    names = model_directories(root)
    if models:
        missing = sorted(set(models) - set(names))
        if missing:
            raise FileNotFoundError(f'models {missing} not found in repository {str(root)!r} (has {names})')
        names = [n for n in names if n in set(models)]
    if not names:
        raise ValueError(f'model repository {str(root)!r} has no model directories (<name>/<version>/model.onnx)')
    return {name: load_entry(root / name, **ort_kwargs) for name in names}
