"""Dynamic batching: concurrent requests share onnxruntime calls, each caller gets its own rows back."""
from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from sdzoo.runtime import OrtModel
from sdzoo.serve.app import ServeSettings, create_app
from sdzoo.serve.batching import DynamicBatcher, QueueFullError, ShuttingDownError
from serve_support import CIFAR10_LABELS, ServerThread, export_onnx, wait_in_flight, write_entry


@pytest.fixture(scope='module')
def model(onnx_file):
    return OrtModel(onnx_file, providers=['CPUExecutionProvider'], intra_op_num_threads=1)


def _inputs(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, 3, 32, 32)).astype(np.float32) for n in sizes]


def _run_batcher(batcher: DynamicBatcher, xs):
    async def go():
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(x) for x in xs))
        finally:
            await asyncio.get_running_loop().run_in_executor(None, batcher.close)
    return asyncio.run(go())


class _Batches:
    """Observer recording each batch the worker ran."""

    def __init__(self):
        self.sizes = []

    def __call__(self, size, queue_seconds, infer_seconds):
        assert len(queue_seconds) >= 1 and infer_seconds > 0
        self.sizes.append(size)


def test_requests_arriving_together_run_as_one_batch(model):
    xs = _inputs([1, 2, 1, 3, 1])
    seen = _Batches()
    # the batch closes as soon as it is full, so the long window costs nothing
    ys = _run_batcher(DynamicBatcher(model.run, max_batch_size=8, max_queue_delay=10.0, observer=seen), xs)
    assert seen.sizes == [8]
    for x, y in zip(xs, ys):  # each caller gets exactly its rows, equal to running it alone
        np.testing.assert_allclose(y, model.run(x), rtol=1e-5, atol=1e-5)


def test_max_batch_size_splits_without_breaking_requests(model):
    xs = _inputs([3, 3, 3, 3, 3], seed=1)
    seen = _Batches()
    ys = _run_batcher(DynamicBatcher(model.run, max_batch_size=8, max_queue_delay=0.5, observer=seen), xs)
    assert seen.sizes == [6, 6, 3]  # a request is never split across calls
    for x, y in zip(xs, ys):
        np.testing.assert_allclose(y, model.run(x), rtol=1e-5, atol=1e-5)


def test_batching_disabled_runs_each_request_alone(model):
    xs = _inputs([1, 2, 1], seed=2)
    seen = _Batches()
    ys = _run_batcher(DynamicBatcher(model.run, max_batch_size=8, max_queue_delay=0.2, enabled=False,
                                     observer=seen), xs)
    assert seen.sizes == [1, 2, 1]
    for x, y in zip(xs, ys):
        np.testing.assert_allclose(y, model.run(x), rtol=1e-5, atol=1e-5)


