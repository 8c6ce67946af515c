"""Bad input gets a 4xx with ``{"error": ...}`` naming the problem, and the server keeps serving everyone."""
from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from sdzoo.serve.app import ServeSettings, create_app
from sdzoo.serve.repository import load_repository
from serve_support import CIFAR10_LABELS, ServerThread, export_onnx, png_bytes, write_entry

LIMIT = 256 * 1024  # request body limit of the server under test
GOOD = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)


def _tensor(**over):
    t = {'name': 'input', 'shape': [1, 3, 32, 32], 'datatype': 'FP32', 'data': GOOD.ravel().tolist()}
    t.update(over)
    return t


def _req(**over):
    return {'inputs': [_tensor(**over)]}


@pytest.fixture(scope='module')
def repo(tmp_path_factory, onnx_file):
    root = tmp_path_factory.mktemp('repo')
    write_entry(root, 'cifar', onnx_file, max_batch_size=8, delay_us=0)
    return root


@pytest.fixture(scope='module')
def server(repo):
    app = create_app(repo, ServeSettings(max_body_bytes=LIMIT), intra_op_num_threads=1)
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope='module')
def expected(onnx_file):
    session = ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])
    return session.run(['logits'], {'input': GOOD})[0]


def _post(server, path='/v2/models/cifar/infer', **kw):
    return httpx.post(server.url + path, timeout=30, **kw)


def _error(r, status: int, *needles: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    msg = r.json()['error']
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# --- request JSON -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('body,needles', [
    (b'{"inputs": [', ('malformed JSON',)),
    (b'\xff\xfe garbage', ('malformed JSON',)),
    (b'[1, 2, 3]', ('must be a JSON object', 'list')),
    (b'{}', ('"inputs"',)),
    (b'{"inputs": []}', ('"inputs"',)),
    (b'{"inputs": [1]}', ('"inputs"',)),
    (b'{"inputs": [{"name": "input"}], "id": 5}', ('"id" must be a string',)),
    (b'{"inputs": [{"name": "input"}], "parameters": []}', ('"parameters" must be a JSON object',)),
])
def test_malformed_request_json(server, body, needles):
    _error(_post(server, content=body, headers={'Content-Type': 'application/json'}), 400, *needles)


def test_unknown_model_and_version(server):
    _error(_post(server, '/v2/models/resnet9000/infer', json=_req()), 404, "unknown model 'resnet9000'", 'cifar')
    _error(httpx.get(f'{server.url}/v2/models/resnet9000'), 404, 'resnet9000')
    _error(httpx.get(f'{server.url}/v2/models/resnet9000/ready'), 404, 'resnet9000')
    _error(_post(server, '/v2/models/cifar/versions/7/infer', json=_req()), 404, "no version '7'", "['1']")


@pytest.mark.parametrize('over,needles', [
    ({'name': 'image'}, ("takes exactly one input 'input'", 'image')),
    ({'datatype': 'FP64'}, ("'FP64'", "'FP32'")),
    ({'datatype': 'FLOAT'}, ("'FLOAT'", 'FP32')),
    ({'shape': [3, 32, 32]}, ('[3, 32, 32]', '[-1, 3, 32, 32]')),
    ({'shape': [1, 3, 16, 16]}, ('[1, 3, 16, 16]', '[-1, 3, 32, 32]')),
    ({'shape': [1, 3, 32, -32]}, ('non-negative integers',)),
    ({'shape': '1x3x32x32'}, ('shape must be',)),
    ({'shape': [0, 3, 32, 32], 'data': []}, ('batch dimension must be >= 1',)),
    ({'shape': [9, 3, 32, 32]}, ('batch size 9 exceeds max_batch_size 8',)),
    ({'data': [0.5] * 10}, ('10 elements', '3072')),
    ({'data': ['a'] * 3072}, ('cannot be read as FP32',)),
    ({'data': [[1, 2], [3]]}, ('cannot be read as FP32',)),
    ({'data': None}, ('neither "data" nor',)),
])
def test_wrong_tensor(server, over, needles):
    _error(_post(server, json=_req(**over)), 400, *needles)


