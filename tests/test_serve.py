"""`sdzoo serve` against NVIDIA's own tritonclient and plain HTTP: outputs equal a direct onnxruntime call."""
from __future__ import annotations

import gzip
import json
import logging
import time

import httpx
import numpy as np
import pytest

from sdzoo.runtime import OrtModel
from sdzoo.serve.app import JsonFormatter, ServeSettings, create_app
from serve_support import CIFAR10_LABELS, ServerThread, export_onnx, ort_reference, png_bytes, write_entry

tritonhttp = pytest.importorskip('tritonclient.http')
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope='module')
def repo(tmp_path_factory, onnx_file):
    root = tmp_path_factory.mktemp('repo')
    write_entry(root, 'cifar', onnx_file, max_batch_size=16, delay_us=2000)
    write_entry(root, 'multi', onnx_file, version=1, labels=None)
    write_entry(root, 'multi', onnx_file, version=3, labels=None)  # the latest version is served
    broken = root / 'broken' / '1'
    broken.mkdir(parents=True)
    (broken / 'model.onnx').write_bytes(b'this is not an onnx file')
    return root


@pytest.fixture(scope='module')
def server(repo):
    app = create_app(repo, ServeSettings(), intra_op_num_threads=1)
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope='module')
def reference(onnx_file):
    return ort_reference(onnx_file)


@pytest.fixture
def client(server):
    c = tritonhttp.InferenceServerClient(server.host_port, connection_timeout=30, network_timeout=30)
    yield c
    c.close()


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


# --- tritonclient -------------------------------------------------------------------------------------------

def test_tritonclient_health_and_model_ready(client):
    assert client.is_server_live()
    assert not client.is_server_ready()  # strict readiness: 'broken' did not load
    assert client.is_model_ready('cifar')
    assert client.is_model_ready('multi', model_version='3')
    assert not client.is_model_ready('multi', model_version='1')  # only the latest version is served
    assert not client.is_model_ready('broken')
    assert not client.is_model_ready('no_such_model')


def test_tritonclient_metadata_and_config(client):
    meta = client.get_server_metadata()
    assert meta['name'] == 'sdzoo'
    assert 'binary_tensor_data' in meta['extensions']

    m = client.get_model_metadata('cifar')
    assert m['name'] == 'cifar' and m['versions'] == ['1'] and m['platform'] == 'onnxruntime_onnx'
    assert m['inputs'] == [{'name': 'input', 'datatype': 'FP32', 'shape': [-1, 3, 32, 32]}]
    assert m['outputs'] == [{'name': 'logits', 'datatype': 'FP32', 'shape': [-1, 10]}]
    assert client.get_model_metadata('multi', model_version='3')['versions'] == ['3']

    cfg = client.get_model_config('cifar')  # values from cifar/config.pbtxt
    assert cfg['max_batch_size'] == 16
    assert cfg['dynamic_batching'] == {'max_queue_delay_microseconds': 2000}
    assert cfg['input'][0]['dims'] == [3, 32, 32] and cfg['output'][0]['dims'] == [10]

    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata('broken')
    assert e.value.status() == '400'
    assert 'broken' in e.value.message() and 'not ready' in e.value.message()

    index = {m['name']: m for m in client.get_model_repository_index()}
    assert index['cifar']['state'] == 'READY'
    assert index['broken']['state'] == 'UNAVAILABLE' and index['broken']['reason']


def test_tritonclient_binary_infer_matches_onnxruntime(client, reference):
    x = _x(3, seed=1)
    inp = tritonhttp.InferInput('input', list(x.shape), 'FP32')
    inp.set_data_from_numpy(x)  # binary by default
    result = client.infer('cifar', [inp], request_id='req-7')  # no outputs: binary_data_output
    assert result.get_response()['id'] == 'req-7'
    assert result.get_output('logits')['parameters']['binary_data_size'] == 3 * 10 * 4
    np.testing.assert_allclose(result.as_numpy('logits'), reference(x), rtol=1e-5, atol=1e-5)


def test_tritonclient_json_infer_and_versioned_route(client, reference):
    x = _x(2, seed=2)
    inp = tritonhttp.InferInput('input', list(x.shape), 'FP32')
    inp.set_data_from_numpy(x, binary_data=False)
    out = tritonhttp.InferRequestedOutput('logits', binary_data=False)
    result = client.infer('multi', [inp], model_version='3', outputs=[out])
    assert result.get_response()['model_version'] == '3'
    assert 'data' in result.get_output('logits')
    np.testing.assert_allclose(result.as_numpy('logits'), reference(x), rtol=1e-5, atol=1e-5)


