"""The HTTP server: Open Inference Protocol (KServe v2 / Triton) REST API over a model repository.

Endpoints (``{v}``-versioned forms too): ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``,
``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``/v2/models/{name}/config``,
``POST /v2/models/{name}/infer`` (JSON tensors, Triton's binary tensor data and classification
extensions), ``POST /v2/models/{name}/classify?top_k=5`` (an image file -> top-k labels),
``POST /v2/repository/index`` and ``GET /metrics``. Every error is ``{"error": "..."}`` with a 4xx/5xx.
"""
from __future__ import annotations

import datetime
import io
import json
import logging
import math
import struct
import time
import zlib
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import JSONResponse, Response

from .. import __version__
from .batching import DynamicBatcher, QueueFullError, ShuttingDownError
from .metrics import CONTENT_TYPE_LATEST, UNKNOWN_MODEL, ServeMetrics
from .repository import ModelEntry, load_repository, numpy_dtype

__all__ = ['ServeSettings', 'ServerState', 'create_app', 'JsonFormatter', 'ApiError']

_logger = logging.getLogger('sdzoo.serve')
_access_logger = logging.getLogger('sdzoo.serve.access')

SERVER_NAME = 'sdzoo'
EXTENSIONS = ['binary_tensor_data', 'classification', 'model_configuration', 'model_repository']
_OFFLOAD_BYTES = 1 << 20  # parse request bodies larger than this off the event loop


@dataclass
class ServeSettings:
    """Server knobs; ``None`` batching values fall back to each model's config.pbtxt, then the defaults."""
    max_batch_size: Optional[int] = None
    max_queue_delay_us: Optional[int] = None
    batching: bool = True
    default_max_batch_size: int = 32
    max_queue_size: int = 256
    max_body_bytes: int = 16 << 20
    max_image_pixels: int = 40_000_000
    strict_readiness: bool = True
    retry_after_s: int = 1
    drain_timeout_s: float = 30.0


class ApiError(HTTPException):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(status_code=status, detail=message, headers=headers)


def _short(s: Any, n: int = 80) -> str:
    s = str(s)
    return s if len(s) <= n else s[:n] + '...'


# --- the served models ---------------------------------------------------------------------------------------

