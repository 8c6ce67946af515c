"""The HTTP server: Open Inference Protocol (KServe v2 / Triton) REST API over a model repository.

Endpoints (``{v}``-versioned forms too): ``GET``/``HEAD /v2/health/live``, ``/v2/health/ready``, ``GET /v2``,
``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``/v2/models/{name}/config``,
``POST /v2/models/{name}/infer`` (JSON tensors, Triton's binary tensor data and classification
extensions), ``POST /v2/models/{name}/classify?top_k=5`` (an image file -> top-k labels),
``POST /v2/repository/index``, ``/v2/repository/models/{name}/load`` and ``/unload`` (Triton's model
repository extension) and ``GET /metrics``. Every error is ``{"error": "..."}`` with a 4xx/5xx.

Each request's cost is bounded: the body (``max_body_bytes``), the values of a JSON tensor (a full batch of
the model's input), the decoded pixels of a classify request (``max_request_pixels``), and, server-wide,
the large bodies held at once (``max_large_body_bytes``) and the memory of the images being decoded and
large JSON being parsed at once (``max_work_bytes``): docs/reliability.md states the bound this gives.

This module builds the app (settings, the served models' state, middleware, error handlers); the
endpoints are :mod:`sdzoo.serve.routes`, the wire format :mod:`sdzoo.serve.protocol`.
"""
from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import datetime
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

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
from .protocol import EXTENSIONS, SERVER_NAME, SMALL_BODY_BYTES, ApiError, short  # noqa: F401
from .repository import ModelEntry, load_entry, load_repository, model_directories
from .routes import router

