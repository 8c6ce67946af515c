"""Bounded cost per request (nested/huge JSON, pixel and file budgets), classify's default top_k, HEAD on the
health routes and Triton's model repository extension (index, load, unload), on a real server and real models."""
from __future__ import annotations

import asyncio
import io
import shutil
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from sdzoo.runtime import OrtModel
from sdzoo.serve.app import ServeSettings, create_app
from serve_support import ServerThread, config_pbtxt, export_onnx, ort_reference, png_bytes, write_entry

tritonhttp = pytest.importorskip('tritonclient.http')
from tritonclient.utils import InferenceServerException  # noqa: E402

THREE = ['cat', 'dog', 'bird']
X = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)


def blank_png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG of any size, a few hundred KB on the wire (rows streamed through zlib)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0 + black pixels
    idat = b''.join(z.compress(row) for _ in range(height)) + z.flush()
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


@pytest.fixture(scope='module')
def three_class_onnx(tmp_path_factory):
    return export_onnx(tmp_path_factory.mktemp('onnx3') / 'r20c3.onnx', num_classes=3, labels=THREE, seed=1)


@pytest.fixture(scope='module')
def repo(tmp_path_factory, onnx_file, three_class_onnx):
    root = tmp_path_factory.mktemp('repo')
    write_entry(root, 'cifar', onnx_file, max_batch_size=64, delay_us=0)
    write_entry(root, 'small', onnx_file, max_batch_size=4, delay_us=0)
    write_entry(root, 'three', three_class_onnx, labels=THREE,
                config=config_pbtxt('three', max_batch_size=8, delay_us=0, num_classes=3))
    return root


@pytest.fixture(scope='module')
def server(repo):
    app = create_app(repo, ServeSettings(), intra_op_num_threads=1)  # the default limits, as `sdzoo serve` has them
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope='module')
def reference(onnx_file):
    return ort_reference(onnx_file)


def _error(r: httpx.Response, status: int, *needles: str) -> str:
    assert r.status_code == status, (r.status_code, r.text[:500])
    msg = r.json()['error']
    assert '\n' not in msg, msg  # one line, no traceback
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def _json_infer(x: np.ndarray) -> dict:
    return {'inputs': [{'name': 'input', 'shape': list(x.shape), 'datatype': 'FP32', 'data': x.tolist()}]}


# --- 5: deeply nested JSON ------------------------------------------------------------------------------------

def test_deeply_nested_json_is_a_one_line_400_and_the_connection_keeps_serving(server, reference):
    deep = b'[' * 100_000
    inner = b'{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": ' + deep + b'}]}'
    with httpx.Client(base_url=server.url, timeout=60) as c:  # one keep-alive connection throughout
        for path, body in (('/v2/models/cifar/infer', deep), ('/v2/models/cifar/infer', inner),
                           ('/v2/repository/index', deep), ('/v2/repository/models/cifar/unload', deep)):
            _error(c.post(path, content=body, headers={'Content-Type': 'application/json'}), 400,
                   'nested too deeply')
            r = c.post('/v2/models/cifar/infer', json=_json_infer(X[:1]))
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(np.array(r.json()['outputs'][0]['data']).reshape(1, 10), reference(X[:1]),
                                       rtol=1e-5, atol=1e-5)
        # nested just shallow enough for the parser, too deep for a tensor: still a one-line 4xx
        mid = b'{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": ' + \
            b'[' * 600 + b'0' + b']' * 600 + b'}]}'
        r = c.post('/v2/models/cifar/infer', content=mid, headers={'Content-Type': 'application/json'})
        assert 400 <= r.status_code < 500 and '\n' not in r.json()['error'], r.text[:300]
    assert httpx.get(f'{server.url}/v2/models/cifar/ready').status_code == 200


# --- 6: bounded cost per request ------------------------------------------------------------------------------

def test_json_request_is_bounded_by_the_models_input_times_max_batch_size(server, reference):
    zeros = b','.join([b'0'] * 2_000_000)  # 4 MB of JSON numbers for a 3072-element input
    body = b'{"inputs":[{"name":"input","shape":[1,3,32,32],"datatype":"FP32","data":[' + zeros + b']}]}'
    _error(httpx.post(f'{server.url}/v2/models/small/infer', content=body, timeout=60), 413,
           'above the limit of 25600', 'max_batch_size 4', "model 'small'")
    big = b'{"inputs":[{"name":"input","shape":[1,3,32,32],"datatype":"FP32","data":[' + \
        b','.join([b'0'] * 7_500_000) + b']}]}'  # the reported 15 MB request
    assert 14 << 20 < len(big) < 16 << 20
    _error(httpx.post(f'{server.url}/v2/models/cifar/infer', content=big, timeout=60), 413,
           'above the limit of 394240', 'max_batch_size 64')
    # a full batch, as nested lists (tritonclient's JSON form), is within the bound
    r = httpx.post(f'{server.url}/v2/models/small/infer', json=_json_infer(X), timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()['outputs'][0]['data']).reshape(4, 10), reference(X),
                               rtol=1e-5, atol=1e-5)


