"""`sdzoo serve` as a process: JSON logs, a real request, SIGTERM finishing the in-flight one, clean errors."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading

import httpx
import numpy as np
import pytest

from serve_support import CIFAR10_LABELS, export_onnx, start_serve, wait_in_flight, write_entry

pytestmark = pytest.mark.skipif(sys.platform == 'win32', reason='POSIX signals')


def _sdzoo(*args: str) -> list:
    return [sys.executable, '-c', 'import sys; from sdzoo.cli import main; sys.exit(main())', *args]


@pytest.fixture(scope='module')
def repo(tmp_path_factory):
    onnx_file = export_onnx(tmp_path_factory.mktemp('onnx') / 'r20.onnx', labels=CIFAR10_LABELS)
    root = tmp_path_factory.mktemp('repo')
    write_entry(root, 'cifar', onnx_file, max_batch_size=8, delay_us=0)
    (root / 'broken' / '1').mkdir(parents=True)
    (root / 'broken' / '1' / 'model.onnx').write_bytes(b'junk')
    return root


def test_serve_process_logs_json_and_drains_on_sigterm(repo, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    # a 1.5 s batching window keeps the request in flight while SIGTERM arrives
    proc, url, lines, reader = start_serve(_sdzoo('serve', str(repo), '--max-queue-delay-us', '1500000',
                                                  '--intra-op-threads', '1', '--no-strict-readiness'),
                                           tmp_path / 'port', env=env)
    try:
        assert httpx.get(f'{url}/v2/health/ready', timeout=10).status_code == 200
        x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
        result = {}

        def call():
            result['r'] = httpx.post(f'{url}/v2/models/cifar/infer', timeout=30, json={'inputs': [{
                'name': 'input', 'shape': [1, 3, 32, 32], 'datatype': 'FP32', 'data': x.ravel().tolist()}]})
        t = threading.Thread(target=call)
        t.start()
        wait_in_flight(url)
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        # uvicorn re-raises the signal once it has shut down gracefully (exit by SIGTERM, as supervisors expect)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(10)
    assert result['r'].status_code == 200 and result['r'].json()['outputs'][0]['shape'] == [1, 10]

    records = [json.loads(line) for line in lines if line.startswith('{')]
    assert len(records) == len([line for line in lines if line.strip()]), 'every log line is JSON'
    failed = [r for r in records if r.get('event') == 'model_load_failed']
    assert [r['model'] for r in failed] == ['broken'] and failed[0]['level'] == 'ERROR' and failed[0]['error']
    access = [r for r in records if r.get('event') == 'access' and r['path'] == '/v2/models/cifar/infer']
    assert access and access[0]['status'] == 200 and access[0]['bytes_in'] > 0
    events = [r.get('event') for r in records]
    assert events.index('shutdown') > events.index('access')  # drained after serving the request


@pytest.mark.parametrize('args,needle', [
    (['/nonexistent/repo'], "model repository '/nonexistent/repo' is not a directory"),
    (['{repo}', '--models', 'nope'], "models ['nope'] not found in repository"),
    (['{repo}', '--max-batch-size', '0'], '--max-batch-size must be >= 1'),
])
def test_serve_cli_errors(repo, capsys, args, needle):
    import logging
    from sdzoo.cli import main
    loggers = [logging.getLogger(n) for n in ('sdzoo', 'uvicorn', 'uvicorn.error')]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        with pytest.raises(SystemExit) as e:
            main(['serve', *[a.format(repo=repo) for a in args]])
    finally:  # the serve command configures process-wide JSON logging
        for lg, (handlers, level, propagate) in zip(loggers, saved):
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'sdzoo serve: error:' in err and needle in err


def test_serve_fresh_clone_repository_names_the_export_command(repo_root, tmp_path, capsys):
    """A fresh clone's export/ holds config.pbtxt + labels.txt but no ONNX: refuse, print the exact command."""
    import logging
    import shutil
    from sdzoo.cli import main
    fresh = tmp_path / 'export'
    shutil.copytree(repo_root / 'export', fresh, ignore=shutil.ignore_patterns('*.onnx', '*.report.json'))
    loggers = [logging.getLogger(n) for n in ('sdzoo', 'uvicorn', 'uvicorn.error')]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        with pytest.raises(SystemExit) as e:
            main(['serve', str(fresh)])
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved):
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f'sdzoo export --repository {fresh}' in err and 'sd_resnet110' in err and len(err.splitlines()) == 1
