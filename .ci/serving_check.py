"""Serving without PyTorch, checked end to end (issue 47). Runs inside the torch-free venv that .ci/serving_env.sh
builds from the project's wheel with only the [cpu,serve] extras:

    python .ci/serving_check.py REPOSITORY ENTRY IMAGE [--json OUT]

It proves that torch cannot be imported there, starts the installed ``sdzoo serve REPOSITORY`` on a port the
kernel picks, checks that the server process maps no libtorch, and compares what it answers (the classify route and
an Open Inference Protocol infer request) with the same fp32 ONNX file run directly through onnxruntime. It also
prints the figures docs/serving.md quotes: seconds to ready and the server's idle RSS.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np


def _post(url: str, body: bytes, content_type: str) -> dict:
    req = urllib.request.Request(url, data=body, headers={'Content-Type': content_type}, method='POST')
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except OSError:
        return 0


def _rss_mib(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def _start(repository: str) -> tuple:
    """The installed `sdzoo serve` on port 0; its bound port from --port-file; seconds to ready."""
    exe = str(Path(sys.executable).with_name('sdzoo'))
    t0 = time.perf_counter()
    port_file = Path(tempfile.mkdtemp(prefix='sdzoo-serve-')) / 'port'
    proc = subprocess.Popen([exe, 'serve', repository, '--host', '127.0.0.1', '--port', '0', '--port-file',
                             str(port_file)], stderr=open(port_file.with_name('serve.log'), 'w'))
    deadline = time.monotonic() + 120
    while not (port_file.is_file() and port_file.read_text().endswith('\n')):
        if proc.poll() is not None:
            raise SystemExit(f'sdzoo serve exited with {proc.returncode} before it listened: '
                             f'{port_file.with_name("serve.log").read_text()[-2000:]}')
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit('sdzoo serve wrote no --port-file within 120 s')
        time.sleep(0.02)
    port = int(port_file.read_text())
    base = f'http://127.0.0.1:{port}'
    while _status(f'{base}/v2/health/ready') != 200:
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit('sdzoo serve never became ready')
        time.sleep(0.05)
    return proc, base, time.perf_counter() - t0


def _sdzoo(*argv: str) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name('sdzoo'))
    return subprocess.run([exe, *argv], capture_output=True, text=True, timeout=120)


def _check_one_line_errors(repository: str) -> None:
    """What needs torch says so in one line, naming the extra to install; so does a repository of .pt files."""
    r = _sdzoo('train', 'sd_resnet20', '--data', 'cifar10', '--epochs', '1')
    assert r.returncode == 2 and "pip install 'sdzoo[torch]'" in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / 'mine' / '1').mkdir(parents=True)
        (Path(tmp) / 'mine' / '1' / 'model.pt').write_bytes(b'not onnx')
        r = _sdzoo('serve', tmp)
        assert r.returncode == 2 and 'mine/1/model.pt is a PyTorch file' in r.stderr, r.stderr
        assert 'Traceback' not in r.stderr


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('repository')
    ap.add_argument('entry')
    ap.add_argument('image')
    ap.add_argument('--json', default=None)
    args = ap.parse_args()
    assert importlib.util.find_spec('torch') is None, 'torch is importable: this venv is not torch-free'
    import sdzoo.runtime  # noqa: F401  (the serving package's own runtime imports no torch either)
    assert 'torch' not in sys.modules
    from PIL import Image
    from sdzoo.runtime import OrtModel

    _check_one_line_errors(args.repository)
    onnx_file = Path(args.repository) / args.entry / '1' / 'model.onnx'
    direct = OrtModel(onnx_file)
    x = direct.preprocess([Image.open(args.image)])
    logits = direct.run(x)
    expected = direct.predict(x, top_k=3)[0]

    proc, base, ready_s = _start(args.repository)
    try:
        maps = Path(f'/proc/{proc.pid}/maps').read_text()
        assert 'libtorch' not in maps, 'the server process has libtorch mapped'
        time.sleep(1.0)
        idle_mib = _rss_mib(proc.pid)
        got = _post(f'{base}/v2/models/{args.entry}/classify?top_k=3', Path(args.image).read_bytes(),
                    'application/octet-stream')
        pred = got['results'][0]['predictions']
        labels = [p['label'] for p in pred]
        assert labels == [lab for lab, _ in expected], (labels, expected)
        for p, (_, prob) in zip(pred, expected):
            assert abs(p['probability'] - prob) < 1e-5, (p, prob)
        body = {'inputs': [{'name': direct.input_name, 'shape': list(x.shape), 'datatype': 'FP32',
                            'data': x.ravel().tolist()}]}
        out = _post(f'{base}/v2/models/{args.entry}/infer', json.dumps(body).encode(), 'application/json')
        served = np.asarray(out['outputs'][0]['data'], dtype=np.float32).reshape(logits.shape)
        assert np.abs(served - logits).max() < 1e-5, np.abs(served - logits).max()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    record = {'ready_seconds': round(ready_s, 2), 'idle_rss_mib': round(idle_mib, 1), 'top3': labels,
              'max_abs_logit_difference': float(np.abs(served - logits).max())}
    print('torch-free serving check passed:', json.dumps(record))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
