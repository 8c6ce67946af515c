"""The Open Inference Protocol's wire format as sdzoo serves it: request bodies (JSON tensors, Triton's
binary tensor data, gzip/deflate), inference and classification responses, errors, image uploads."""
from __future__ import annotations

import io
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ..data.images import orientation
from .repository import ModelEntry, numpy_dtype

__all__ = ['ApiError', 'SERVER_NAME', 'EXTENSIONS', 'OFFLOAD_BYTES', 'SMALL_BODY_BYTES', 'JSON_VALUE_BYTES',
           'DECODE_PIXEL_BYTES', 'DECODE_TURNED_PIXEL_BYTES', 'decode_charge', 'short', 'read_body',
           'parse_json_object', 'InferBody', 'split_infer_body',
           'parse_infer_request', 'json_value_limit', 'infer_response', 'open_images', 'decode_batch',
           'json_response', 'tensor_meta']

SERVER_NAME = 'sdzoo'
EXTENSIONS = ['binary_tensor_data', 'classification', 'model_configuration', 'model_repository']
OFFLOAD_BYTES = 1 << 20  # parse request bodies larger than this off the event loop
SMALL_BODY_BYTES = 64 << 10  # requests up to this size (a batch-1 inference) never wait for a server-wide budget
# what the work budget charges, measured (docs/reliability.md): json.loads makes ~36 B of Python objects per
# float (~34 B per counted bracket of nested lists); PIL decodes RGB at 4 B a pixel, converting other modes copies
# it once, and a picture turned upright by its EXIF tag is one more copy (36 M pixels, peak above the decoded image:
# RGB +0 / RGBA +4 B a pixel, turned +4 / +8)
JSON_VALUE_BYTES = 48
DECODE_PIXEL_BYTES = 8
DECODE_TURNED_PIXEL_BYTES = 12


class ApiError(HTTPException):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(status_code=status, detail=message, headers=headers)


def short(s: Any, n: int = 80) -> str:
    s = str(s)
    return s if len(s) <= n else s[:n] + '...'


# --- request bodies ------------------------------------------------------------------------------------------

async def read_body(request: Request, limit: int) -> bytes:
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
        raise ApiError(415, f'unsupported Content-Encoding {short(encoding)!r}; use gzip, deflate or none')
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
                            f'got {short(json.dumps(value))}')
    return value


_TOO_DEEP = ('malformed JSON in {what}: arrays/objects nested too deeply to parse (a tensor\'s "data" needs at '
             'most its rank + 1 levels)')


def parse_json_object(body: bytes, what: str) -> Dict[str, Any]:
    """``body`` as a JSON object, or a one-line 400 naming ``what`` (malformed, nested too deeply, not an object)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f'malformed JSON in {what}: {short(e, 200)}')
    except RecursionError:  # the C parser recurses per level: '[' x 100000 would otherwise be a 500
        raise ApiError(400, _TOO_DEEP.format(what=what))
    if not isinstance(obj, dict):
        raise ApiError(400, f'{what} must be a JSON object, got {type(obj).__name__}')
    return obj


def json_value_limit(entry: ModelEntry, max_batch_size: int) -> int:
    """Most JSON values an inference request for ``entry`` may hold: a full batch of elements, each item's
    nested lists (fewer than its elements), and room for the request's own fields."""
    return 2 * entry.item_elements * max_batch_size + 1024


@dataclass
class InferBody:
    """An inference request's JSON header and the binary tensor data after it, measured, not parsed yet."""
    header: bytes
    binary: memoryview
    has_header_length: bool
    values: int  # at most this many JSON values in the header

    @property
    def parse_bytes(self) -> int:
        """What parsing the header costs at most: its text, decoded, and the Python objects of its values."""
        return len(self.header) + JSON_VALUE_BYTES * self.values


def split_infer_body(entry: ModelEntry, body: bytes, header_length: Optional[str],
                     max_batch_size: int) -> InferBody:
    """The body split per Inference-Header-Content-Length, and 413 for a JSON header with more values than the
    model can take, before json.loads spends its objects on them: every value but the first of its
    array/object follows a comma, so commas + brackets + 1 bound them, counted in C."""
    header, binary = _split_body(body, header_length)
    values = header.count(b',') + header.count(b'[') + header.count(b'{') + 1
    limit = json_value_limit(entry, max_batch_size)
    if values > limit:
        raise ApiError(413, f'JSON inference request holds up to {values} values, above the limit of {limit} for '
                            f'model {entry.name!r} ({entry.item_elements} elements per item x max_batch_size '
                            f'{max_batch_size}); send fewer items, or the tensor as binary data')
    return InferBody(header, binary, header_length is not None, values)


