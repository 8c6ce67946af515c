"""Serving throughput and latency under concurrent load, dynamic batching on vs off vs raw onnxruntime.

Starts ``sdzoo serve`` as a subprocess on 127.0.0.1 (OS-chosen port) and drives it from this process with a
bounded load generator: C concurrent keep-alive clients share a fixed budget of batch-1 requests
(3x32x32 FP32, Triton's binary tensor format). In the same run it measures raw onnxruntime throughput on
the same ONNX file (batch 1 and batch ``--max-batch-size``), and reports each server configuration as
a fraction of the raw batched throughput (target: >= 80 % at 64 clients with batching on).

    python benchmarks/serve.py                                   # full run: 512 requests x 3 repeats
    python benchmarks/serve.py --requests 48 --repeats 1         # smoke test

The model is ``export/<model>/`` when a trained export exists, else a randomly initialised one exported
(once, cached in the temp dir) with ``sdzoo.export``. The table is printed and written to
``benchmarks/results/serve.md``.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from machine import busy_note, cpu_busy, describe  # benchmarks/machine.py
from results_file import write_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='sd_resnet110')
    p.add_argument('--repository', default=None,
                   help='model repository to serve (default: export/ if it has the model, else a temp export)')
    p.add_argument('--clients', type=int, nargs='+', default=[16, 64])
    p.add_argument('--requests', type=int, default=512, help='requests per measurement (batch-1 each)')
    p.add_argument('--repeats', type=int, default=3, help='measurements per configuration (median reported)')
    p.add_argument('--max-batch-size', type=int, default=64)
    p.add_argument('--max-queue-delay-us', type=int, default=None,
                   help='server batching window (default: the model config.pbtxt)')
    p.add_argument('--threads', type=int, default=None, help='onnxruntime intra-op threads (server and raw)')
    p.add_argument('--int8', action='store_true',
                   help='also serve the INT8 entry <model>_int8 (sdzoo export --int8), interleaved with fp32')
    p.add_argument('--modes', nargs='+', choices=('batching', 'no-batching'), default=['batching', 'no-batching'])
    p.add_argument('--out', default=str(REPO_ROOT / 'benchmarks' / 'results' / 'serve.md'))
    p.add_argument('--timeout', type=float, default=600.0, help='give up on one measurement after this long')
    args = p.parse_args(argv)
    if min(args.clients) < 1 or args.requests < 1 or args.repeats < 1:
        p.error('--clients, --requests and --repeats must be >= 1')
    return args


# --- the model ----------------------------------------------------------------------------------------------

def prepare_repository(args) -> Tuple[Path, str]:
    """(repository, description of the weights)."""
    if args.repository:
        repo = Path(args.repository)
        if not (repo / args.model / 'config.pbtxt').is_file():
            raise SystemExit(f'{repo}/{args.model}/config.pbtxt not found')
        return repo, f'{repo}/{args.model}'
    exported = REPO_ROOT / 'export'
    if (exported / args.model / '1' / 'model.onnx').is_file() and (exported / args.model / 'config.pbtxt').is_file():
        return exported, f'export/{args.model} (trained export)'
    repo = Path(tempfile.gettempdir()) / 'sdzoo_bench_serve'
    onnx_path = repo / args.model / '1' / 'model.onnx'
    if not (onnx_path.is_file() and (repo / args.model / 'config.pbtxt').is_file()):
        from sdzoo.export import export_onnx, write_triton_model
        print(f'exporting a randomly initialised {args.model} to {onnx_path} ...', flush=True)
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(args.model, onnx_path, write_report=False)
        write_triton_model(repo, args.model, max_batch_size=args.max_batch_size)
    return repo, f'{args.model}, random init (no trained export found)'


def raw_throughput(model, batch: int, images: int) -> float:
    """Images/s of ``model.run`` over ``images`` images in batches of ``batch``."""
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    model.run(x)  # warm-up
    runs = max(1, images // batch)
    t = time.perf_counter()
    for _ in range(runs):
        model.run(x)
    return runs * batch / (time.perf_counter() - t)


# --- the server ---------------------------------------------------------------------------------------------

class ServerProcess:
    """``sdzoo serve`` in a subprocess; its JSON log goes to a file (a full pipe would stall it)."""

    def __init__(self, repo: Path, model: str, extra: List[str], log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, 'w')
        self.port_file = log_path.with_suffix('.port')
        self.port_file.unlink(missing_ok=True)
        cmd = [sys.executable, '-m', 'sdzoo.cli', 'serve', str(repo), '--port', '0', '--port-file', str(self.port_file),
               '--models', model, *extra]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = self._wait_port()
        self.ready_s = self._wait_ready() - t0
        time.sleep(1.0)
        self.idle_rss_mib = self.memory_mib('VmRSS')
        self.peak_rss_mib = float('nan')  # VmHWM, read when the server stops (after the load)
        self.maps_libtorch = 'libtorch' in Path(f'/proc/{self.proc.pid}/maps').read_text()

    def memory_mib(self, field: str) -> float:
        for line in Path(f'/proc/{self.proc.pid}/status').read_text().splitlines():
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
        return float('nan')

    def _wait_ready(self, timeout: float = 180.0) -> float:
        import urllib.request
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{self.port}/v2/health/ready', timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter()
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError('server never became ready')

    def _wait_port(self, timeout: float = 180.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f'server exited ({self.proc.returncode}):\n{self.log_path.read_text()[-3000:]}')
            if self.port_file.is_file() and self.port_file.read_text().endswith('\n'):
                return int(self.port_file.read_text())
            time.sleep(0.1)
        self.stop()
        raise RuntimeError('server did not start in time')

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.peak_rss_mib = self.memory_mib('VmHWM')
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def infer_request(model: str, x: np.ndarray) -> bytes:
    """One HTTP/1.1 request in Triton's binary tensor format (what tritonclient sends)."""
    raw = x.astype('<f4').tobytes()
    header = json.dumps({'inputs': [{'name': 'input', 'shape': list(x.shape), 'datatype': 'FP32',
                                     'parameters': {'binary_data_size': len(raw)}}],
                         'outputs': [{'name': 'logits', 'parameters': {'binary_data': True}}]}).encode()
    return (f'POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n'
            f'Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n'
            f'Content-Length: {len(header) + len(raw)}\r\n\r\n').encode() + header + raw


