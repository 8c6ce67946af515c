"""The HTTP server: Open Inference Protocol (KServe v2 / Triton) REST API over a model repository.

Endpoints (``{v}``-versioned forms too): ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``,
``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``/v2/models/{name}/config``,
``POST /v2/models/{name}/infer`` (JSON tensors, Triton's binary tensor data and classification
extensions), ``POST /v2/models/{name}/classify?top_k=5`` (an image file -> top-k labels),
``POST /v2/repository/index`` and ``GET /metrics``. Every error is ``{"error": "..."}`` with a 4xx/5xx.

This module builds the app (settings, the served models' state, middleware, error handlers); the
endpoints are :mod:`sdzoo.serve.routes`, the wire format :mod:`sdzoo.serve.protocol`.
"""
from __future__ import annotations

import datetime
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import JSONResponse

from .. import __version__
from .batching import DynamicBatcher, QueueFullError, ShuttingDownError
from .metrics import UNKNOWN_MODEL, ServeMetrics
# the wire format and the endpoints have modules of their own; their names stay importable from here
from .protocol import EXTENSIONS, SERVER_NAME, ApiError, short  # noqa: F401
from .repository import ModelEntry, load_repository
from .routes import router

__all__ = ['ServeSettings', 'ServerState', 'create_app', 'JsonFormatter', 'ApiError']

_logger = logging.getLogger('sdzoo.serve')
_access_logger = logging.getLogger('sdzoo.serve.access')



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
            raise ApiError(404, f'unknown model {short(name)!r}; this server serves {sorted(self.entries)}')
        if version is not None and entry.version is not None and version != entry.version:
            raise ApiError(404, f'model {name!r} has no version {short(version)!r}; available: {entry.versions}')
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
                    return await _send_error(send, 400, f'invalid Content-Length {short(value.decode("latin-1"))!r}')
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

async def _http_error(request: Request, exc: HTTPException):
    return JSONResponse({'error': str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError):
    msgs = '; '.join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
    return JSONResponse({'error': f'invalid request: {msgs}'}, status_code=400)


async def _internal_error(request: Request, exc: Exception):
    _logger.exception('unhandled error on %s', request.url.path, extra={'event': 'internal_error'})
    return JSONResponse({'error': f'internal server error: {type(exc).__name__}: {exc}'}, status_code=500)


def create_app(
        repository: Union[str, Path, Mapping[str, ModelEntry]],
        settings: Optional[ServeSettings] = None,
        *,
        models: Optional[Sequence[str]] = None,
        **ort_kwargs: Any,
) -> FastAPI:
    """Load the repository (a path, or already loaded entries) and build the ASGI app serving it.

    ``ort_kwargs`` go to :class:`sdzoo.runtime.OrtModel` (providers, intra_op_num_threads, ...). Batchers
    start with the app's lifespan and drain on shutdown, so in-flight requests finish. The endpoints
    are :mod:`sdzoo.serve.routes`.
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
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(router)
    # outermost last: access log sees every response (413s included); gzip only when the client asks
    app.add_middleware(GZipMiddleware, minimum_size=4096)
    app.add_middleware(_BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(_AccessMiddleware, state=state)
    return app