class ServerState:
    """Entries, their batchers and metrics: everything a request handler needs."""

    def __init__(self, entries: Mapping[str, ModelEntry], settings: ServeSettings, metrics: ServeMetrics):
        self.entries = dict(entries)
        self.settings = settings
        self.metrics = metrics
        self.batchers: Dict[str, DynamicBatcher] = {}
        self.draining = False
        for name, entry in self.entries.items():
            metrics.model_ready.labels(name).set(1 if entry.ready else 0)
            if entry.ready:
                self.batchers[name] = self._make_batcher(entry)

    def batching_config(self, entry: ModelEntry) -> Tuple[int, float, bool]:
        """(max_batch_size, max_queue_delay seconds, merging enabled) for one model."""
        s, cfg = self.settings, entry.config
        if not entry.batchable:
            fixed = entry.input_shape[0]
            return (fixed if fixed > 0 else (s.max_batch_size or s.default_max_batch_size)), 0.0, False
        mbs = s.max_batch_size or (cfg.max_batch_size if cfg and cfg.max_batch_size else s.default_max_batch_size)
        if s.max_queue_delay_us is not None:
            delay_us = s.max_queue_delay_us
        else:
            delay_us = cfg.max_queue_delay_us if cfg is not None and cfg.max_queue_delay_us is not None else 0
        return int(mbs), delay_us / 1e6, s.batching

    def _make_batcher(self, entry: ModelEntry) -> DynamicBatcher:
        mbs, delay, enabled = self.batching_config(entry)
        batcher = DynamicBatcher(
            entry.model.run, max_batch_size=mbs, max_queue_delay=delay, max_queue_size=self.settings.max_queue_size,
            enabled=enabled, name=entry.name, observer=self.metrics.batch_observer(entry.name))
        self.metrics.queue_depth.labels(entry.name).set_function(lambda b=batcher: b.queue_depth)
        return batcher

    def start(self) -> None:
        for b in self.batchers.values():
            b.start()

    def drain(self) -> None:
        """Stop taking requests and finish every queued one (graceful shutdown)."""
        self.draining = True
        for name, b in self.batchers.items():
            if not b.close(timeout=self.settings.drain_timeout_s):
                _logger.warning('batcher for %r did not drain in %.0f s', name, self.settings.drain_timeout_s,
                                extra={'event': 'drain_timeout', 'model': name})

    def entry(self, name: str, version: Optional[str] = None) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise ApiError(404, f'unknown model {_short(name)!r}; this server serves {sorted(self.entries)}')
        if version is not None and entry.version is not None and version != entry.version:
            raise ApiError(404, f'model {name!r} has no version {_short(version)!r}; available: {entry.versions}')
        return entry

    def ready_entry(self, name: str, version: Optional[str] = None) -> ModelEntry:
        entry = self.entry(name, version)
        if not entry.ready:
            raise ApiError(400, f'model {name!r} is not ready: {entry.error}')
        return entry

    async def infer(self, entry: ModelEntry, x: np.ndarray) -> np.ndarray:
        try:
            return await self.batchers[entry.name].submit(x)
        except QueueFullError as e:
            self.metrics.queue_rejections.labels(entry.name).inc()
            raise ApiError(503, f'{e}; retry later', headers={'Retry-After': str(self.settings.retry_after_s)})
        except ShuttingDownError as e:
            raise ApiError(503, str(e), headers={'Retry-After': str(self.settings.retry_after_s)})
        except ValueError as e:
            raise ApiError(400, str(e))
        except Exception as e:  # noqa: BLE001 - onnxruntime failure: the request was valid, the server failed
            raise ApiError(500, f'inference failed for model {entry.name!r}: {type(e).__name__}: {e}')


# --- request bodies ------------------------------------------------------------------------------------------

async def _read_body(request: Request, limit: int) -> bytes:
    """The body, decompressed per Content-Encoding (gzip/deflate), at most ``limit`` bytes either way."""
    body = await request.body()
    encoding = request.headers.get('content-encoding', '').strip().lower()
    if encoding in ('', 'identity'):
        return body
    if encoding == 'gzip':
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == 'deflate':
        d = zlib.decompressobj()
    else:
        raise ApiError(415, f'unsupported Content-Encoding {_short(encoding)!r}; use gzip, deflate or none')
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise ApiError(400, f'request body is not valid {encoding} data: {e}')
    if len(out) > limit or d.unconsumed_tail:
        raise ApiError(413, f'decompressed request body exceeds the limit of {limit} bytes')
    if not d.eof:
        raise ApiError(400, f'request body is truncated {encoding} data')
    return out


@dataclass
class _InferRequest:
    x: np.ndarray
    request_id: Optional[str]
    outputs: List[Tuple[str, Dict[str, Any]]]  # (name, parameters)
    binary_output: bool


def _as_shape(value: Any, name: str) -> List[int]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)):
        raise ApiError(400, f'input {name!r} shape must be a non-empty list of non-negative integers, '
                            f'got {_short(json.dumps(value))}')
    return value