async def _exchange(reader, writer, request: bytes) -> Tuple[int, Dict[str, str], bytes]:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    status = int(lines[0].split(' ', 2)[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(':', 1) for ln in lines[1:] if ':' in ln)}
    body = await reader.readexactly(int(headers.get('content-length', 0)))
    return status, headers, body


def decode_logits(headers: Dict[str, str], body: bytes) -> np.ndarray:
    n = int(headers['inference-header-content-length'])
    out = json.loads(body[:n])['outputs'][0]
    return np.frombuffer(body[n:], dtype='<f4').reshape(out['shape'])


async def load(port: int, request: bytes, clients: int, requests: int) -> Tuple[float, List[float], int]:
    """``clients`` keep-alive connections share ``requests`` requests: (seconds, latencies, non-200 count)."""
    remaining, latencies, errors = requests, [], 0

    async def client():
        nonlocal remaining, errors
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        try:
            while remaining > 0:
                remaining -= 1
                t = time.perf_counter()
                status, _, _ = await _exchange(reader, writer, request)
                latencies.append(time.perf_counter() - t)
                errors += status != 200
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - t0, latencies, errors


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    try:
        req = f'GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'.encode()
        return (await _exchange(reader, writer, req))[2]
    finally:
        writer.close()


async def batch_stats(port: int, model: str) -> Tuple[float, float]:
    from prometheus_client.parser import text_string_to_metric_families
    text = (await get(port, '/metrics')).decode()
    s = {x.name: x.value for f in text_string_to_metric_families(text) if f.name == 'sdzoo_batch_size'
         for x in f.samples if x.labels.get('model') == model}
    return s.get('sdzoo_batch_size_count', 0.0), s.get('sdzoo_batch_size_sum', 0.0)


# --- main ---------------------------------------------------------------------------------------------------