def test_two_inputs_and_unknown_output(server):
    body = {'inputs': [_tensor(), _tensor(name='extra', data=[0.0])]}
    _error(_post(server, json=body), 400, "exactly one input 'input'", 'extra')
    body = {'inputs': [_tensor()], 'outputs': [{'name': 'probs'}]}
    _error(_post(server, json=body), 400, "unknown output 'probs'", "'logits'")
    body = {'inputs': [_tensor()], 'outputs': [{'name': 'logits', 'parameters': {'classification': 11}}]}
    _error(_post(server, json=body), 400, 'classification must be an integer in [0, 10]')


# --- binary tensor extension --------------------------------------------------------------------------------

def _binary(raw: bytes, size: int, header_len=None):
    header = json.dumps({'inputs': [{'name': 'input', 'shape': [1, 3, 32, 32], 'datatype': 'FP32',
                                     'parameters': {'binary_data_size': size}}]}).encode()
    hl = str(len(header)) if header_len is None else header_len
    return dict(content=header + raw, headers={'Inference-Header-Content-Length': hl,
                                               'Content-Type': 'application/octet-stream'})


def test_binary_tensor_errors(server, expected):
    raw = GOOD.tobytes()
    r = _post(server, **_binary(raw, len(raw)))
    assert r.status_code == 200
    np.testing.assert_allclose(np.array(r.json()['outputs'][0]['data']).reshape(1, 10), expected, atol=1e-5)

    _error(_post(server, **_binary(raw, len(raw), header_len='abc')), 400, 'must be an integer', 'abc')
    _error(_post(server, **_binary(raw, len(raw), header_len='999999')), 400, 'does not fit')
    _error(_post(server, **_binary(raw[:-4], len(raw) - 4)), 400, 'binary_data_size is 12284 bytes', '12288')
    _error(_post(server, **_binary(raw[:-4], len(raw))), 400, 'declares 12288 bytes', '12284 bytes follow')
    _error(_post(server, **_binary(raw + b'\0' * 8, len(raw))), 400, '12296 bytes follow')
    no_header = _binary(raw, len(raw))
    del no_header['headers']['Inference-Header-Content-Length']
    _error(_post(server, **no_header), 400, 'malformed JSON')  # JSON followed by raw bytes


# --- body size / encoding -----------------------------------------------------------------------------------

def test_oversized_body_is_413(server):
    big = json.dumps(_req(data=[0.123456789] * 40000)).encode()
    assert len(big) > LIMIT
    _error(_post(server, content=big, headers={'Content-Type': 'application/json'}), 413,
           f'exceeds the limit of {LIMIT} bytes')

    def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(LIMIT // 16384 + 4):
            yield b' ' * 16384
    _error(_post(server, content=chunks()), 413, 'exceeds the limit')

    bomb = gzip.compress(b' ' * (4 * LIMIT))  # small on the wire, large once inflated
    assert len(bomb) < LIMIT
    _error(_post(server, content=bomb, headers={'Content-Encoding': 'gzip'}), 413, 'decompressed')
    _error(_post(server, content=b'not gzip', headers={'Content-Encoding': 'gzip'}), 400, 'not valid gzip')
    _error(_post(server, content=b'{}', headers={'Content-Encoding': 'br'}), 415, "'br'")


# --- image endpoint -----------------------------------------------------------------------------------------

def test_classify_bad_input(server):
    url = '/v2/models/cifar/classify'
    _error(_post(server, url, content=b'definitely not an image'), 400, 'request body is not a decodable image')
    _error(_post(server, url, content=b''), 400, 'request body is empty')
    _error(_post(server, url, content=png_bytes()[:200]), 400, 'not a decodable image')  # truncated PNG
    _error(_post(server, url, files=[('file', ('x.txt', b'hello', 'text/plain'))]), 400,
           "file 'x.txt' is not a decodable image")
    _error(_post(server, url, files={'field': (None, 'value')}), 400, 'no file part')  # multipart, no file
    for k, needle in (('abc', 'top_k must be an integer'), ('0', 'between 1 and 10'), ('11', 'got 11')):
        _error(_post(server, f'{url}?top_k={k}', content=png_bytes()), 400, needle)
    _error(_post(server, '/v2/models/nope/classify', content=png_bytes()), 404, "unknown model 'nope'")


def test_unknown_route_and_method(server):
    _error(httpx.get(f'{server.url}/v3/whatever'), 404, 'Not Found')
    _error(httpx.get(f'{server.url}/v2/models/cifar/infer'), 405, 'Method Not Allowed')


# --- abuse --------------------------------------------------------------------------------------------------

def test_concurrent_abuse_does_not_hurt_good_clients(server, expected):
    bad_bodies = [b'{', b'[]', json.dumps(_req(shape=[1, 3, 8, 8])).encode(), json.dumps(_req(datatype='INT8')).encode(),
                  b'x' * (LIMIT + 1)]

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as c:
            good = [c.post('/v2/models/cifar/infer', json=_req()) for _ in range(16)]
            bad = [c.post('/v2/models/cifar/infer', content=bad_bodies[i % len(bad_bodies)]) for i in range(40)]
            junk = [c.post('/v2/models/cifar/classify', content=b'\x00' * 512) for _ in range(8)]
            return await asyncio.gather(*good), await asyncio.gather(*bad), await asyncio.gather(*junk)

    good, bad, junk = asyncio.run(run())
    for r in good:
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()['outputs'][0]['data']).reshape(1, 10), expected, atol=1e-5)
    for r in bad + junk:
        assert 400 <= r.status_code < 500 and r.json()['error']
    assert httpx.get(f'{server.url}/v2/health/ready').status_code == 200