__all__ = ['ServeSettings', 'ServerState', 'Budget', 'create_app', 'return_large_blocks', 'JsonFormatter', 'ApiError']

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
    max_image_pixels: int = 40_000_000  # per image (its header is read before decoding)
    max_request_pixels: int = 40_000_000  # all images of one classify request together
    max_large_body_bytes: Optional[int] = None  # server-wide, bodies over 64 KiB held at once (None: 4 x max_body)
    max_work_bytes: int = 320 << 20  # server-wide, images decoding (8 B/pixel) and JSON parsing (48 B/value) at once
    malloc_mmap_threshold: Optional[int] = 1 << 20  # glibc: blocks from this size are returned when freed
    strict_readiness: bool = True
    retry_after_s: int = 1
    drain_timeout_s: float = 30.0


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_large_blocks(threshold: int) -> bool:
    """Have glibc serve blocks of ``threshold`` bytes and more from their own mappings, unmapped when freed.

    By default glibc raises that threshold after each large free (up to 32 MiB), so the next decoded image
    or request body comes from the heap and stays resident once freed: one 6000x6000 upload kept +236 MiB
    for good (docs/reliability.md, serving memory bound). Setting it fixes it. False where malloc is not glibc's.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1)
    except (OSError, AttributeError):  # musl, macOS: no mallopt, nothing to tune
        return False


# --- the served models ---------------------------------------------------------------------------------------

class Budget:
    """A server-wide amount (bytes of large bodies held, of images decoding) that requests hold a share of
    while they work, waiting in arrival order while it is spent: memory stays bounded however many clients
    send large work at once. A share above the whole budget is cut to it (it then runs alone). Event-loop only."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f'budget capacity must be >= 1, got {capacity}')
        self.capacity = int(capacity)
        self.in_use = 0
        self._waiters: Deque[Tuple[int, asyncio.Future]] = collections.deque()

    @asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        amount = max(0, min(int(amount), self.capacity))
        await self._acquire(amount)
        try:
            yield
        finally:
            self.in_use -= amount
            self._wake()

    async def _acquire(self, amount: int) -> None:
        if not self._waiters and self.in_use + amount <= self.capacity:
            self.in_use += amount
            return
        waiter = (amount, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:  # the client went away while waiting
            if waiter[1].done() and not waiter[1].cancelled():  # granted in the same instant: give it back
                self.in_use -= amount
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            self._wake()
            raise

    def _wake(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.capacity:
            amount, future = self._waiters.popleft()
            if not future.done():
                self.in_use += amount
                future.set_result(None)


class ServerState:
    """Entries, their batchers and metrics: everything a request handler needs. ``root`` (the repository
    directory) and ``ort_kwargs`` let the repository API load entries after start."""

    def __init__(self, entries: Mapping[str, ModelEntry], settings: ServeSettings, metrics: ServeMetrics,
                 root: Optional[Path] = None, ort_kwargs: Optional[Dict[str, Any]] = None):
        self.entries = dict(entries)
        self.settings = settings
        self.metrics = metrics
        self.root = root
        self.ort_kwargs = dict(ort_kwargs or {})
        self.batchers: Dict[str, DynamicBatcher] = {}
        self.draining = False
        self.work_budget = Budget(settings.max_work_bytes)
        self.body_budget = Budget(settings.max_large_body_bytes or 4 * settings.max_body_bytes)
        self._repository_lock: Optional[asyncio.Lock] = None
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

    # -- the model repository extension: index, load, unload --
    def repository_index(self, ready_only: bool = False) -> List[Dict[str, Any]]:
        """Every entry, and every model directory of the repository not loaded yet, with its state."""
        names = set(self.entries)
        if self.root is not None and self.root.is_dir():
            names.update(model_directories(self.root))
        out = []
        for name in sorted(names):
            e = self.entries.get(name)
            if ready_only and (e is None or not e.ready):
                continue
            if e is None:
                out.append({'name': name, 'state': 'UNAVAILABLE', 'reason': 'not loaded'})
            else:
                out.append({'name': name, **({'version': e.version} if e.version else {}),
                            'state': 'READY' if e.ready else 'UNAVAILABLE', 'reason': '' if e.ready else e.error})
        return out

    def _model_directory(self, name: str) -> Path:
        if name in self.entries:
            return self.entries[name].directory
        if (self.root is not None and name not in ('.', '..') and not name.startswith('.') and '/' not in name
                and '\\' not in name and (self.root / name).is_dir()):
            return self.root / name
        raise ApiError(404, f'unknown model {short(name)!r}: no such directory in the model repository '
                            f'{str(self.root) if self.root is not None else "(entries given at start)"}')

    def _lock(self) -> asyncio.Lock:
        if self._repository_lock is None:  # made on the serving event loop
            self._repository_lock = asyncio.Lock()
        return self._repository_lock

    async def load(self, name: str) -> None:
        """(Re)load ``name`` from its repository directory; a failed reload leaves the served version serving."""
        directory = self._model_directory(name)
        async with self._lock():
            if self.draining:
                raise ApiError(503, 'server is shutting down')
            entry = await run_in_threadpool(load_entry, directory, **self.ort_kwargs)
            if self.draining:  # shutdown began while the session was created: start no new batcher
                raise ApiError(503, 'server is shutting down')
            old = self.entries.get(name)
            if not entry.ready and old is not None and old.ready:
                raise ApiError(400, f'failed to load model {name!r}: {entry.error}; version {old.version} '
                                    f'keeps serving')
            await self._install(entry)
            if not entry.ready:
                raise ApiError(400, f'failed to load model {name!r}: {entry.error}')

    async def unload(self, name: str) -> None:
        """Stop serving ``name``: queued requests finish, later ones get a 400; it stays listed as UNAVAILABLE."""
        async with self._lock():
            entry = self.entry(name)
            if not entry.unloaded:
                await self._install(entry.without_model())

    async def _install(self, entry: ModelEntry) -> None:
        """Serve ``entry`` from now on (a fresh batcher if it is ready); the replaced batcher drains."""
        old = self.batchers.pop(entry.name, None)
        self.entries[entry.name] = entry
        if entry.ready:
            self.batchers[entry.name] = self._make_batcher(entry)
            self.batchers[entry.name].start()
        else:
            self.metrics.queue_depth.labels(entry.name).set_function(lambda: 0)
        self.metrics.model_ready.labels(entry.name).set(1 if entry.ready else 0)
        _logger.info('model %r %s', entry.name, 'loaded' if entry.ready else 'unavailable',
                     extra={'event': 'model_state', 'model': entry.name, 'ready': entry.ready, 'error': entry.error})
        if old is not None:
            await run_in_threadpool(old.close, self.settings.drain_timeout_s)

    async def infer(self, entry: ModelEntry, x: np.ndarray) -> np.ndarray:
        current, batcher = self.entries.get(entry.name), self.batchers.get(entry.name)
        if current is not entry or batcher is None:  # (un)loaded through the repository API meanwhile
            if current is not None and current.ready:
                raise ApiError(503, f'model {entry.name!r} was reloaded while this request was read; retry',
                               headers={'Retry-After': str(self.settings.retry_after_s)})
            raise ApiError(400, f'model {entry.name!r} is not ready: {current.error if current else "unloaded"}')
        try:
            return await batcher.submit(x)
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
    """413 for bodies above ``max_bytes``: at once from Content-Length, or as soon as the stream passes it.

    A larger body than ``SMALL_BODY_BYTES`` (or one of unknown or compressed size: charged ``max_bytes``) first
    waits for its share of ``budget``, the bytes of large bodies held server-wide, and keeps it until the
    response is sent; its connection is not read meanwhile (TCP backpressure)."""

    def __init__(self, app, max_bytes: int, budget: Budget):
        self.app = app
        self.max_bytes = max_bytes
        self.budget = budget

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        length, unknown = 0, False
        for key, value in scope['headers']:
            if key == b'content-length':
                try:
                    length = int(value)
                except ValueError:
                    return await _send_error(send, 400, f'invalid Content-Length {short(value.decode("latin-1"))!r}')
                if length > limit:
                    return await _send_error(
                        send, 413, f'request body of {length} bytes exceeds the limit of {limit} bytes')
            elif key == b'transfer-encoding' or (key == b'content-encoding'
                                                 and value.strip().lower() not in (b'', b'identity')):
                unknown = True  # chunked, or gzip/deflate: up to the limit once read and inflated
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message['type'] == 'http.request':
                received += len(message.get('body', b''))
                if received > limit:
                    raise ApiError(413, f'request body exceeds the limit of {limit} bytes')
            return message

        need = limit if unknown else length
        if need <= SMALL_BODY_BYTES:
            return await self.app(scope, limited_receive, send)
        async with self.budget.hold(need):
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
    root = None if isinstance(repository, Mapping) else Path(repository)
    state = ServerState(entries, settings, ServeMetrics(), root=root, ort_kwargs=ort_kwargs)
    broken = {n: e.error for n, e in state.entries.items() if not e.ready}
    if broken:
        _logger.error('%d of %d models failed to load: %s', len(broken), len(state.entries), sorted(broken),
                      extra={'event': 'repository_errors', 'errors': broken})

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.malloc_mmap_threshold is not None:
            return_large_blocks(settings.malloc_mmap_threshold)
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
    app.add_middleware(_BodyLimitMiddleware, max_bytes=settings.max_body_bytes, budget=state.body_budget)
    app.add_middleware(_AccessMiddleware, state=state)
    return app