def test_tritonclient_classification_extension(client, reference):
    x = _x(2, seed=3)
    inp = tritonhttp.InferInput('input', list(x.shape), 'FP32')
    inp.set_data_from_numpy(x)
    result = client.infer('cifar', [inp], outputs=[tritonhttp.InferRequestedOutput('logits', class_count=3)])
    got = result.as_numpy('logits')
    assert got.shape == (2, 3)
    ref = reference(x)
    for row, logits in zip(got, ref):
        top = np.argsort(-logits)[:3]
        parsed = [s.decode().split(':') for s in row]
        assert [int(p[1]) for p in parsed] == top.tolist()
        assert [p[2] for p in parsed] == [CIFAR10_LABELS[i] for i in top]
        np.testing.assert_allclose([float(p[0]) for p in parsed], logits[top], atol=1e-5)


def test_tritonclient_gzip_request_and_response(client, reference):
    x = _x(1, seed=4)
    inp = tritonhttp.InferInput('input', list(x.shape), 'FP32')
    inp.set_data_from_numpy(x)
    result = client.infer('cifar', [inp], request_compression_algorithm='gzip',
                          response_compression_algorithm='gzip')
    np.testing.assert_allclose(result.as_numpy('logits'), reference(x), rtol=1e-5, atol=1e-5)


# --- plain HTTP ---------------------------------------------------------------------------------------------

def test_httpx_json_tensor_nested_and_flat(server, reference):
    x = _x(2, seed=5)
    for data in (x.tolist(), x.ravel().tolist()):  # natural multi-dim and flattened forms
        r = httpx.post(f'{server.url}/v2/models/cifar/infer', timeout=30, json={
            'id': 'abc', 'inputs': [{'name': 'input', 'shape': [2, 3, 32, 32], 'datatype': 'FP32', 'data': data}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body['model_name'] == 'cifar' and body['model_version'] == '1' and body['id'] == 'abc'
        (out,) = body['outputs']
        assert out['name'] == 'logits' and out['datatype'] == 'FP32' and out['shape'] == [2, 10]
        np.testing.assert_allclose(np.array(out['data'], np.float32).reshape(2, 10), reference(x),
                                   rtol=1e-5, atol=1e-5)


def test_httpx_gzip_compressed_json(server, reference):
    x = _x(1, seed=6)
    body = gzip.compress(json.dumps({'inputs': [
        {'name': 'input', 'shape': [1, 3, 32, 32], 'datatype': 'FP32', 'data': x.ravel().tolist()}]}).encode())
    r = httpx.post(f'{server.url}/v2/models/cifar/infer', content=body, timeout=30,
                   headers={'Content-Encoding': 'gzip', 'Content-Type': 'application/json'})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()['outputs'][0]['data']).reshape(1, 10), reference(x), atol=1e-5)


def test_health_endpoints_plain_http(server):
    assert httpx.get(f'{server.url}/v2/health/live').status_code == 200
    r = httpx.get(f'{server.url}/v2/health/ready')
    assert r.status_code == 400 and 'broken' in r.json()['error']
    assert httpx.get(f'{server.url}/v2/models/cifar/versions/1/ready').status_code == 200
    r = httpx.get(f'{server.url}/v2/models/broken/ready')
    assert r.status_code == 400 and 'not ready' in r.json()['error']


def test_broken_entry_reports_its_load_error_and_others_serve(server, reference):
    x = _x(1, seed=7)
    payload = {'inputs': [{'name': 'input', 'shape': [1, 3, 32, 32], 'datatype': 'FP32', 'data': x.ravel().tolist()}]}
    r = httpx.post(f'{server.url}/v2/models/broken/infer', json=payload, timeout=30)
    assert r.status_code == 400
    assert "model 'broken' is not ready" in r.json()['error']
    assert 'protobuf' in r.json()['error'].lower()  # onnxruntime's own reason for refusing the file
    r = httpx.post(f'{server.url}/v2/models/cifar/infer', json=payload, timeout=30)
    assert r.status_code == 200


def test_non_strict_readiness(repo):
    with ServerThread(create_app(repo, ServeSettings(strict_readiness=False), models=['cifar', 'broken'],
                                 intra_op_num_threads=1)) as s:
        assert httpx.get(f'{s.url}/v2/health/ready').status_code == 200
        assert httpx.get(f'{s.url}/v2/models/broken/ready').status_code == 400


# --- image classification endpoint --------------------------------------------------------------------------

def test_classify_raw_image_matches_ortmodel_predict(server, onnx_file):
    from PIL import Image
    import io
    data = png_bytes(seed=11)
    r = httpx.post(f'{server.url}/v2/models/cifar/classify?top_k=3', content=data, timeout=30,
                   headers={'Content-Type': 'image/png'})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body['model_name'] == 'cifar' and body['top_k'] == 3
    (result,) = body['results']
    model = OrtModel(onnx_file, providers=['CPUExecutionProvider'])
    expected = model.predict([Image.open(io.BytesIO(data))], top_k=3)[0]
    assert [p['label'] for p in result['predictions']] == [label for label, _ in expected]
    np.testing.assert_allclose([p['probability'] for p in result['predictions']], [p for _, p in expected],
                               rtol=1e-5)
    assert [p['label'] for p in result['predictions']] == [CIFAR10_LABELS[p['index']] for p in result['predictions']]


def test_classify_multipart_several_files(server):
    files = [('file', ('a.png', png_bytes(seed=1), 'image/png')),
             ('file', ('b.jpg', png_bytes(seed=2, size=(64, 64), fmt='JPEG'), 'image/jpeg'))]
    r = httpx.post(f'{server.url}/v2/models/cifar/classify', files=files, timeout=30)
    assert r.status_code == 200, r.text
    results = r.json()['results']
    assert [res['filename'] for res in results] == ['a.png', 'b.jpg']
    for res in results:
        probs = [p['probability'] for p in res['predictions']]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


# --- operations ---------------------------------------------------------------------------------------------

def test_metrics_count_requests_errors_and_batches(server):
    from prometheus_client.parser import text_string_to_metric_families
    x = _x(1, seed=8)
    payload = {'inputs': [{'name': 'input', 'shape': [1, 3, 32, 32], 'datatype': 'FP32', 'data': x.ravel().tolist()}]}

    def samples():
        text = httpx.get(f'{server.url}/metrics').text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    before = samples()
    for _ in range(3):
        assert httpx.post(f'{server.url}/v2/models/cifar/infer', json=payload, timeout=30).status_code == 200
    assert httpx.post(f'{server.url}/v2/models/cifar/infer', content=b'{', timeout=30).status_code == 400
    after = samples()

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta('sdzoo_requests_total', model='cifar', endpoint='/v2/models/{name}/infer', code='200') == 3
    assert delta('sdzoo_request_errors_total', model='cifar', code='400') == 1
    assert delta('sdzoo_batch_size_count', model='cifar') == 3
    assert delta('sdzoo_inferred_items_total', model='cifar') == 3
    assert delta('sdzoo_inference_duration_seconds_count', model='cifar') == 3
    assert delta('sdzoo_queue_duration_seconds_count', model='cifar') == 3
    assert after[('sdzoo_model_ready', (('model', 'broken'),))] == 0
    assert after[('sdzoo_model_ready', (('model', 'cifar'),))] == 1


def test_access_log_is_structured_json(server):
    records = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Capture()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger('sdzoo.serve.access')
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        httpx.get(f'{server.url}/v2/models/cifar/ready?probe=1')
        httpx.get(f'{server.url}/v2/models/unknown_model')
        # the access line is written once the response has gone out: the client can be faster than that
        deadline = time.monotonic() + 10
        while (time.monotonic() < deadline
               and not all(any(p in r for r in records) for p in ('cifar/ready', 'unknown_model'))):
            time.sleep(0.01)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(r) for r in records]
    ok = next(d for d in lines if d['path'] == '/v2/models/cifar/ready')
    assert ok['status'] == 200 and ok['method'] == 'GET' and ok['model'] == 'cifar' and ok['query'] == 'probe=1'
    assert ok['endpoint'] == '/v2/models/{name}/ready' and ok['duration_ms'] >= 0 and ok['level'] == 'INFO'
    missing = next(d for d in lines if d['path'] == '/v2/models/unknown_model')
    assert missing['status'] == 404 and missing['model'] == '_unknown'