def _parse_infer_request(entry: ModelEntry, body: bytes, header_length: Optional[str],
                         max_batch_size: int) -> _InferRequest:
    model = entry.model
    binary = memoryview(b'')
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ApiError(400, f'Inference-Header-Content-Length must be an integer, got {_short(header_length)!r}')
        if not 0 < n <= len(body):
            raise ApiError(400, f'Inference-Header-Content-Length {n} does not fit the {len(body)}-byte body')
        binary = memoryview(body)[n:]
        body = body[:n]
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f'malformed JSON in inference request: {e}')
    if not isinstance(req, dict):
        raise ApiError(400, f'inference request must be a JSON object, got {type(req).__name__}')
    request_id = req.get('id')
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(400, f'inference request "id" must be a string, got {type(request_id).__name__}')
    params = req.get('parameters', {})
    if not isinstance(params, dict):
        raise ApiError(400, 'inference request "parameters" must be a JSON object')
    inputs = req.get('inputs')
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise ApiError(400, 'inference request needs "inputs": a non-empty list of tensor objects')
    names = [i.get('name') for i in inputs]
    if names != [model.input_name]:
        raise ApiError(400, f'model {entry.name!r} takes exactly one input {model.input_name!r}, '
                            f'got {_short(names, 200)}')
    inp = inputs[0]
    iname = model.input_name

    datatype = inp.get('datatype')
    if datatype is None:
        raise ApiError(400, f'input {iname!r} has no "datatype"; the model takes {entry.input_datatype!r}')
    if datatype != entry.input_datatype:
        raise ApiError(400, f'input {iname!r} datatype {_short(datatype)!r} does not match the model\'s '
                            f'{entry.input_datatype!r}')
    dtype = numpy_dtype(datatype)
    shape = _as_shape(inp.get('shape'), iname)
    expected = entry.input_shape
    if len(shape) != len(expected) or any(e != -1 and s != e for s, e in zip(shape, expected)):
        raise ApiError(400, f'input {iname!r} shape {shape} does not match the model\'s {expected} '
                            f'(-1: any size, batch first)')
    if shape[0] < 1:
        raise ApiError(400, f'input {iname!r} batch dimension must be >= 1, got shape {shape}')
    if shape[0] > max_batch_size:
        raise ApiError(400, f'input {iname!r} batch size {shape[0]} exceeds max_batch_size {max_batch_size} '
                            f'of model {entry.name!r}')
    count = math.prod(shape)

    iparams = inp.get('parameters', {})
    if not isinstance(iparams, dict):
        raise ApiError(400, f'input {iname!r} "parameters" must be a JSON object')
    if 'shared_memory_region' in iparams:
        raise ApiError(400, 'the shared-memory extension is not supported by this server; send the tensor data')
    if 'binary_data_size' in iparams:
        size = iparams['binary_data_size']
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ApiError(400, f'input {iname!r} binary_data_size must be a non-negative integer')
        if 'data' in inp:
            raise ApiError(400, f'input {iname!r} has both "data" and binary_data_size; send one')
        need = count * dtype.itemsize
        if size != need:
            raise ApiError(400, f'input {iname!r} binary_data_size is {size} bytes but shape {shape} of '
                                f'{datatype} needs {need} bytes')
        if header_length is None:
            raise ApiError(400, 'binary tensor data needs the Inference-Header-Content-Length header')
        if len(binary) != size:
            raise ApiError(400, f'input {iname!r} declares {size} bytes of binary data but {len(binary)} bytes '
                                f'follow the JSON header')
        x = np.frombuffer(binary, dtype=dtype.newbyteorder('<'), count=count).astype(dtype, copy=False)
        x = x.reshape(shape)
    else:
        if len(binary):
            raise ApiError(400, f'{len(binary)} bytes of binary data follow the JSON header but no input '
                                f'declares binary_data_size')
        data = inp.get('data')
        if data is None:
            raise ApiError(400, f'input {iname!r} has neither "data" nor parameters.binary_data_size')
        try:
            with np.errstate(over='ignore'):  # an out-of-range number becomes inf, refused below
                arr = np.asarray(data, dtype=dtype)
        except (ValueError, TypeError, OverflowError) as e:
            raise ApiError(400, f'input {iname!r} data cannot be read as {datatype}: {_short(e, 200)}')
        if arr.size != count:
            raise ApiError(400, f'input {iname!r} has {arr.size} elements but shape {shape} needs {count}')
        x = arr.reshape(shape)

    if x.dtype.kind == 'f' and not np.isfinite(x).all():  # NaN/Inf (or a value beyond the dtype's range)
        raise ApiError(400, f'input {iname!r} holds NaN or infinite values ({int((~np.isfinite(x)).sum())} of '
                            f'{x.size}); send finite numbers')
    outputs: List[Tuple[str, Dict[str, Any]]] = []
    requested = req.get('outputs')
    if requested is not None:
        if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
            raise ApiError(400, 'inference request "outputs" must be a list of objects')
        for o in requested:
            oname = o.get('name')
            if oname != model.output_name:
                raise ApiError(400, f'unknown output {_short(oname)!r}; model {entry.name!r} has outputs '
                                    f'[{model.output_name!r}]')
            oparams = o.get('parameters', {})
            if not isinstance(oparams, dict):
                raise ApiError(400, f'output {oname!r} "parameters" must be a JSON object')
            if 'shared_memory_region' in oparams:
                raise ApiError(400, 'the shared-memory extension is not supported by this server')
            k = oparams.get('classification', 0)
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= model.num_classes:
                raise ApiError(400, f'output {oname!r} classification must be an integer in '
                                    f'[0, {model.num_classes}], got {_short(k)}')
            outputs.append((oname, oparams))
    return _InferRequest(x=x, request_id=request_id, outputs=outputs or [(model.output_name, {})],
                         binary_output=bool(params.get('binary_data_output', False)))


