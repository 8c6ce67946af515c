"""Run sdzoo ONNX files with onnxruntime: provider choice, input checks, preprocessing, top-k.

Needs only numpy, Pillow and onnxruntime (no torch), so a server can use it as is. Everything it
knows about a model (labels, mean/std, input size, crop) comes from the ONNX metadata written by
``sdzoo export`` (keys ``sdzoo.*``, see ``notes/runtime_contract.md``).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .data.images import ImageGeometry, resize_center_crop, upright
from .files import atomic_write

if TYPE_CHECKING:
    import PIL.Image

__all__ = [
    'PROVIDER_ORDER', 'GPU_PROVIDERS', 'ProviderUnavailableError', 'select_providers', 'OrtModel',
    'softmax', 'resize_center_crop', 'preload_gpu_libraries', 'gpu_provider_problems',
]

_logger = logging.getLogger(__name__)

PROVIDER_ORDER = ('TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider')
GPU_PROVIDERS = ('TensorrtExecutionProvider', 'CUDAExecutionProvider')
_OPT_LEVELS = {
    'disable': 'ORT_DISABLE_ALL', 'basic': 'ORT_ENABLE_BASIC', 'extended': 'ORT_ENABLE_EXTENDED',
    'all': 'ORT_ENABLE_ALL',
}
_ORT_DTYPES = {
    'tensor(float)': np.float32, 'tensor(float16)': np.float16, 'tensor(double)': np.float64,
    'tensor(uint8)': np.uint8, 'tensor(int8)': np.int8, 'tensor(int32)': np.int32, 'tensor(int64)': np.int64,
}


class ProviderUnavailableError(RuntimeError):
    """A GPU execution provider was required but onnxruntime cannot use one here."""


_PROVIDER_LIBS = {'TensorrtExecutionProvider': 'tensorrt', 'CUDAExecutionProvider': 'cuda'}
_preloaded: Optional[str] = None


def _ort_package() -> str:
    """``onnxruntime-gpu 1.x`` / ``onnxruntime 1.x``: which wheel is installed (both ship ``import onnxruntime``)."""
    from importlib import metadata
    for dist in ('onnxruntime-gpu', 'onnxruntime'):
        try:
            return f'{dist} {metadata.version(dist)}'
        except metadata.PackageNotFoundError:
            continue
    import onnxruntime as ort
    return f'onnxruntime {ort.__version__}'


def preload_gpu_libraries() -> str:
    """Load the CUDA/cuDNN libraries of pip's nvidia wheels the way onnxruntime supports (``preload_dlls``).

    Only with a GPU build of onnxruntime (the CPU wheel has nothing to load them for). Returns what
    happened, for logs; never raises (a failure shows up as the provider's problem).
    """
    global _preloaded
    if _preloaded is None:
        import onnxruntime as ort
        if not any(p in ort.get_available_providers() for p in GPU_PROVIDERS):
            _preloaded = 'skipped: no GPU provider in this onnxruntime build'
        elif not hasattr(ort, 'preload_dlls'):
            _preloaded = f'skipped: onnxruntime {ort.__version__} has no preload_dlls (>= 1.21)'
        else:
            try:
                ort.preload_dlls()
                _preloaded = 'onnxruntime.preload_dlls() done'
            except Exception as e:  # noqa: BLE001 - reported, the provider check says what is missing
                _preloaded = f'onnxruntime.preload_dlls() failed: {type(e).__name__}: {e}'
    return _preloaded


def library_problem(path: Union[str, os.PathLike]) -> Optional[str]:
    """Why the shared library at ``path`` cannot be loaded (the dynamic loader's own words), or None."""
    import ctypes
    if not Path(path).is_file():
        return f'{path} does not exist'
    try:
        ctypes.CDLL(str(path))
    except OSError as e:
        return str(e)
    return None


def gpu_provider_problems(available: Optional[List[str]] = None) -> Dict[str, str]:
    """``{provider: reason}`` for each GPU execution provider onnxruntime cannot actually use here.

    onnxruntime-gpu lists CUDA and TensorRT as available even where their libraries are missing and
    then silently runs on the CPU; this loads each provider library (after :func:`preload_gpu_libraries`)
    and reports the loader's error, e.g. ``libcublasLt.so.13: cannot open shared object file``.
    """
    import onnxruntime as ort
    available = ort.get_available_providers() if available is None else available
    problems: Dict[str, str] = {}
    capi = Path(ort.__file__).parent / 'capi'
    for provider, lib in _PROVIDER_LIBS.items():
        if provider not in available:
            problems[provider] = (f'not in this onnxruntime build ({_ort_package()}, providers {list(available)}); '
                                  'install onnxruntime-gpu instead (pip install "sdzoo[gpu]", never both)')
            continue
        preload_gpu_libraries()
        name = f'onnxruntime_providers_{lib}.dll' if os.name == 'nt' else f'libonnxruntime_providers_{lib}.so'
        reason = library_problem(capi / name)
        if reason:
            problems[provider] = f'{name} does not load: {reason} ({preload_gpu_libraries()})'
    return problems


def select_providers(
        require_gpu: bool = False,
        allow_fallback: bool = True,
        available: Optional[List[str]] = None,
) -> List[str]:
    """Execution providers to ask onnxruntime for, best first: TensorRT -> CUDA -> CPU.

    ``available`` defaults to ``onnxruntime.get_available_providers()``. With ``require_gpu`` and no
    GPU provider installed this raises :class:`ProviderUnavailableError`, unless ``allow_fallback``,
    in which case it logs a warning and returns the CPU provider.
    """
    if available is None:
        import onnxruntime as ort
        available = ort.get_available_providers()
    chosen = [p for p in PROVIDER_ORDER if p in available]
    has_gpu = any(p in GPU_PROVIDERS for p in chosen)
    if require_gpu and not has_gpu:
        msg = (f'a GPU execution provider ({" or ".join(GPU_PROVIDERS)}) is required but onnxruntime here '
               f'only has {list(available)} ({_ort_package()}); install onnxruntime-gpu (pip install "sdzoo[gpu]") '
               'on a machine with CUDA')
        if not allow_fallback:
            raise ProviderUnavailableError(msg)
        _logger.warning('%s; falling back to the CPU', msg)
    if not chosen:
        raise ProviderUnavailableError(f'none of {list(PROVIDER_ORDER)} is available (onnxruntime has {list(available)})')
    return chosen


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class OrtModel:
    """An sdzoo ONNX classifier in an onnxruntime session.

    ``provider`` is the execution provider the session actually got (onnxruntime silently drops a
    GPU provider whose libraries fail to load; that counts as unavailable for ``require_gpu``).
    ``optimized_model_path`` caches the graph onnxruntime optimized: written on first load (atomic),
    reused while newer than the source model. An "all"-level optimized graph is specific to the
    provider and machine that produced it. ``session_config`` adds onnxruntime session config
    entries (``SessionOptions.add_session_config_entry``).
    """

    def __init__(
            self,
            path: Union[str, os.PathLike],
            *,
            providers: Optional[Sequence[str]] = None,
            require_gpu: bool = False,
            allow_fallback: bool = True,
            intra_op_num_threads: Optional[int] = None,
            inter_op_num_threads: Optional[int] = None,
            graph_optimization_level: str = 'all',
            optimized_model_path: Optional[Union[str, os.PathLike]] = None,
            session_config: Optional[Dict[str, str]] = None,
    ):
        import onnxruntime as ort
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f'ONNX model {self.path} does not exist')
        if graph_optimization_level not in _OPT_LEVELS:
            raise ValueError(f'graph_optimization_level must be one of {sorted(_OPT_LEVELS)}, '
                             f'got {graph_optimization_level!r}')
        if providers is None:
            providers = select_providers(require_gpu, allow_fallback)
        else:
            providers = list(providers)
            missing = [p for p in providers if p not in ort.get_available_providers()]
            if missing:
                raise ProviderUnavailableError(f'execution provider(s) {missing} not available; onnxruntime '
                                               f'has {ort.get_available_providers()}')
        if any(p in GPU_PROVIDERS for p in providers):
            preload_gpu_libraries()  # the CUDA libraries of pip's nvidia wheels, before the session needs them
        so = ort.SessionOptions()
        if intra_op_num_threads is not None:
            so.intra_op_num_threads = int(intra_op_num_threads)
        if inter_op_num_threads is not None:
            so.inter_op_num_threads = int(inter_op_num_threads)
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[graph_optimization_level])
        for key, value in (session_config or {}).items():  # e.g. {'session.intra_op.allow_spinning': '0'}
            so.add_session_config_entry(str(key), str(value))

        source, write_cache = str(self.path), False
        self.optimized_model_path = Path(optimized_model_path) if optimized_model_path else None
        if self.optimized_model_path is not None:
            cache = self.optimized_model_path
            if cache.is_file() and cache.stat().st_mtime >= self.path.stat().st_mtime:
                source = str(cache)
            else:
                write_cache = True

        def open_session(cache_tmp: Optional[str] = None) -> None:
            if cache_tmp is not None:
                so.optimized_model_filepath = cache_tmp  # onnxruntime writes the optimized graph there
            try:
                self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
            except Exception as e:  # onnxruntime's own exception types: InvalidProtobuf, Fail, …
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(f'{source} is not a model onnxruntime can load: {first}') from e
        if write_cache:
            atomic_write(self.optimized_model_path, open_session)
        else:
            open_session()

        self.provider: str = self.session.get_providers()[0]
        asked_gpu = [p for p in providers if p in GPU_PROVIDERS]
        #: why each GPU provider that was asked for is not in use (empty when one runs, or none was asked for)
        self.provider_problems: Dict[str, str] = {}
        if asked_gpu and self.provider not in GPU_PROVIDERS:
            self.provider_problems = {p: r for p, r in gpu_provider_problems().items() if p in asked_gpu} or {
                p: 'onnxruntime dropped it when creating the session (see its log)' for p in asked_gpu}
            why = '; '.join(f'{p}: {r}' for p, r in self.provider_problems.items())
            msg = f'asked for a GPU but onnxruntime created the session on {self.provider}: {why}'
            if require_gpu and not allow_fallback:
                raise ProviderUnavailableError(msg)
            _logger.warning('%s', msg)
        elif require_gpu and self.provider not in GPU_PROVIDERS:
            msg = (f'asked for a GPU but onnxruntime created the session on {self.provider}: '
                   + '; '.join(f'{p}: {r}' for p, r in gpu_provider_problems().items()))
            if not allow_fallback:
                raise ProviderUnavailableError(msg)
            _logger.warning('%s (fallback allowed)', msg)

        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name: str = inp.name
        self.output_name: str = out.name
        self.input_shape: List[Union[int, str, None]] = list(inp.shape)
        if inp.type not in _ORT_DTYPES:
            raise ValueError(f'{self.path}: unsupported input type {inp.type}')
        self.input_dtype = np.dtype(_ORT_DTYPES[inp.type])
        self.metadata: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.labels: List[str] = list(json.loads(self.metadata.get('sdzoo.labels', '[]')))
        n_out = out.shape[-1] if out.shape else None
        self.num_classes: int = int(n_out) if isinstance(n_out, int) else len(self.labels)
        self.channels_last = self.metadata.get('sdzoo.preprocess', '0') == '1' or self.input_dtype == np.uint8
        if len(self.input_shape) != 4:
            raise ValueError(f'{self.path}: expected a 4-d image input, the model has {self.input_shape}')

    # -- metadata helpers
    def _meta_json(self, key: str, default):
        value = self.metadata.get(key)
        return json.loads(value) if value else default

    @property
    def spatial_size(self) -> Tuple[int, int]:
        dims = self.input_shape[1:3] if self.channels_last else self.input_shape[2:4]
        if all(isinstance(d, int) for d in dims):
            return int(dims[0]), int(dims[1])
        size = self._meta_json('sdzoo.input_size', None)
        if not size:
            raise ValueError(f'{self.path}: input size is neither fixed in the graph nor in the metadata')
        return int(size[1]), int(size[2])

    @property
    def geometry(self) -> ImageGeometry:
        """How :meth:`preprocess` (and INT8 calibration of this model) bring a picture to the input size."""
        return ImageGeometry.from_config(self.metadata, 'sdzoo.')

    @property
    def in_chans(self) -> int:
        c = self.input_shape[3] if self.channels_last else self.input_shape[1]
        return int(c) if isinstance(c, int) else int(self._meta_json('sdzoo.input_size', [3])[0])

    # -- inference
    def check_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` as the session wants it, or a ValueError naming what is wrong with it."""
        layout = '[batch, H, W, C] (uint8 NHWC)' if self.channels_last else '[batch, C, H, W] (NCHW)'
        if not isinstance(x, np.ndarray):
            raise ValueError(f'input must be a numpy array shaped {layout}, got {type(x).__name__}')
        if x.ndim != 4:
            raise ValueError(f'input must have rank 4, {layout}; got rank {x.ndim} with shape {tuple(x.shape)}'
                             + ('; add a batch dimension (x[None])' if x.ndim == 3 else ''))
        want = self.input_dtype
        if x.dtype != want:
            if want.kind == 'f' and x.dtype.kind == 'f':
                x = x.astype(want)
            elif want == np.uint8:
                raise ValueError(f'input dtype must be uint8 (raw pixels, the graph normalizes); got {x.dtype}')
            else:
                raise ValueError(f'input dtype must be {want} (normalized pixels); got {x.dtype}: preprocess '
                                 'images first (OrtModel.preprocess)')
        c_axis, hw_axes = (3, (1, 2)) if self.channels_last else (1, (2, 3))
        if x.shape[c_axis] != self.in_chans:
            raise ValueError(f'input must have {self.in_chans} channels on axis {c_axis} of {layout}; got shape '
                             f'{tuple(x.shape)}' + ('' if self.channels_last or x.shape[3] != self.in_chans
                                                    else ' (channels-last? transpose to NCHW)'))
        hw = tuple(x.shape[a] for a in hw_axes)
        if hw != self.spatial_size:
            raise ValueError(f'input spatial size must be {self.spatial_size[0]}x{self.spatial_size[1]}; got '
                             f'{hw[0]}x{hw[1]} (shape {tuple(x.shape)}); resize/crop with OrtModel.preprocess')
        batch = self.input_shape[0]
        if x.shape[0] < 1:
            raise ValueError('input batch is empty')
        if isinstance(batch, int) and x.shape[0] != batch:
            raise ValueError(f'this model has a fixed batch size of {batch}; got {x.shape[0]}')
        return np.ascontiguousarray(x)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[batch, num_classes]`` as float32."""
        x = self.check_input(x)
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return out.astype(np.float32, copy=False)

    def predict(self, x, top_k: int = 5) -> List[List[Tuple[str, float]]]:
        """Softmax top-k ``(label, probability)`` per image; ``x`` is a batch array or PIL images."""
        if isinstance(x, (list, tuple)):
            x = self.preprocess(list(x))
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f'top_k must be a positive int, got {top_k!r}')
        probs = softmax(self.run(x))
        k = min(top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind='stable')[:, :k]
        names = self.labels if len(self.labels) == probs.shape[1] else [str(i) for i in range(probs.shape[1])]
        return [[(names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]

    def preprocess(self, images: List['PIL.Image.Image']) -> np.ndarray:
        """Turn upright (EXIF), resize / center-crop (timm's eval transform) and normalize PIL images into a batch.

        For graphs with preprocessing inside (input ``image``) this stops at uint8 NHWC pixels.
        """
        from PIL import Image
        if isinstance(images, Image.Image):
            images = [images]
        if not images:
            raise ValueError('no images to preprocess')
        size, geometry = self.spatial_size, self.geometry
        mode = 'L' if self.in_chans == 1 else 'RGB'
        if self.in_chans not in (1, 3):
            raise ValueError(f'cannot make {self.in_chans}-channel inputs from images')
        pixels = []
        for img in images:
            if not isinstance(img, Image.Image):
                raise ValueError(f'expected PIL images, got {type(img).__name__}')
            img = upright(img)
            if img.mode != mode:  # resize_center_crop makes a new image anyway: no copy of a full-size one
                img = img.convert(mode)
            img = geometry.crop(img, size)
            arr = np.asarray(img, dtype=np.uint8)
            pixels.append(arr[..., None] if arr.ndim == 2 else arr)
        batch = np.stack(pixels)  # NHWC uint8
        if self.channels_last:
            return batch
        mean = np.asarray(self._meta_json('sdzoo.mean', [0.485, 0.456, 0.406]), dtype=np.float32)
        std = np.asarray(self._meta_json('sdzoo.std', [0.229, 0.224, 0.225]), dtype=np.float32)
        x = batch.astype(np.float32) / np.float32(255.0)
        x = (x - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(self.input_dtype, copy=False)

    def __repr__(self) -> str:
        return (f'OrtModel({str(self.path)!r}, provider={self.provider}, input={self.input_name}'
                f'{self.input_shape}, classes={self.num_classes})')