def test_classify_decoded_pixels_are_budgeted_across_all_images_of_a_request(server):
    png = blank_png(6000, 6000)  # 36 M pixels each: under the per-image limit, 144 M together
    assert len(png) < 200_000
    files = [('file', (f'{i}.png', png, 'image/png')) for i in range(4)]
    _error(httpx.post(f'{server.url}/v2/models/cifar/classify', files=files, timeout=120), 413,
           '144000000 pixels', 'limit of 40000000 decoded pixels per request')
    _error(httpx.post(f'{server.url}/v2/models/cifar/classify', content=blank_png(7000, 7000), timeout=60), 400,
           'above the limit of 40000000 pixels')
    assert httpx.get(f'{server.url}/v2/health/ready').status_code == 200


def test_classify_file_count_follows_the_models_max_batch_size(server, onnx_file):
    pngs = [png_bytes(seed=i, size=(36 + i % 5, 40)) for i in range(40)]
    files = [('file', (f'{i}.png', data, 'image/png')) for i, data in enumerate(pngs)]
    r = httpx.post(f'{server.url}/v2/models/cifar/classify?top_k=1', files=files, timeout=120)  # max_batch_size 64
    assert r.status_code == 200, r.text
    expected = OrtModel(onnx_file).predict([Image.open(io.BytesIO(d)) for d in pngs], top_k=1)
    got = [(res['filename'], res['predictions'][0]) for res in r.json()['results']]
    assert [f for f, _ in got] == [f'{i}.png' for i in range(40)]
    for (_, pred), ((label, prob),) in zip(got, expected):
        assert pred['label'] == label and abs(pred['probability'] - prob) < 1e-5
    _error(httpx.post(f'{server.url}/v2/models/small/classify', files=files[:5], timeout=60), 400,
           'max_batch_size 4', "model 'small'")
    _error(httpx.post(f'{server.url}/v2/models/small/classify', files=files, timeout=60), 400,
           'more than 4 image files', 'max_batch_size 4')


def test_budget_bounds_concurrent_work_in_arrival_order():
    from sdzoo.serve.app import Budget

    async def run():
        budget, peak, order = Budget(10), [0], []

        async def work(name: str, amount: int, seconds: float):
            async with budget.hold(amount):
                order.append(name)
                peak[0] = max(peak[0], budget.in_use)
                await asyncio.sleep(seconds)

        tasks = [asyncio.create_task(work('a', 6, 0.05))]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(work('b', 6, 0.01)), asyncio.create_task(work('c', 3, 0.01)),
                  asyncio.create_task(work('d', 50, 0.01))]  # above the whole budget: runs alone
        waiting = asyncio.create_task(work('gone', 5, 0))
        await asyncio.sleep(0.01)
        waiting.cancel()  # a client that leaves while waiting gives nothing away
        await asyncio.gather(*tasks)
        assert budget.in_use == 0 and peak[0] == 10  # 'd', cut to the whole budget, ran alone
        return order

    assert asyncio.run(run()) == ['a', 'b', 'c', 'd']


def test_small_work_budget_still_serves_concurrent_classify_requests(repo):
    """A work budget below one image's decode cost: each upload decodes alone, every one is answered."""
    app = create_app(repo, ServeSettings(max_work_bytes=2000), models=['cifar'], intra_op_num_threads=1)
    with ServerThread(app) as s:
        async def run():
            async with httpx.AsyncClient(base_url=s.url, timeout=120) as c:
                return await asyncio.gather(*(c.post('/v2/models/cifar/classify', content=png_bytes(seed=i))
                                              for i in range(12)))
        for r in asyncio.run(run()):
            assert r.status_code == 200, r.text
        assert app.state.serve.work_budget.in_use == 0


def test_large_bodies_wait_for_the_server_budgets_and_all_get_answered(repo, reference):
    """Body and work budgets of one byte: every large request (here 8 x 3x32x32 as JSON, ~500 KB) is read and
    parsed alone, the small one never waits, none is lost."""
    app = create_app(repo, ServeSettings(max_large_body_bytes=1, max_work_bytes=1), models=['cifar'],
                     intra_op_num_threads=1)
    xs = np.random.default_rng(5).standard_normal((6, 8, 3, 32, 32)).astype(np.float32)
    with ServerThread(app) as s:
        async def run():
            async with httpx.AsyncClient(base_url=s.url, timeout=120) as c:
                return await asyncio.gather(*(c.post('/v2/models/cifar/infer', json=_json_infer(x)) for x in xs),
                                            c.post('/v2/models/cifar/infer', json=_json_infer(X[:1])))
        answers = asyncio.run(run())
        for x, r in zip(list(xs) + [X[:1]], answers):
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(np.array(r.json()['outputs'][0]['data']).reshape(len(x), 10), reference(x),
                                       rtol=1e-5, atol=1e-5)
        assert app.state.serve.body_budget.in_use == 0 and app.state.serve.work_budget.in_use == 0