def _classification_strings(y: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    top = np.argsort(-y, axis=1, kind='stable')[:, :k]
    out = np.empty(top.shape, dtype=object)
    for r, row in enumerate(top):
        for c, idx in enumerate(row):
            s = f'{y[r, idx]:f}:{idx}'
            out[r, c] = (s + f':{labels[idx]}' if labels else s).encode()
    return out


def _infer_response(entry: ModelEntry, req: _InferRequest, y: np.ndarray) -> Response:
    if not np.isfinite(y).all():  # JSON has no NaN/Infinity: refuse instead of emitting invalid JSON
        raise ApiError(400, f'the input drives model {entry.name!r} to NaN or infinite logits (values far outside '
                            'what it was trained on?); send inputs preprocessed as the model expects')
    outputs, chunks = [], []
    for name, params in req.outputs:
        k = int(params.get('classification', 0))
        if k:
            tensor, datatype = _classification_strings(y, k, entry.labels), 'BYTES'
        else:
            tensor, datatype = y, 'FP32'
        out: Dict[str, Any] = {'name': name, 'datatype': datatype, 'shape': list(tensor.shape)}
        if bool(params.get('binary_data', req.binary_output)):
            if datatype == 'BYTES':
                raw = b''.join(struct.pack('<I', len(s)) + s for s in tensor.ravel())
            else:
                raw = np.ascontiguousarray(tensor, dtype='<f4').tobytes()
            out['parameters'] = {'binary_data_size': len(raw)}
            chunks.append(raw)
        else:
            out['data'] = ([s.decode() for s in tensor.ravel()] if datatype == 'BYTES'
                           else tensor.ravel().tolist())
        outputs.append(out)
    body: Dict[str, Any] = {'model_name': entry.name, 'model_version': entry.version}
    if req.request_id is not None:
        body['id'] = req.request_id
    body['outputs'] = outputs
    header = json.dumps(body, separators=(',', ':'), allow_nan=False).encode()
    if not chunks:
        return Response(header, media_type='application/json')
    return Response(header + b''.join(chunks), media_type='application/octet-stream',
                    headers={'Inference-Header-Content-Length': str(len(header))})


# --- images --------------------------------------------------------------------------------------------------

def _decode_images(files: Sequence[Tuple[Optional[str], bytes]], max_pixels: int) -> list:
    from PIL import Image, UnidentifiedImageError
    images = []
    for filename, data in files:
        what = f'file {filename!r}' if filename else 'request body'
        if not data:
            raise ApiError(400, f'{what} is empty; send an image file (PNG, JPEG, ...)')
        try:
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ApiError(400, f'{what} is a {w}x{h} image, above the limit of {max_pixels} pixels')
            im.load()  # decode now: a truncated file is the client's 400, not a preprocessing 500
            images.append(im)
        except ApiError:
            raise
        except UnidentifiedImageError:
            raise ApiError(400, f'{what} is not a decodable image (unknown or unsupported image format)')
        except Exception as e:  # noqa: BLE001 - PIL raises many types for undecodable data
            raise ApiError(400, f'{what} is not a decodable image ({type(e).__name__}: {_short(e, 160)})')
    return images


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- logging / middleware ------------------------------------------------------------------------------------

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {'message', 'asctime', 'taskName', 'color_message'}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra={...}`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        d = {
            'ts': datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec='milliseconds'),
            'level': record.levelname,
            'logger': record.name,
            'message': record.getMessage(),
        }
        d.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith('_')})
        if record.exc_info:
            d['exc'] = self.formatException(record.exc_info)
        return json.dumps(d, default=str)


async def _send_error(send, status: int, message: str) -> None:
    body = json.dumps({'error': message}).encode()
    await send({'type': 'http.response.start', 'status': status,
                'headers': [(b'content-type', b'application/json'), (b'content-length', str(len(body)).encode()),
                            (b'connection', b'close')]})
    await send({'type': 'http.response.body', 'body': body})


class _BodyLimitMiddleware:
    """413 for bodies above ``max_bytes``: at once from Content-Length, or as soon as the stream passes it."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        for key, value in scope['headers']:
            if key == b'content-length':
                try:
                    length = int(value)
                except ValueError:
                    return await _send_error(send, 400, f'invalid Content-Length {_short(value.decode("latin-1"))!r}')
                if length > limit:
                    return await _send_error(
                        send, 413, f'request body of {length} bytes exceeds the limit of {limit} bytes')
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message['type'] == 'http.request':
                received += len(message.get('body', b''))
                if received > limit:
                    raise ApiError(413, f'request body exceeds the limit of {limit} bytes')
            return message

        await self.app(scope, limited_receive, send)


class _AccessMiddleware:
    """Per-request JSON access log line and Prometheus request metrics."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status, sent, received = 500, 0, 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get('body', b''))
            return message

        async def tracking_send(message):
            nonlocal status, sent
            if message['type'] == 'http.response.start':
                status = message['status']
            elif message['type'] == 'http.response.body':
                sent += len(message.get('body', b''))
            await send(message)

        self.state.metrics.in_flight.inc()
        try:
            await self.app(scope, counting_receive, tracking_send)
        finally:
            self.state.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            route = scope.get('route')
            endpoint = getattr(route, 'path', None) or 'unmatched'
            name = (scope.get('path_params') or {}).get('name')
            model = '' if name is None else (name if name in self.state.entries else UNKNOWN_MODEL)
            self.state.metrics.observe_request(model, endpoint, status, seconds)
            client = scope.get('client')
            _access_logger.info(
                '%s %s %d', scope['method'], scope['path'], status,
                extra={'event': 'access', 'client': f'{client[0]}:{client[1]}' if client else None,
                       'method': scope['method'], 'path': scope['path'], 'query': scope.get('query_string',
                                                                                           b'').decode('latin-1'),
                       'status': status, 'duration_ms': round(seconds * 1e3, 3), 'bytes_in': received,
                       'bytes_out': sent, 'model': model or None, 'endpoint': endpoint})


# --- the app -------------------------------------------------------------------------------------------------

def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(',', ':'), allow_nan=False), status_code=status,
                    media_type='application/json')


def _tensor_meta(name: str, datatype: str, shape: List[int]) -> Dict[str, Any]:
    return {'name': name, 'datatype': datatype, 'shape': shape}


def create_app(
        repository: Union[str, Path, Mapping[str, ModelEntry]],
        settings: Optional[ServeSettings] = None,
        *,
        models: Optional[Sequence[str]] = None,
        **ort_kwargs: Any,
) -> FastAPI:
    """Load the repository (a path, or already loaded entries) and build the ASGI app serving it.

    ``ort_kwargs`` go to :class:`sdzoo.runtime.OrtModel` (providers, intra_op_num_threads, ...). Batchers
    start with the app's lifespan and drain on shutdown, so in-flight requests finish.
    """
    settings = settings or ServeSettings()
    entries = repository if isinstance(repository, Mapping) else load_repository(repository, models, **ort_kwargs)
    state = ServerState(entries, settings, ServeMetrics())
    broken = {n: e.error for n, e in state.entries.items() if not e.ready}
    if broken:
        _logger.error('%d of %d models failed to load: %s', len(broken), len(state.entries), sorted(broken),
                      extra={'event': 'repository_errors', 'errors': broken})

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        _logger.info('serving %d models', len(state.batchers),
                     extra={'event': 'serving', 'models': {n: state.batching_config(e) for n, e in state.entries.items()
                                                           if e.ready}})
        try:
            yield
        finally:
            _logger.info('draining batchers', extra={'event': 'shutdown'})
            await run_in_threadpool(state.drain)

    app = FastAPI(title='sdzoo serve', version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serve = state

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return JSONResponse({'error': str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        msgs = '; '.join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({'error': f'invalid request: {msgs}'}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        _logger.exception('unhandled error on %s', request.url.path, extra={'event': 'internal_error'})
        return JSONResponse({'error': f'internal server error: {type(exc).__name__}: {exc}'}, status_code=500)

    # -- health / metadata --
    @app.get('/v2/health/live')
    async def live():
        return Response(status_code=200)

    @app.get('/v2/health/ready')
    async def ready():
        if state.draining:
            raise ApiError(503, 'server is shutting down')
        not_ready = sorted(n for n, e in state.entries.items() if not e.ready)
        ok = not not_ready if settings.strict_readiness else len(not_ready) < len(state.entries)
        if not ok:
            raise ApiError(400, f'models not ready: {not_ready}')
        return Response(status_code=200)

    @app.get('/v2')
    async def server_metadata():
        return _json({'name': SERVER_NAME, 'version': __version__, 'extensions': EXTENSIONS})

    def model_metadata(name: str, version: Optional[str]) -> Response:
        entry = state.ready_entry(name, version)
        m = entry.model
        return _json({
            'name': entry.name, 'versions': entry.versions, 'platform': 'onnxruntime_onnx',
            'inputs': [_tensor_meta(m.input_name, entry.input_datatype, entry.input_shape)],
            'outputs': [_tensor_meta(m.output_name, 'FP32', entry.output_shape)],
        })

    def model_ready(name: str, version: Optional[str]) -> Response:
        state.ready_entry(name, version)
        return Response(status_code=200)

    def model_config(name: str, version: Optional[str]) -> Response:
        entry = state.ready_entry(name, version)
        m = entry.model
        mbs, delay, enabled = state.batching_config(entry)
        batched = entry.batchable
        out: Dict[str, Any] = {'name': m.output_name, 'data_type': 'TYPE_FP32',
                               'dims': entry.output_shape[1:] if batched else entry.output_shape}
        if entry.labels:
            out['label_filename'] = 'labels.txt'
        cfg: Dict[str, Any] = {
            'name': entry.name, 'platform': 'onnxruntime_onnx', 'backend': 'onnxruntime',
            'max_batch_size': mbs if batched else 0,
            'input': [{'name': m.input_name, 'data_type': f'TYPE_{entry.input_datatype}',
                       'dims': entry.input_shape[1:] if batched else entry.input_shape}],
            'output': [out],
        }
        if enabled:
            cfg['dynamic_batching'] = {'max_queue_delay_microseconds': int(round(delay * 1e6))}
        return _json(cfg)

    @app.get('/v2/models/{name}')
    async def _model_metadata(name: str):
        return model_metadata(name, None)

    @app.get('/v2/models/{name}/versions/{version}')
    async def _model_metadata_v(name: str, version: str):
        return model_metadata(name, version)

    @app.get('/v2/models/{name}/ready')
    async def _model_ready(name: str):
        return model_ready(name, None)

    @app.get('/v2/models/{name}/versions/{version}/ready')
    async def _model_ready_v(name: str, version: str):
        return model_ready(name, version)

    @app.get('/v2/models/{name}/config')
    async def _model_config(name: str):
        return model_config(name, None)

    @app.get('/v2/models/{name}/versions/{version}/config')
    async def _model_config_v(name: str, version: str):
        return model_config(name, version)

    @app.post('/v2/repository/index')
    async def repository_index():
        return _json([{'name': n, **({'version': e.version} if e.version else {}),
                       'state': 'READY' if e.ready else 'UNAVAILABLE', **({} if e.ready else {'reason': e.error})}
                      for n, e in sorted(state.entries.items())])

    # -- inference --
    async def infer(request: Request, name: str, version: Optional[str]) -> Response:
        entry = state.ready_entry(name, version)
        body = await _read_body(request, settings.max_body_bytes)
        mbs = state.batchers[entry.name].max_batch_size
        header_length = request.headers.get('inference-header-content-length')
        if len(body) > _OFFLOAD_BYTES:
            req = await run_in_threadpool(_parse_infer_request, entry, body, header_length, mbs)
        else:
            req = _parse_infer_request(entry, body, header_length, mbs)
        try:
            x = entry.model.check_input(req.x)
        except ValueError as e:
            raise ApiError(400, f'input {entry.model.input_name!r}: {e}')
        y = await state.infer(entry, x)
        return _infer_response(entry, req, y)

    @app.post('/v2/models/{name}/infer')
    async def _infer(request: Request, name: str):
        return await infer(request, name, None)

    @app.post('/v2/models/{name}/versions/{version}/infer')
    async def _infer_v(request: Request, name: str, version: str):
        return await infer(request, name, version)

    async def classify(request: Request, name: str, version: Optional[str]) -> Response:
        entry = state.ready_entry(name, version)
        num_classes = entry.model.num_classes
        raw_k = request.query_params.get('top_k', '5')
        try:
            top_k = int(raw_k)
        except ValueError:
            raise ApiError(400, f'top_k must be an integer, got {_short(raw_k)!r}')
        if not 1 <= top_k <= num_classes:
            raise ApiError(400, f'top_k must be between 1 and {num_classes} (the number of classes), got {top_k}')
        body = await _read_body(request, settings.max_body_bytes)
        if request.headers.get('content-type', '').lower().startswith('multipart/form-data'):
            files = []
            async with request.form(max_files=settings.default_max_batch_size) as form:
                for _, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        files.append((value.filename or '', await value.read()))
            if not files:
                raise ApiError(400, 'multipart body has no file part; send the image as a file field')
        else:
            files = [(None, body)]
        mbs = state.batchers[entry.name].max_batch_size
        if len(files) > mbs:
            raise ApiError(400, f'{len(files)} images exceed max_batch_size {mbs} of model {entry.name!r}')
        images = await run_in_threadpool(_decode_images, files, settings.max_image_pixels)
        x = await run_in_threadpool(entry.model.preprocess, images)
        probs = _softmax(await state.infer(entry, x))
        results = []
        for (filename, _), p in zip(files, probs):
            top = np.argsort(-p, kind='stable')[:top_k]
            results.append({'filename': filename, 'predictions': [
                {'index': int(i), 'label': entry.labels[i] if entry.labels else str(int(i)),
                 'probability': float(p[i])} for i in top]})
        return _json({'model_name': entry.name, 'model_version': entry.version, 'top_k': top_k,
                      'results': results})

    @app.post('/v2/models/{name}/classify')
    async def _classify(request: Request, name: str):
        return await classify(request, name, None)

    @app.post('/v2/models/{name}/versions/{version}/classify')
    async def _classify_v(request: Request, name: str, version: str):
        return await classify(request, name, version)

    @app.get('/metrics')
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # outermost last: access log sees every response (413s included); gzip only when the client asks
    app.add_middleware(GZipMiddleware, minimum_size=4096)
    app.add_middleware(_BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(_AccessMiddleware, state=state)
    return app
