"""The server's endpoints: health, metadata, repository index, inference, classification and metrics.

Handlers find the served models in ``request.app.state.serve`` (a :class:`sdzoo.serve.app.ServerState`);
the wire format (parsing, encoding, errors) is :mod:`sdzoo.serve.protocol`.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import Response

from .. import __version__
from ..runtime import softmax
from .metrics import CONTENT_TYPE_LATEST
from .protocol import (
    EXTENSIONS, OFFLOAD_BYTES, SERVER_NAME, ApiError, decode_images, infer_response, json_response,
    parse_infer_request, read_body, short, tensor_meta,
)

__all__ = ['router']

router = APIRouter()


def _state(request: Request):
    return request.app.state.serve


# -- health / metadata --
@router.get('/v2/health/live')
async def live():
    return Response(status_code=200)


@router.get('/v2/health/ready')
async def ready(request: Request):
    state = _state(request)
    if state.draining:
        raise ApiError(503, 'server is shutting down')
    not_ready = sorted(n for n, e in state.entries.items() if not e.ready)
    ok = not not_ready if state.settings.strict_readiness else len(not_ready) < len(state.entries)
    if not ok:
        raise ApiError(400, f'models not ready: {not_ready}')
    return Response(status_code=200)


@router.get('/v2')
async def server_metadata():
    return json_response({'name': SERVER_NAME, 'version': __version__, 'extensions': EXTENSIONS})


def _entry(request: Request, name: str):
    """The ready model a route names; ``/versions/{version}`` routes pick that version (else: the served one)."""
    return _state(request).ready_entry(name, request.path_params.get('version'))


@router.get('/v2/models/{name}')
@router.get('/v2/models/{name}/versions/{version}')
async def model_metadata(request: Request, name: str) -> Response:
    entry = _entry(request, name)
    m = entry.model
    return json_response({
        'name': entry.name, 'versions': entry.versions, 'platform': 'onnxruntime_onnx',
        'inputs': [tensor_meta(m.input_name, entry.input_datatype, entry.input_shape)],
        'outputs': [tensor_meta(m.output_name, 'FP32', entry.output_shape)],
    })


@router.get('/v2/models/{name}/ready')
@router.get('/v2/models/{name}/versions/{version}/ready')
async def model_ready(request: Request, name: str) -> Response:
    _entry(request, name)
    return Response(status_code=200)


@router.get('/v2/models/{name}/config')
@router.get('/v2/models/{name}/versions/{version}/config')
async def model_config(request: Request, name: str) -> Response:
    state, entry = _state(request), _entry(request, name)
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
    return json_response(cfg)


@router.post('/v2/repository/index')
async def repository_index(request: Request):
    state = _state(request)
    return json_response([{'name': n, **({'version': e.version} if e.version else {}),
                   'state': 'READY' if e.ready else 'UNAVAILABLE', **({} if e.ready else {'reason': e.error})}
                  for n, e in sorted(state.entries.items())])


# -- inference --
@router.post('/v2/models/{name}/infer')
@router.post('/v2/models/{name}/versions/{version}/infer')
async def infer(request: Request, name: str) -> Response:
    state, entry = _state(request), _entry(request, name)
    body = await read_body(request, state.settings.max_body_bytes)
    mbs = state.batchers[entry.name].max_batch_size
    header_length = request.headers.get('inference-header-content-length')
    if len(body) > OFFLOAD_BYTES:
        req = await run_in_threadpool(parse_infer_request, entry, body, header_length, mbs)
    else:
        req = parse_infer_request(entry, body, header_length, mbs)
    try:
        x = entry.model.check_input(req.x)
    except ValueError as e:
        raise ApiError(400, f'input {entry.model.input_name!r}: {e}')
    y = await state.infer(entry, x)
    return infer_response(entry, req, y)


@router.post('/v2/models/{name}/classify')
@router.post('/v2/models/{name}/versions/{version}/classify')
async def classify(request: Request, name: str) -> Response:
    state, entry = _state(request), _entry(request, name)
    settings = state.settings
    num_classes = entry.model.num_classes
    raw_k = request.query_params.get('top_k', '5')
    try:
        top_k = int(raw_k)
    except ValueError:
        raise ApiError(400, f'top_k must be an integer, got {short(raw_k)!r}')
    if not 1 <= top_k <= num_classes:
        raise ApiError(400, f'top_k must be between 1 and {num_classes} (the number of classes), got {top_k}')
    body = await read_body(request, settings.max_body_bytes)
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
    images = await run_in_threadpool(decode_images, files, settings.max_image_pixels)
    x = await run_in_threadpool(entry.model.preprocess, images)
    probs = softmax(await state.infer(entry, x))
    results = []
    for (filename, _), p in zip(files, probs):
        top = np.argsort(-p, kind='stable')[:top_k]
        results.append({'filename': filename, 'predictions': [
            {'index': int(i), 'label': entry.labels[i] if entry.labels else str(int(i)),
             'probability': float(p[i])} for i in top]})
    return json_response({'model_name': entry.name, 'model_version': entry.version, 'top_k': top_k,
                  'results': results})


@router.get('/metrics')
async def metrics(request: Request):
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
