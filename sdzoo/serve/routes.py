"""The server's endpoints: health, metadata, repository index, inference, classification and metrics.

Handlers find the served models in ``request.app.state.serve`` (a :class:`sdzoo.serve.app.ServerState`);
the wire format (parsing, encoding, errors) is :mod:`sdzoo.serve.protocol`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import Response

from .. import __version__
from ..runtime import softmax
from .metrics import CONTENT_TYPE_LATEST
from .protocol import (
    EXTENSIONS, OFFLOAD_BYTES, SERVER_NAME, SMALL_BODY_BYTES, ApiError, decode_batch, decode_charge,
    infer_response, json_response, open_images, parse_infer_request, parse_json_object, read_body, short,
    split_infer_body, tensor_meta,
)

__all__ = ['router']

router = APIRouter()


def _state(request: Request):
    return request.app.state.serve


# -- health / metadata --
@router.api_route('/v2/health/live', methods=['GET', 'HEAD'])
async def live():
    return Response(status_code=200)


@router.api_route('/v2/health/ready', methods=['GET', 'HEAD'])
async def ready(request: Request):
    state = _state(request)
    if state.draining:
        raise ApiError(503, 'server is shutting down')
    # a model unloaded through the repository API was taken out on purpose: it does not make the server unready
    served = {n: e for n, e in state.entries.items() if not e.unloaded}
    not_ready = sorted(n for n, e in served.items() if not e.ready)
    ok = not not_ready if state.settings.strict_readiness else len(not_ready) < len(served)
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


# -- model repository extension --
async def _repository_request(request: Request, what: str) -> Dict[str, Any]:
    """The optional JSON object of a repository request (Triton allows an empty body) and its parameters."""
    body = await read_body(request, _state(request).settings.max_body_bytes)
    req = parse_json_object(body, what) if body.strip() else {}
    if not isinstance(req.get('parameters', {}), dict):
        raise ApiError(400, f'{what} "parameters" must be a JSON object')
    return req


@router.post('/v2/repository/index')
async def repository_index(request: Request):
    ready_only = (await _repository_request(request, 'repository index request')).get('ready', False)
    if not isinstance(ready_only, bool):
        raise ApiError(400, f'repository index request "ready" must be true or false, got '
                            f'{type(ready_only).__name__}')
    return json_response(_state(request).repository_index(ready_only))


@router.post('/v2/repository/models/{name}/load')
async def repository_load(request: Request, name: str) -> Response:
    params = (await _repository_request(request, 'model load request')).get('parameters', {})
    unsupported = sorted(k for k in params if k == 'config' or k.startswith('file:'))
    if unsupported:
        raise ApiError(400, f'load parameters {unsupported} are not supported by this server: it loads the model '
                            f'directory as it is on disk')
    await _state(request).load(name)
    return Response(status_code=200)


@router.post('/v2/repository/models/{name}/unload')
async def repository_unload(request: Request, name: str) -> Response:
    params = (await _repository_request(request, 'model unload request')).get('parameters', {})
    if not isinstance(params.get('unload_dependents', False), bool):
        raise ApiError(400, 'unload parameter "unload_dependents" must be true or false')
    await _state(request).unload(name)  # no ensembles here: unload_dependents changes nothing
    return Response(status_code=200)


# -- inference --
async def _call(fn, *args):
    """``fn(*args)`` on the event loop, awaitable like ``run_in_threadpool(fn, *args)``."""
    return fn(*args)


@router.post('/v2/models/{name}/infer')
@router.post('/v2/models/{name}/versions/{version}/infer')
async def infer(request: Request, name: str) -> Response:
    state, entry = _state(request), _entry(request, name)
    body = await read_body(request, state.settings.max_body_bytes)
    mbs = state.batching_config(entry)[0]
    header_length = request.headers.get('inference-header-content-length')
    run = run_in_threadpool if len(body) > OFFLOAD_BYTES else _call
    parts = await run(split_infer_body, entry, body, header_length, mbs)
    # a large JSON header holds its parsing's memory in the server-wide work budget; small ones never wait
    async with state.work_budget.hold(parts.parse_bytes if len(parts.header) > SMALL_BODY_BYTES else 0):
        req = await run(parse_infer_request, entry, parts, mbs)
    try:
        x = entry.model.check_input(req.x)
    except ValueError as e:
        raise ApiError(400, f'input {entry.model.input_name!r}: {e}')
    y = await state.infer(entry, x)
    return infer_response(entry, req, y)


def _top_k(request: Request, num_classes: int) -> int:
    """``?top_k=``; without it min(5, classes), as ``sdzoo predict`` does."""
    raw_k = request.query_params.get('top_k')
    if raw_k is None:
        return min(5, num_classes)
    try:
        top_k = int(raw_k)
    except ValueError:
        raise ApiError(400, f'top_k must be an integer, got {short(raw_k)!r}')
    if not 1 <= top_k <= num_classes:
        raise ApiError(400, f'top_k must be between 1 and {num_classes} (the number of classes), got {top_k}')
    return top_k


async def _image_files(request: Request, limit: int, max_files: int,
                       model: str) -> List[Tuple[Optional[str], bytes]]:
    """(filename, bytes) of each uploaded image: the raw body, or the file parts of a multipart body (at most
    ``max_files``, the model's max_batch_size: the form parser stops at one more)."""
    body = await read_body(request, limit)
    if not request.headers.get('content-type', '').lower().startswith('multipart/form-data'):
        return [(None, body)]
    files = []
    try:
        async with request.form(max_files=max_files) as form:
            for _, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.append((value.filename or '', await value.read()))
    except HTTPException as e:
        if 'too many files' in str(e.detail).lower():
            raise ApiError(400, f'more than {max_files} image files in one request: model {model!r} takes at most '
                                f'max_batch_size {max_files} images per request')
        raise
    if not files:
        raise ApiError(400, 'multipart body has no file part; send the image as a file field')
    return files


@router.post('/v2/models/{name}/classify')
@router.post('/v2/models/{name}/versions/{version}/classify')
async def classify(request: Request, name: str) -> Response:
    state, entry = _state(request), _entry(request, name)
    settings = state.settings
    top_k = _top_k(request, entry.model.num_classes)
    mbs = state.batching_config(entry)[0]
    files = await _image_files(request, settings.max_body_bytes, mbs, entry.name)
    if len(files) > mbs:
        raise ApiError(400, f'{len(files)} images exceed max_batch_size {mbs} of model {entry.name!r}')
    opened = await run_in_threadpool(open_images, files, settings.max_image_pixels, settings.max_request_pixels)
    # images decode one at a time: the request holds its largest one; the server's decode budget bounds them all
    async with state.work_budget.hold(decode_charge(opened)):
        x = await run_in_threadpool(decode_batch, entry.model, opened)
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