def test_readme_demo_serves_the_shipped_sd_resnet110(shipped_r110_repository, cifar_root):
    """The serving issue's done-when: the exported pretrained sd_resnet110, served, labels real images right
    through the image endpoint (what curl sends) and through tritonclient, like a direct onnxruntime call."""
    from PIL import Image
    files = [sorted((cifar_root / 'test' / c).glob('*.jpg'))[-1] for c in CIFAR10_LABELS]
    model = OrtModel(shipped_r110_repository / 'sd_resnet110' / '1' / 'model.onnx', providers=['CPUExecutionProvider'])
    expected = [top[0][0] for top in model.predict([Image.open(f) for f in files], top_k=1)]
    with ServerThread(create_app(shipped_r110_repository, ServeSettings(), intra_op_num_threads=1)) as s:
        got = []
        for f in files:
            r = httpx.post(f'{s.url}/v2/models/sd_resnet110/classify?top_k=3', content=f.read_bytes(), timeout=60)
            assert r.status_code == 200, r.text
            got.append(r.json()['results'][0]['predictions'][0]['label'])
        client = tritonhttp.InferenceServerClient(s.host_port, connection_timeout=60, network_timeout=60)
        try:
            x = model.preprocess([Image.open(f) for f in files])
            inp = tritonhttp.InferInput('input', list(x.shape), 'FP32')
            inp.set_data_from_numpy(x)
            top = client.infer('sd_resnet110', [inp], outputs=[
                tritonhttp.InferRequestedOutput('logits', class_count=1)]).as_numpy('logits')
        finally:
            client.close()
    via_triton = [row[0].decode().split(':')[2] for row in top]
    assert got == expected and via_triton == expected
    right = sum(label == f.parent.name for label, f in zip(got, files))
    assert right >= 6, f'{right}/10 held-out images right'