# --- 7: classify's default top_k ------------------------------------------------------------------------------

def test_classify_without_top_k_defaults_to_at_most_the_number_of_classes(server, three_class_onnx):
    png = png_bytes(seed=3)
    r = httpx.post(f'{server.url}/v2/models/three/classify', content=png, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body['top_k'] == 3
    expected = OrtModel(three_class_onnx).predict([Image.open(io.BytesIO(png))], top_k=3)[0]
    assert [(p['label'], round(p['probability'], 5)) for p in body['results'][0]['predictions']] == \
        [(label, round(prob, 5)) for label, prob in expected]
    # docs/serving.md's multipart example, on the 3-class model
    r = httpx.post(f'{server.url}/v2/models/three/classify', timeout=60,
                   files=[('file', ('cat.png', png, 'image/png')), ('file', ('dog.jpg', png_bytes(4, fmt='JPEG'),
                                                                           'image/jpeg'))])
    assert r.status_code == 200, r.text
    assert [len(res['predictions']) for res in r.json()['results']] == [3, 3]
    assert sorted(p['label'] for p in r.json()['results'][1]['predictions']) == sorted(THREE)
    r = httpx.post(f'{server.url}/v2/models/cifar/classify', content=png, timeout=60)  # 10 classes: 5
    assert r.status_code == 200 and r.json()['top_k'] == 5 and len(r.json()['results'][0]['predictions']) == 5
    _error(httpx.post(f'{server.url}/v2/models/three/classify?top_k=4', content=png, timeout=60), 400,
           'between 1 and 3')


# --- 8: HEAD on health, the model repository extension ---------------------------------------------------------

def test_head_on_the_health_routes(server):
    for path in ('/v2/health/live', '/v2/health/ready'):
        r = httpx.head(server.url + path, timeout=30)
        assert r.status_code == 200 and r.content == b''


@pytest.fixture
def repo_server(tmp_path, onnx_file):
    write_entry(tmp_path, 'cifar', onnx_file, max_batch_size=8, delay_us=0)
    write_entry(tmp_path, 'other', onnx_file, max_batch_size=8, delay_us=0)
    app = create_app(tmp_path, ServeSettings(), intra_op_num_threads=1)
    with ServerThread(app) as s:
        yield s, tmp_path


def _states(client) -> dict:
    return {m['name']: (m['state'], m.get('reason', '')) for m in client.get_model_repository_index()}


def _infer(client, model: str, x: np.ndarray) -> np.ndarray:
    inp = tritonhttp.InferInput('input', list(x.shape), 'FP32')
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy('logits')


def test_model_repository_index_load_unload(repo_server, onnx_file, reference):
    s, root = repo_server
    client = tritonhttp.InferenceServerClient(s.host_port, connection_timeout=60, network_timeout=60)
    assert 'model_repository' in client.get_server_metadata()['extensions']
    assert _states(client) == {'cifar': ('READY', ''), 'other': ('READY', '')}

    client.unload_model('cifar')
    assert not client.is_model_ready('cifar') and client.is_model_ready('other')
    assert _states(client)['cifar'] == ('UNAVAILABLE', 'unloaded')
    with pytest.raises(InferenceServerException) as e:
        _infer(client, 'cifar', X[:1])
    assert e.value.status() == '400' and 'unloaded' in e.value.message()
    _error(httpx.post(f'{s.url}/v2/models/cifar/classify', content=png_bytes(), timeout=30), 400, 'unloaded')
    assert client.is_server_ready()  # an unloaded model was taken out on purpose
    assert httpx.head(f'{s.url}/v2/health/ready').status_code == 200
    r = httpx.post(f'{s.url}/v2/repository/index', json={'ready': True})
    assert [m['name'] for m in r.json()] == ['other']
    client.unload_model('cifar')  # unloading again is fine

    client.load_model('cifar')
    assert client.is_model_ready('cifar') and _states(client)['cifar'] == ('READY', '')
    np.testing.assert_allclose(_infer(client, 'cifar', X[:2]), reference(X[:2]), rtol=1e-5, atol=1e-5)

    # a directory added after start is listed, then served once loaded
    write_entry(root, 'later', onnx_file, max_batch_size=8, delay_us=0)
    assert _states(client)['later'] == ('UNAVAILABLE', 'not loaded')
    assert not client.is_model_ready('later')
    client.load_model('later')
    np.testing.assert_allclose(_infer(client, 'later', X[:1]), reference(X[:1]), rtol=1e-5, atol=1e-5)

    # a broken new version: the reload fails with its error, the served version keeps serving
    (root / 'cifar' / '2').mkdir()
    (root / 'cifar' / '2' / 'model.onnx').write_bytes(b'not an onnx file')
    with pytest.raises(InferenceServerException) as e:
        client.load_model('cifar')
    assert e.value.status() == '400' and 'failed to load' in e.value.message() and 'keeps serving' in e.value.message()
    np.testing.assert_allclose(_infer(client, 'cifar', X[:1]), reference(X[:1]), rtol=1e-5, atol=1e-5)
    shutil.rmtree(root / 'cifar' / '2')

    # a broken entry that was not served: UNAVAILABLE with the reason
    (root / 'bad' / '1').mkdir(parents=True)
    (root / 'bad' / '1' / 'model.onnx').write_bytes(b'not an onnx file')
    with pytest.raises(InferenceServerException) as e:
        client.load_model('bad')
    assert e.value.status() == '400' and 'failed to load' in e.value.message()
    state, reason = _states(client)['bad']
    assert state == 'UNAVAILABLE' and 'onnxruntime' in reason

    for name in ('nope', '.hidden'):
        _error(httpx.post(f'{s.url}/v2/repository/models/{name}/load', timeout=30), 404, 'no such directory')
    with pytest.raises(InferenceServerException) as e:
        client.unload_model('nope')
    assert e.value.status() == '404'
    _error(httpx.post(f'{s.url}/v2/repository/models/cifar/load', json={'parameters': {'config': '{}'}}), 400,
           'not supported')
    _error(httpx.post(f'{s.url}/v2/repository/index', json={'ready': 'yes'}), 400, '"ready"')
    client.close()


def test_reload_under_load_answers_every_request(repo_server, reference):
    s, _ = repo_server

    async def run():
        async with httpx.AsyncClient(base_url=s.url, timeout=120) as c:
            async def one(i: int):
                return i, await c.post('/v2/models/cifar/infer', json=_json_infer(X[i % 4:i % 4 + 1]))

            async def reloads():
                out = []
                for _ in range(2):
                    out.append(await c.post('/v2/repository/models/cifar/load'))
                    await asyncio.sleep(0.05)
                return out
            return await asyncio.gather(reloads(), *(one(i) for i in range(40)))

    loads, *answers = asyncio.run(run())
    assert [r.status_code for r in loads] == [200, 200], [r.text for r in loads]
    codes = [r.status_code for _, r in answers]
    assert set(codes) <= {200, 503}, codes
    for i, r in answers:
        if r.status_code == 200:
            np.testing.assert_allclose(np.array(r.json()['outputs'][0]['data']).reshape(1, 10),
                                       reference(X[i % 4:i % 4 + 1]), rtol=1e-5, atol=1e-5)
        else:
            assert r.headers['Retry-After'] == '1' and 'reloaded' in r.json()['error']
    r = httpx.post(f'{s.url}/v2/models/cifar/infer', json=_json_infer(X[:1]), timeout=60)
    assert r.status_code == 200
    assert 'sdzoo_model_ready{model="cifar"} 1.0' in httpx.get(f'{s.url}/metrics').text


def test_a_picture_turned_by_its_exif_tag_is_charged_for_the_extra_copy():
    """Turning a tagged picture upright makes one more full-size image while it decodes (36 M pixels: 8 B a
    pixel at the peak instead of 4 for RGB, 12 instead of 8 for RGBA), so the decode budget charges it 12 B a pixel
    instead of 8, read from the header before any pixel is decoded."""
    from sdzoo.data.images import EXIF_ORIENTATION
    from sdzoo.serve.protocol import DECODE_PIXEL_BYTES, DECODE_TURNED_PIXEL_BYTES, decode_charge, open_images
    img = Image.new('RGB', (300, 200), (10, 20, 30))
    plain, tagged = io.BytesIO(), io.BytesIO()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    img.save(plain, 'JPEG')
    img.save(tagged, 'JPEG', exif=exif)
    opened = open_images([('plain.jpg', plain.getvalue()), ('tagged.jpg', tagged.getvalue())], 10 ** 6, 10 ** 7)
    assert decode_charge(opened[:1]) == DECODE_PIXEL_BYTES * 60000
    assert decode_charge(opened) == DECODE_TURNED_PIXEL_BYTES * 60000 > DECODE_PIXEL_BYTES * 60000
    assert all(im.tile for _, im in opened)  # the charge read headers only: nothing decoded yet (tiles still due)