def parse_infer_request(entry: ModelEntry, body: InferBody, max_batch_size: int) -> _InferRequest:
    """An Open Inference Protocol request (JSON, or JSON header + binary tensor) checked against the model."""
    try:
        return _parse_infer_request(entry, body, max_batch_size)
    except RecursionError:  # deep nesting that json.loads survived, met again by numpy or an error message
        raise ApiError(400, _TOO_DEEP.format(what='inference request'))


def _parse_infer_request(entry: ModelEntry, body: InferBody, max_batch_size: int) -> _InferRequest:
    model = entry.model
    req = _request_object(body.header)
    inputs = req.get('inputs')
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise ApiError(400, 'inference request needs "inputs": a non-empty list of tensor objects')
    names = [i.get('name') for i in inputs]
    if names != [model.input_name]:
        raise ApiError(400, f'model {entry.name!r} takes exactly one input {model.input_name!r}, '
                            f'got {short(names, 200)}')
    inp = inputs[0]
    shape = _input_shape(entry, inp, max_batch_size)
    x = _input_tensor(entry, inp, shape, body.binary, has_header_length=body.has_header_length)
    if x.dtype.kind == 'f' and not np.isfinite(x).all():  # NaN/Inf (or a value beyond the dtype's range)
        raise ApiError(400, f'input {model.input_name!r} holds NaN or infinite values ({int((~np.isfinite(x)).sum())} '
                            f'of {x.size}); send finite numbers')
    return _InferRequest(x=x, request_id=req.get('id'), outputs=_requested_outputs(entry, req.get('outputs')),
                         binary_output=bool(req.get('parameters', {}).get('binary_data_output', False)))


def _split_body(body: bytes, header_length: Optional[str]) -> Tuple[bytes, memoryview]:
    """The JSON header and the binary tensor data after it (binary extension)."""
    if header_length is None:
        return body, memoryview(b'')
    try:
        n = int(header_length)
    except ValueError:
        raise ApiError(400, f'Inference-Header-Content-Length must be an integer, got {short(header_length)!r}')
    if not 0 < n <= len(body):
        raise ApiError(400, f'Inference-Header-Content-Length {n} does not fit the {len(body)}-byte body')
    return body[:n], memoryview(body)[n:]


def _request_object(body: bytes) -> Dict[str, Any]:
    req = parse_json_object(body, 'inference request')
    request_id = req.get('id')
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(400, f'inference request "id" must be a string, got {type(request_id).__name__}')
    if not isinstance(req.get('parameters', {}), dict):
        raise ApiError(400, 'inference request "parameters" must be a JSON object')
    return req


def _input_shape(entry: ModelEntry, inp: Dict[str, Any], max_batch_size: int) -> List[int]:
    """The declared datatype and shape, checked against the model's before any data is read."""
    iname = entry.model.input_name
    datatype = inp.get('datatype')
    if datatype is None:
        raise ApiError(400, f'input {iname!r} has no "datatype"; the model takes {entry.input_datatype!r}')
    if datatype != entry.input_datatype:
        raise ApiError(400, f'input {iname!r} datatype {short(datatype)!r} does not match the model\'s '
                            f'{entry.input_datatype!r}')
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
    return shape


def _input_tensor(entry: ModelEntry, inp: Dict[str, Any], shape: List[int], binary: memoryview, *,
                  has_header_length: bool) -> np.ndarray:
    """The tensor from the binary data after the header, or from the JSON "data" list."""
    iname, datatype = entry.model.input_name, entry.input_datatype
    dtype = numpy_dtype(datatype)
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
        if not has_header_length:
            raise ApiError(400, 'binary tensor data needs the Inference-Header-Content-Length header')
        if len(binary) != size:
            raise ApiError(400, f'input {iname!r} declares {size} bytes of binary data but {len(binary)} bytes '
                                f'follow the JSON header')
        x = np.frombuffer(binary, dtype=dtype.newbyteorder('<'), count=count).astype(dtype, copy=False)
        return x.reshape(shape)
    if len(binary):
        raise ApiError(400, f'{len(binary)} bytes of binary data follow the JSON header but no input '
                            f'declares binary_data_size')
    data = inp.get('data')
    if data is None:
        raise ApiError(400, f'input {iname!r} has neither "data" nor parameters.binary_data_size')
    try:
        with np.errstate(over='ignore'):  # an out-of-range number becomes inf, refused by the caller
            arr = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise ApiError(400, f'input {iname!r} data cannot be read as {datatype}: {short(e, 200)}')
    if arr.size != count:
        raise ApiError(400, f'input {iname!r} has {arr.size} elements but shape {shape} needs {count}')
    return arr.reshape(shape)


