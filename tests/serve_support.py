"""Helpers for the serving tests: a tiny exported model, repository entries and a real uvicorn server."""
from __future__ import annotations

import io
import json
import threading
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

CIFAR10_LABELS = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def export_onnx(path: Path, model_name: str = 'sd_resnet20', num_classes: int = 10,
                labels: Sequence[str] = (), seed: int = 0) -> Path:
    """Randomly initialised eval-mode sdzoo model -> ONNX (``input`` -> ``logits``, dynamic batch) with the
    contract's ``sdzoo.*`` metadata."""
    import onnx
    import timm
    import torch
    import sdzoo  # noqa: F401  (registers the models)
    torch.manual_seed(seed)
    model = timm.create_model(model_name, num_classes=num_classes).eval()
    cfg = model.pretrained_cfg
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (torch.zeros(1, *cfg['input_size']),), str(path), input_names=['input'],
                          output_names=['logits'], dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}},
                          dynamo=False)
    proto = onnx.load(str(path))
    meta = {
        'sdzoo.model': model_name, 'sdzoo.tag': '', 'sdzoo.mean': json.dumps(list(cfg['mean'])),
        'sdzoo.std': json.dumps(list(cfg['std'])), 'sdzoo.input_size': json.dumps(list(cfg['input_size'])),
        'sdzoo.labels': json.dumps(list(labels)), 'sdzoo.preprocess': '0', 'sdzoo.precision': 'fp32',
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    return path


def config_pbtxt(name: str, max_batch_size: int = 64, delay_us: Optional[int] = 0,
                 dims: Sequence[int] = (3, 32, 32), num_classes: int = 10, labels: bool = True) -> str:
    """A config.pbtxt as the runtime contract describes it."""
    batching = ('' if delay_us is None else
                f'dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n')
    label = '\n    label_filename: "labels.txt"' if labels else ''
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            f'input [\n  {{\n    name: "input"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, dims))} ]\n'
            f'  }}\n]\n'
            f'output [\n  {{\n    name: "logits"\n    data_type: TYPE_FP32\n    dims: [ {num_classes} ]{label}\n'
            f'  }}\n]\n'
            f'{batching}instance_group [\n  {{\n    kind: KIND_GPU\n    count: 1\n  }}\n]\n')


def write_entry(root: Path, name: str, onnx_file: Path, *, version: int = 1, max_batch_size: int = 64,
                delay_us: Optional[int] = 0, labels: Optional[Sequence[str]] = CIFAR10_LABELS,
                config: Optional[str] = None) -> Path:
    """``root/name/{config.pbtxt, labels.txt, <version>/model.onnx}``."""
    entry = root / name
    (entry / str(version)).mkdir(parents=True, exist_ok=True)
    (entry / str(version) / 'model.onnx').write_bytes(Path(onnx_file).read_bytes())
    if labels is not None:
        (entry / 'labels.txt').write_text('\n'.join(labels) + '\n')
    (entry / 'config.pbtxt').write_text(
        config if config is not None else config_pbtxt(name, max_batch_size, delay_us, labels=labels is not None))
    return entry


def ort_reference(onnx_file: Path):
    """A plain onnxruntime session on the same file, as a function of the input batch: what a server must reproduce."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])
    return lambda x: session.run(['logits'], {'input': x})[0]


def png_bytes(seed: int = 0, size=(40, 48), fmt: str = 'PNG') -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def wait_in_flight(url: str, count: int = 1, timeout: float = 30.0) -> None:
    """Block until the server at ``url`` is handling ``count`` requests besides this metrics scrape."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f'{url}/metrics', timeout=10).text
        value = next(s.value for f in text_string_to_metric_families(text) if f.name == 'sdzoo_requests_in_flight'
                     for s in f.samples)
        if value >= count + 1:
            return
        time.sleep(0.02)
    raise TimeoutError(f'{count} request(s) did not reach {url} in {timeout} s')


def start_serve(argv: Sequence[str], port_file: Path, *, env: Optional[dict] = None, stdout=None,
                timeout: float = 120.0, ready: bool = True):
    """``argv`` (an ``sdzoo serve ...`` command line) started with ``--port 0 --port-file port_file``; returns
    ``(process, url, stderr lines (appended as they come), their reader thread)`` once the port is known and, with ``ready``,
    ``/v2/health/ready`` answers 200: no free-port race, no log parsing, no sleeps."""
    import subprocess
    import httpx
    proc = subprocess.Popen([*argv, '--port', '0', '--port-file', str(port_file)], stdout=stdout,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list = []

    def pump():
        for line in proc.stderr:
            lines.append(line)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while not (port_file.is_file() and port_file.read_text().endswith('\n')):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f'sdzoo serve wrote no port file (exit {proc.poll()}):\n{"".join(lines)}')
            time.sleep(0.02)
        url = f'http://127.0.0.1:{int(port_file.read_text())}'
        while ready:
            try:
                if httpx.get(f'{url}/v2/health/ready', timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f'sdzoo serve never became ready (exit {proc.poll()}):\n{"".join(lines)}')
            time.sleep(0.02)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, url, lines, reader


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 with an OS-chosen port, in a background thread.

    ``with ServerThread(app) as s: s.url`` ... on exit it asks uvicorn to shut down gracefully and joins.
    """

    def __init__(self, app, timeout: float = 30.0):
        import uvicorn
        self.config = uvicorn.Config(app, host='127.0.0.1', port=0, log_config=None, access_log=False,
                                     lifespan='on', timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(self.config)
        self.timeout = timeout
        self.thread = threading.Thread(target=self.server.run, name='uvicorn-test', daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}'

    @property
    def host_port(self) -> str:
        return f'127.0.0.1:{self.port}'

    def __enter__(self) -> 'ServerThread':
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError('uvicorn exited during startup')
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError('uvicorn did not start in time')
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout)
        if self.thread.is_alive():
            raise RuntimeError('uvicorn did not shut down in time')

    def __exit__(self, *exc) -> None:
        self.stop()