def test_oversized_request_full_queue_and_shutdown(model):
    gate, started = threading.Event(), threading.Event()

    def held_run(x):  # the real model, held until the test releases it
        started.set()
        gate.wait(30)
        return model.run(x)

    batcher = DynamicBatcher(held_run, max_batch_size=2, max_queue_size=1)
    (x1, x2, x3) = _inputs([1, 1, 1], seed=3)

    async def go():
        with pytest.raises(ShuttingDownError):  # not started yet
            await batcher.submit(x1)
        batcher.start()
        with pytest.raises(ValueError, match='batch size 3 exceeds max_batch_size 2'):
            await batcher.submit(_inputs([3])[0])
        first = asyncio.ensure_future(batcher.submit(x1))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)  # worker holds x1
        second = asyncio.ensure_future(batcher.submit(x2))  # fills the queue (bound 1)
        while batcher.queue_depth < 1:  # the task enqueues x2 at its first step: yield until it has
            await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match='queue is full'):
            await batcher.submit(x3)
        closing = asyncio.get_running_loop().run_in_executor(None, batcher.close, 30)
        while batcher.accepting:  # close() has begun on the executor thread
            await asyncio.sleep(0.001)
        with pytest.raises(ShuttingDownError):  # draining: no new work
            await batcher.submit(x3)
        gate.set()
        assert await closing  # drained and joined
        return await first, await second  # queued work still finished

    y1, y2 = asyncio.run(go())
    np.testing.assert_allclose(y1, model.run(x1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y2, model.run(x2), rtol=1e-5, atol=1e-5)


def test_model_failure_reaches_every_caller_of_the_batch(model):
    def failing(x):
        raise RuntimeError('device lost')
    with pytest.raises(RuntimeError, match='device lost'):
        _run_batcher(DynamicBatcher(failing, max_batch_size=8, max_queue_delay=0.05), _inputs([1, 1]))


# --- through HTTP -------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def repo(tmp_path_factory, onnx_file):
    root = tmp_path_factory.mktemp('repo')
    write_entry(root, 'cifar', onnx_file, max_batch_size=32, delay_us=200_000)
    return root


def _batch_stats(url):
    from prometheus_client.parser import text_string_to_metric_families
    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(f'{url}/metrics').text)}
    samples = {s.name: s.value for s in fams['sdzoo_batch_size'].samples if s.labels.get('model') == 'cifar'}
    return samples.get('sdzoo_batch_size_count', 0), samples.get('sdzoo_batch_size_sum', 0)


@pytest.mark.parametrize('batching', [True, False])
def test_http_concurrent_clients_are_batched(repo, model, batching):
    sizes = [1, 1, 4, 1, 1, 2, 1, 1]
    xs = _inputs(sizes, seed=4)
    # max_batch_size = all 12 items and a 60 s window: with batching the batch runs the moment it is full (one
    # call, whatever the machine's load), never by the clock
    app = create_app(repo, ServeSettings(batching=batching, max_batch_size=sum(sizes), max_queue_delay_us=60_000_000),
                     intra_op_num_threads=1)
    with ServerThread(app) as s:
        async def go():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
                return await asyncio.gather(*(c.post('/v2/models/cifar/infer', json={'inputs': [{
                    'name': 'input', 'shape': list(x.shape), 'datatype': 'FP32', 'data': x.ravel().tolist()}]})
                    for x in xs))
        rs = asyncio.run(go())
        count, total = _batch_stats(s.url)
    for x, r in zip(xs, rs):
        assert r.status_code == 200, r.text
        out = r.json()['outputs'][0]
        assert out['shape'] == [x.shape[0], 10]
        np.testing.assert_allclose(np.array(out['data']).reshape(out['shape']), model.run(x), rtol=1e-5, atol=1e-5)
    assert total == sum(sizes)
    if batching:
        assert count == 1  # every concurrent request shared the one call
    else:
        assert count == len(sizes)


def test_graceful_shutdown_finishes_in_flight_requests(repo, model):
    """uvicorn's shutdown waits for the request sitting in the batcher, then the lifespan drains it."""
    x = _inputs([1], seed=5)[0]
    app = create_app(repo, ServeSettings(max_queue_delay_us=1_000_000), intra_op_num_threads=1)
    batcher = app.state.serve.batchers['cifar']
    server = ServerThread(app).__enter__()
    result = {}

    def call():
        result['r'] = httpx.post(f'{server.url}/v2/models/cifar/infer', timeout=30, json={'inputs': [{
            'name': 'input', 'shape': [1, 3, 32, 32], 'datatype': 'FP32', 'data': x.ravel().tolist()}]})

    t = threading.Thread(target=call)
    t.start()
    wait_in_flight(server.url)  # the request now waits out its 1 s batching window
    server.stop()
    t.join(30)
    assert result['r'].status_code == 200  # shutdown waited for it: a dropped request has no response
    np.testing.assert_allclose(np.array(result['r'].json()['outputs'][0]['data']).reshape(1, 10), model.run(x),
                               rtol=1e-5, atol=1e-5)
    assert app.state.serve.draining and not batcher._thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f'{server.url}/v2/health/live', timeout=5)