def _requested_outputs(entry: ModelEntry, requested: Any) -> List[Tuple[str, Dict[str, Any]]]:
    """The outputs asked for (default: the logits), each with its parameters (``classification``: top k)."""
    model = entry.model
    if requested is None:
        return [(model.output_name, {})]
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ApiError(400, 'inference request "outputs" must be a list of objects')
    outputs: List[Tuple[str, Dict[str, Any]]] = []
    for o in requested:
        oname = o.get('name')
        if oname != model.output_name:
            raise ApiError(400, f'unknown output {short(oname)!r}; model {entry.name!r} has outputs '
                                f'[{model.output_name!r}]')
        oparams = o.get('parameters', {})
        if not isinstance(oparams, dict):
            raise ApiError(400, f'output {oname!r} "parameters" must be a JSON object')
        if 'shared_memory_region' in oparams:
            raise ApiError(400, 'the shared-memory extension is not supported by this server')
        k = oparams.get('classification', 0)
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= model.num_classes:
            raise ApiError(400, f'output {oname!r} classification must be an integer in '
                                f'[0, {model.num_classes}], got {short(k)}')
        outputs.append((oname, oparams))
    return outputs or [(model.output_name, {})]


def _classification_strings(y: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    top = np.argsort(-y, axis=1, kind='stable')[:, :k]
    out = np.empty(top.shape, dtype=object)
    for r, row in enumerate(top):
        for c, idx in enumerate(row):
            s = f'{y[r, idx]:f}:{idx}'
            out[r, c] = (s + f':{labels[idx]}' if labels else s).encode()
    return out


def infer_response(entry: ModelEntry, req: _InferRequest, y: np.ndarray) -> Response:
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

def open_images(files: Sequence[Tuple[Optional[str], bytes]], max_image_pixels: int,
                max_request_pixels: int) -> List[Tuple[str, Any]]:
    """``(what, image)`` per file, opened lazily: only the headers are read, so the pixel limits (per image and
    for the whole request) are checked before anything is decoded."""
    from PIL import Image, UnidentifiedImageError
    opened, total = [], 0
    for filename, data in files:
        what = f'file {filename!r}' if filename else 'request body'
        if not data:
            raise ApiError(400, f'{what} is empty; send an image file (PNG, JPEG, ...)')
        try:
            im = Image.open(io.BytesIO(data))  # lazy: the header gives the size, no pixel is decoded yet
        except UnidentifiedImageError:
            raise ApiError(400, f'{what} is not a decodable image (unknown or unsupported image format)')
        except Exception as e:  # noqa: BLE001 - PIL raises many types for undecodable data
            raise ApiError(400, f'{what} is not a decodable image ({type(e).__name__}: {short(e, 160)})')
        w, h = im.size
        if w * h > max_image_pixels:
            raise ApiError(400, f'{what} is a {w}x{h} image, above the limit of {max_image_pixels} pixels')
        total += w * h
        opened.append((what, im))
    if total > max_request_pixels:
        raise ApiError(413, f'the {len(opened)} images of this request hold {total} pixels, above the limit of '
                            f'{max_request_pixels} decoded pixels per request; send fewer or smaller images')
    return opened


def decode_charge(opened: Sequence[Tuple[str, Any]]) -> int:
    """Bytes the decode of the largest image of a request may take (images decode one at a time), from headers."""
    return max((DECODE_TURNED_PIXEL_BYTES if orientation(im) != 1 else DECODE_PIXEL_BYTES)
               * im.size[0] * im.size[1] for _, im in opened)


def decode_batch(model: Any, opened: Sequence[Tuple[str, Any]]) -> np.ndarray:
    """The model input for images from :func:`open_images`, decoded and preprocessed one at a time, so a
    request holds one decoded image at once (preprocessing is per image, so the batch is the same)."""
    parts = []
    for what, im in opened:
        try:
            im.load()  # decode now: a truncated file is the client's 400, not a preprocessing 500
        except Exception as e:  # noqa: BLE001 - PIL raises many types for undecodable data
            raise ApiError(400, f'{what} is not a decodable image ({type(e).__name__}: {short(e, 160)})')
        try:
            parts.append(model.preprocess([im]))
        finally:
            im.close()  # the decoded pixels go now, not when the request ends
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


# --- logging / middleware ------------------------------------------------------------------------------------


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(',', ':'), allow_nan=False), status_code=status,
                    media_type='application/json')


def tensor_meta(name: str, datatype: str, shape: List[int]) -> Dict[str, Any]:
    return {'name': name, 'datatype': datatype, 'shape': shape}