def _pct(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def _onnx_files(repo: Path, names: List[str]) -> Dict[str, Path]:
    """The newest version of each model in the repository."""
    paths = {}
    for name in names:
        found = list((repo / name).glob('[0-9]*/model.onnx'))
        if not found:
            raise SystemExit(f'{repo}/{name}/<version>/model.onnx not found (sdzoo export --int8 writes {name})')
        paths[name] = max(found, key=lambda p: int(p.parent.name))
    return paths


async def _drive(args, server: 'ServerProcess', name: str, request: bytes, expected: np.ndarray) -> List[tuple]:
    """One server: check one answer against onnxruntime, warm up, then each client count under load."""
    reader, writer = await asyncio.open_connection('127.0.0.1', server.port)
    status, headers, body = await _exchange(reader, writer, request)
    writer.close()
    if status != 200:
        raise RuntimeError(f'server answered {status}: {body[:300]!r}')
    np.testing.assert_allclose(decode_logits(headers, body), expected, rtol=1e-4, atol=1e-4)
    await load(server.port, request, min(args.clients), min(args.requests, 32))  # warm-up
    out = []
    for clients in args.clients:
        c0, s0 = await batch_stats(server.port, name)
        secs, lat, errors = await asyncio.wait_for(load(server.port, request, clients, args.requests), args.timeout)
        c1, s1 = await batch_stats(server.port, name)
        out.append((clients, {'throughput': args.requests / secs, 'p50': _pct(lat, 50), 'p99': _pct(lat, 99),
                              'errors': errors, 'mean_batch': (s1 - s0) / max(c1 - c0, 1)}))
    return out


def _server_flags(args) -> Tuple[List[str], List[Tuple[str, List[str]]]]:
    """Flags every server gets, and the (mode, extra flags) pairs to measure."""
    common = ['--max-batch-size', str(args.max_batch_size), '--max-queue-size', str(max(256, 2 * max(args.clients)))]
    if args.threads:
        common += ['--intra-op-threads', str(args.threads)]
    if args.max_queue_delay_us is not None:
        common += ['--max-queue-delay-us', str(args.max_queue_delay_us)]
    modes = [m for m in [('dynamic batching', []), ('no batching', ['--no-batching'])]
             if {'dynamic batching': 'batching', 'no batching': 'no-batching'}[m[0]] in args.modes]
    return common, modes


def measure(args, repo: Path, names: List[str], sessions: Dict[str, object], x: np.ndarray):
    """Raw onnxruntime and every server configuration, repeated, fp32 and INT8 back to back in each round."""
    requests = {name: infer_request(name, x) for name in names}
    expected = {name: sessions[name].run(x) for name in names}
    raws = {name: {'batched': [], 'batch1': []} for name in names}

    def measure_raw():
        for name in names:
            raws[name]['batched'].append(raw_throughput(sessions[name], args.max_batch_size, args.requests))
            raws[name]['batch1'].append(raw_throughput(sessions[name], 1, args.requests))

    common, modes = _server_flags(args)
    runs: Dict[Tuple[str, str, int], List[dict]] = {}
    log_dir = Path(tempfile.mkdtemp(prefix='sdzoo_bench_serve_logs_'))
    for rep in range(args.repeats):
        measure_raw()
        for (mode, flags), name in ((m, n) for m in modes for n in names):
            server = ServerProcess(repo, name, common + flags, log_dir / f'{name}_{mode.replace(" ", "_")}.log')
            try:
                driven = asyncio.run(_drive(args, server, name, requests[name], expected[name]))
                server.stop()
                for clients, r in driven:
                    r.update(ready_s=server.ready_s, idle_rss=server.idle_rss_mib, peak_rss=server.peak_rss_mib,
                             libtorch=server.maps_libtorch)
                    runs.setdefault((name, mode, clients), []).append(r)
                    print(f'[{rep + 1}/{args.repeats}] {name} {mode:16s} {clients:3d} clients: {r["throughput"]:7.1f} img/s  '
                          f'p50 {r["p50"]:7.1f} ms  p99 {r["p99"]:7.1f} ms  mean batch {r["mean_batch"]:5.1f}'
                          + (f'  ERRORS {r["errors"]}' if r['errors'] else ''), flush=True)
            finally:
                server.stop()
    measure_raw()
    return runs, raws


def _med(rs: List[dict], k: str) -> float:
    return statistics.median(r[k] for r in rs)


def table_rows(args, names: List[str], runs, raws) -> Tuple[List[str], Dict[str, float]]:
    rows, raw_bs = [], {}
    for name in names:
        raw_b = raw_bs[name] = statistics.median(raws[name]['batched'])
        raw_1 = statistics.median(raws[name]['batch1'])
        label = f'{name}: ' if args.int8 else ''
        rows += [
            f'| {label}raw onnxruntime, batch {args.max_batch_size} | - | {raw_b:.1f} | - | - | {args.max_batch_size} | 100% '
            '| - | - | - |',
            f'| {label}raw onnxruntime, batch 1 | - | {raw_1:.1f} | {1e3 / raw_1:.1f} | - | 1 | {raw_1 / raw_b:.0%} | - | - | - |',
        ]
        for (n, mode, clients), rs in runs.items():
            if n != name:
                continue
            errors = sum(r['errors'] for r in rs)
            rows.append(f'| {label}server, {mode} | {clients} | {_med(rs, "throughput"):.1f} | {_med(rs, "p50"):.1f} | '
                        f'{_med(rs, "p99"):.1f} | {_med(rs, "mean_batch"):.1f} | {_med(rs, "throughput") / raw_b:.0%}'
                        + (f' ({errors} errors)' if errors else '')
                        + f' | {_med(rs, "ready_s"):.2f} | {_med(rs, "idle_rss"):.0f} | {_med(rs, "peak_rss"):.0f}'
                        + (' (libtorch mapped)' if any(r['libtorch'] for r in rs) else '') + ' |')
    return rows, raw_bs


def verdicts(args, names: List[str], runs, raw_bs: Dict[str, float]) -> str:
    target = runs.get((args.model, 'dynamic batching', 64))
    text = ('' if target is None else
            f'\nDynamic batching at 64 clients: {_med(target, "throughput") / raw_bs[args.model]:.0%} of raw batched '
            f'throughput (target >= 80%).\n')
    int8 = runs.get((f'{args.model}_int8', 'dynamic batching', 64))
    if int8 is not None and target is not None:
        text += (f'\nServed INT8 vs served fp32 at 64 clients (dynamic batching): '
                 f'{_med(int8, "throughput") / _med(target, "throughput"):.2f}x the throughput (target >= 1.8x); '
                 f'raw batched INT8 vs fp32: {raw_bs[names[1]] / raw_bs[args.model]:.2f}x.\n')
    if args.requests < 4 * max(args.clients) or args.repeats < 3:
        text += '\nSmoke-test size (few requests per client or a single repeat): not a measurement.\n'
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    from sdzoo.runtime import OrtModel
    busy0 = cpu_busy()
    repo, source = prepare_repository(args)
    names = [args.model] + ([f'{args.model}_int8'] if args.int8 else [])
    onnx_paths = _onnx_files(repo, names)
    started = datetime.datetime.now(datetime.timezone.utc)
    sessions = {name: OrtModel(onnx_paths[name], intra_op_num_threads=args.threads) for name in names}
    x = np.random.default_rng(1).standard_normal((1, *sessions[args.model].input_shape[1:])).astype(np.float32)
    runs, raws = measure(args, repo, names, sessions, x)
    rows, raw_bs = table_rows(args, names, runs, raws)
    cmd = ' '.join(['python', 'benchmarks/serve.py', *(argv if argv is not None else sys.argv[1:])])
    text = (
        f'# Serving benchmark: {", ".join(names)}\n\n'
        f'- command: `{cmd}`\n'
        f'- date: {started:%Y-%m-%d %H:%M} UTC; machine: {describe()}; provider {sessions[args.model].provider}, '
        f'intra-op threads {args.threads or "default"}\n'
        f'- {busy_note(busy0, cpu_busy())}\n'
        f'- model: {source}; batch-1 requests of {"x".join(map(str, x.shape[1:]))} FP32 in Triton binary format over '
        f'HTTP/1.1 keep-alive on 127.0.0.1; {args.requests} requests per measurement, median of {args.repeats}\n'
        f'- server: max_batch_size {args.max_batch_size}, queue delay '
        f'{args.max_queue_delay_us if args.max_queue_delay_us is not None else "from config.pbtxt"} us; '
        f'load generator and server share the machine\n\n'
        '| configuration | clients | throughput (img/s) | p50 latency (ms) | p99 latency (ms) | mean batch | '
        'vs raw batched | ready (s) | server RSS idle (MiB) | server peak RSS (MiB) |\n'
        '|---|---|---|---|---|---|---|---|---|---|\n' + '\n'.join(rows) + '\n' + verdicts(args, names, runs, raw_bs))
    print('\n' + text)
    print(f'written to {write_atomic(args.out, text)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