def test_full_queue_answers_503_with_retry_after(repo, expected):
    """A bounded queue: with the (real) model held busy, requests beyond the bound get 503 + Retry-After."""
    entries = load_repository(repo, intra_op_num_threads=1)
    model = entries['cifar'].model
    gate, running, run = threading.Event(), threading.Event(), model.run
    # the real model, held until the test releases it
    model.run = lambda x: (running.set(), gate.wait(30), run(x))[2]
    app = create_app(entries, ServeSettings(max_queue_size=2, max_batch_size=1))
    batcher = app.state.serve.batchers['cifar']
    with ServerThread(app) as s:
        results = []

        def call():
            results.append(httpx.post(f'{s.url}/v2/models/cifar/infer', json=_req(), timeout=60))

        threads = [threading.Thread(target=call) for _ in range(3)]
        threads[0].start()
        # the first request is in the (held) model before the others arrive: on a busy machine the
        # worker may otherwise not have taken it yet, and the third request finds the queue full
        assert running.wait(30)
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 30
        while batcher.queue_depth < 2 and time.monotonic() < deadline:  # 1 running (held) + 2 queued
            time.sleep(0.01)
        assert batcher.queue_depth == 2
        r = httpx.post(f'{s.url}/v2/models/cifar/infer', json=_req(), timeout=30)
        _error(r, 503, 'queue is full', 'retry later')
        assert r.headers['Retry-After'] == '1'
        gate.set()
        for t in threads:
            t.join(60)
        assert [x.status_code for x in results] == [200, 200, 200]
        for x in results:
            np.testing.assert_allclose(np.array(x.json()['outputs'][0]['data']).reshape(1, 10), expected, atol=1e-5)
        assert httpx.post(f'{s.url}/v2/models/cifar/infer', json=_req(), timeout=30).status_code == 200


def _strict_json(text: str):
    """Parse as standard JSON: NaN / Infinity are not JSON (Python's json would accept them)."""
    def refuse(token):
        raise ValueError(f'invalid JSON constant {token}')
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize('values,needles', [
    ('NaN', ('NaN or infinite', '3072 of 3072')),            # JSON NaN literals
    ('1e39', ('NaN or infinite',)),                          # finite in JSON, overflows float32
    ('3e38', ('NaN or infinite logits',)),                   # a float32, but the logits overflow
])
def test_non_finite_inputs_and_logits_are_400_with_valid_json(server, values, needles):
    body = ('{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": ['
            + ','.join([values] * 3072) + ']}]}').encode()
    r = _post(server, content=body, headers={'Content-Type': 'application/json'})
    assert r.status_code == 400, r.text
    for n in needles:
        assert n in _strict_json(r.text)['error']
    # the server keeps answering with valid JSON
    ok = _post(server, json=_req())
    assert ok.status_code == 200 and _strict_json(ok.text)['outputs'][0]['shape'] == [1, 10]
