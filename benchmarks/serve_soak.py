"""Soak test of ``sdzoo serve``: minutes of concurrent valid and hostile requests on 127.0.0.1.

Starts ``sdzoo serve`` as a subprocess (loopback, OS-chosen port) and runs ``--clients`` keep-alive
clients for ``--duration`` seconds. Each request is drawn (seeded) from a mix: valid batch-1
inferences, whose logits are checked against onnxruntime run in this process on the same ONNX file;
valid classify uploads (a small PNG, and rarely the largest image the server decodes, 6000x6000);
malformed JSON headers; wrong-shape inputs; unknown models; oversized bodies (a Content-Length over
the server's limit, announced on a fresh connection and never sent); and requests built to cost the
server memory or time: ``[`` x 100,000 (nested JSON), a 15 MB JSON tensor of 7.5 M numbers, four
6000x6000 PNGs in one multipart request (144 M pixels, 480 KB on the wire), and 100 files in one
request. Reports requests served, responses and latency by kind, and the server's memory: resident
(VmRSS) at start (after warm-up), sampled every second, and at the end, and the kernel's exact peak
(VmHWM) before and after the load.

Goal: every valid request answered correctly, every bad one a 4xx, memory within the bound of
docs/reliability.md and flat.

    python benchmarks/serve_soak.py                         # 180 s, 64 clients
    python benchmarks/serve_soak.py --duration 20           # smoke run

Results are printed and written to ``benchmarks/results/serve_soak.md``.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import os
import random
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_family_model, cpu_name  # noqa: E402
from serve import REPO_ROOT, ServerProcess, _exchange, _pct, decode_logits, infer_request, prepare_repository  # noqa: E402

KINDS = {'valid': 0.557, 'classify': 0.08, 'big_image': 0.003, 'malformed': 0.05, 'wrong_shape': 0.05,
         'unknown_model': 0.04, 'oversized': 0.05, 'nested_json': 0.05, 'huge_json': 0.02, 'huge_pixels': 0.05,
         'many_files': 0.05}
GOOD = ('valid', 'classify', 'big_image')  # answered 200; every other kind must get a 4xx
POOL = 16  # distinct valid inputs, their reference logits computed once with onnxruntime


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='sd_resnet20')
    p.add_argument('--repository', default=None, help='model repository (default: export/ or a temp export)')
    p.add_argument('--clients', type=int, default=64)
    p.add_argument('--duration', type=float, default=180.0, help='seconds of load (bounded)')
    p.add_argument('--max-batch-size', type=int, default=64)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=str(REPO_ROOT / 'benchmarks' / 'results' / 'serve_soak.md'))
    args = p.parse_args(argv)
    if args.clients < 1 or not 0 < args.duration <= 3600:
        p.error('--clients must be >= 1 and --duration in (0, 3600] seconds')
    return args


def _post(path: str, content_type: str, body: bytes) -> bytes:
    return (f'POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n'
            f'Content-Length: {len(body)}\r\n\r\n').encode() + body


def blank_png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG of any size, small on the wire (rows streamed through zlib)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    idat = b''.join(z.compress(row) for _ in range(height)) + z.flush()
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


def _small_png(seed: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, 'PNG')
    return buf.getvalue()


def _multipart(path: str, files: List[bytes]) -> bytes:
    boundary = 'sdzoo-soak-boundary'
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
             f'Content-Type: image/png\r\n\r\n'.encode() + data + b'\r\n' for i, data in enumerate(files)]
    return _post(path, f'multipart/form-data; boundary={boundary}', b''.join(parts) + f'--{boundary}--\r\n'.encode())


def hostile_requests(model: str) -> Dict[str, bytes]:
    """The fixed requests of the kinds that are not drawn per input (built once, sent many times)."""
    infer, classify = f'/v2/models/{model}/infer', f'/v2/models/{model}/classify'
    huge = b'{"inputs":[{"name":"input","shape":[1,3,32,32],"datatype":"FP32","data":[' + \
        b','.join([b'0'] * 7_500_000) + b']}]}'  # 15 MB, under the 16 MiB body limit
    return {
        'malformed': _post(infer, 'application/json', b'{"inputs": [{"name": "input", "shape": [1, 3, 32'),
        'nested_json': _post(infer, 'application/json', b'[' * 100_000),
        'huge_json': _post(infer, 'application/json', huge),
        'huge_pixels': _multipart(classify, [blank_png(6000, 6000)] * 4),
        'many_files': _multipart(classify, [_small_png(i) for i in range(100)]),
        'classify': _post(classify + '?top_k=1', 'image/png', _small_png(0)),
        'big_image': _post(classify + '?top_k=1', 'image/png', blank_png(6000, 6000)),
    }


def _request(kind: str, model: str, x: np.ndarray, fixed: Dict[str, bytes]) -> bytes:
    if kind == 'wrong_shape':
        return infer_request(model, x[:, :, :16, :16])
    if kind == 'unknown_model':
        return infer_request('no_such_model', x)
    return fixed[kind]


async def _oversized(port: int, model: str, length: int) -> int:
    """Announce a body over the limit on a fresh connection, send none of it: the status code."""
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    try:
        writer.write((f'POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                      f'Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n').encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 30)
        return int(head.split(b' ', 2)[1])
    finally:
        writer.close()


class _Stats:
    def __init__(self):
        self.codes: Counter = Counter()  # (kind, status)
        self.latencies: Dict[str, List[float]] = defaultdict(list)
        self.wrong_answers = 0
        self.transport_errors: Counter = Counter()
        self.idle_reconnects = 0


async def _client(i: int, port: int, model: str, deadline: float, pool: List[Tuple[bytes, np.ndarray]],
                  xs: np.ndarray, fixed: Dict[str, bytes], stats: _Stats, seed: int,
                  kinds_weights: Optional[Dict[str, float]] = None) -> None:
    rng = random.Random(seed * 1000 + i)
    kinds, weights = list(kinds_weights or KINDS), list((kinds_weights or KINDS).values())
    conn: Optional[Tuple] = None
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        j = rng.randrange(len(pool))
        try:
            if kind == 'oversized':
                t = time.perf_counter()
                stats.codes[(kind, await _oversized(port, model, 64 << 20))] += 1
                stats.latencies[kind].append(time.perf_counter() - t)
                continue
            reused = conn is not None
            if conn is None:
                conn = await asyncio.open_connection('127.0.0.1', port)
            request = pool[j][0] if kind == 'valid' else _request(kind, model, xs[j:j + 1], fixed)
            t = time.perf_counter()
            try:
                status, headers, body = await asyncio.wait_for(_exchange(*conn, request), 120)
            except (asyncio.IncompleteReadError, ConnectionResetError) as e:
                if not reused or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                    raise
                # the server closed this keep-alive connection while it sat idle (uvicorn's
                # keep-alive timeout): do what HTTP clients do, resend once on a new connection
                stats.idle_reconnects += 1
                conn[1].close()
                conn = await asyncio.open_connection('127.0.0.1', port)
                t = time.perf_counter()
                status, headers, body = await asyncio.wait_for(_exchange(*conn, request), 120)
            stats.codes[(kind, status)] += 1
            stats.latencies[kind].append(time.perf_counter() - t)
            if kind == 'valid':
                if status != 200 or not np.allclose(decode_logits(headers, body), pool[j][1], rtol=1e-4, atol=1e-4):
                    stats.wrong_answers += 1
            elif kind in GOOD and status != 200:
                stats.wrong_answers += 1
            if headers.get('connection', '').lower() == 'close':
                conn[1].close()
                conn = None
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            stats.transport_errors[(kind, type(e).__name__)] += 1
            if conn is not None:
                conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


def _rss_mib(pid: int, field: str = 'VmRSS') -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (the kernel's peak resident) of process ``pid``, in MiB."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1]) / 1024
    return float('nan')


def _reference(repo: Path, model: str, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort
    onnx_path = repo / model / '1' / 'model.onnx'
    xs = np.random.default_rng(seed).standard_normal((POOL, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    name = sess.get_inputs()[0].name
    return xs, np.concatenate([sess.run(None, {name: xs[i:i + 1]})[0] for i in range(POOL)])


def _kind_rows(stats: _Stats) -> List[str]:
    rows = []
    for k in KINDS:
        c = Counter({s: n for (kk, s), n in stats.codes.items() if kk == k})
        lat = stats.latencies.get(k, [])
        ms = f'{_pct(lat, 50):.0f} | {_pct(lat, 99):.0f}' if lat else '- | -'
        rows.append(f'| {k} | {sum(c.values())} | {dict(sorted(c.items()))} | {ms} |')
    return rows


def _report(args, source: str, stats: _Stats, mem: Dict[str, Any], seconds: float, cmd: str) -> str:
    good = sum(n for (k, s), n in stats.codes.items() if k in GOOD)
    bad_not_4xx = sum(n for (k, s), n in stats.codes.items() if k not in GOOD and not 400 <= s < 500)
    total = sum(stats.codes.values())
    lat = stats.latencies.get('valid', [])
    family = cpu_family_model()
    return '\n'.join([
        f'# Serving soak test: {args.model}',
        '',
        f'- command: `{cmd}`',
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; CPU: {cpu_name()}"
        f"{f' ({family})' if family else ''}, {os.cpu_count()} cores, shared with other jobs (load average at end "
        f'{os.getloadavg()[0]:.2f}); clients and server on one machine',
        f'- model: {source}; {args.clients} keep-alive clients on 127.0.0.1 for {seconds:.0f} s; server defaults '
        f'(16 MiB bodies, 40 M decoded pixels per request, server-wide 64 MiB of large bodies and 320 MiB of decoding '
        f'and JSON parsing at once); request mix {KINDS}',
        '',
        '| requests | count | responses by status | p50 ms | p99 ms |',
        '|---|---|---|---|---|',
        *_kind_rows(stats),
        '',
        f'- requests served: {total} ({total / seconds:.1f}/s); valid ({", ".join(GOOD)}) answered correctly: '
        f'{good - stats.wrong_answers}/{good}; bad requests not answered 4xx: {bad_not_4xx}; '
        f'transport errors: {dict(stats.transport_errors) or 0}; keep-alive connections the server closed '
        f'while idle (request resent on a new one): {stats.idle_reconnects}',
        f'- valid-inference latency: p50 {_pct(lat, 50):.1f} ms, p99 {_pct(lat, 99):.1f} ms' if lat
        else '- no valid requests',
        f"- server memory: resident (VmRSS) {mem['start']:.0f} MiB at start (after warm-up), sampled peak "
        f"{mem['peak']:.0f} MiB, {mem['end']:.0f} MiB at the end ({mem['end'] - mem['start']:+.0f} MiB); kernel "
        f"peak (VmHWM) {mem['hwm_start']:.0f} MiB before the load (start-up included), {mem['hwm_end']:.0f} MiB "
        f"after it: peak growth under load {mem['hwm_end'] - mem['start']:+.0f} MiB over the start",
        f"- resident memory over the run (MiB, each quarter's last sample): "
        f"{', '.join(f'{r:.0f}' for r in mem['quarters'])}",
        ''])


def main(argv=None) -> int:
    args = parse_args(argv)
    repo, source = prepare_repository(args)
    xs, ref = _reference(repo, args.model, args.seed)
    pool = [(infer_request(args.model, xs[i:i + 1]), ref[i:i + 1]) for i in range(POOL)]
    fixed = hostile_requests(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(repo, args.model, ['--max-batch-size', str(args.max_batch_size)], Path(tmp) / 'log')
        try:
            stats, mem = _Stats(), {}

            async def run() -> float:
                warm = _Stats()  # warm-up: valid requests only, then memory at "start"
                await asyncio.gather(*(_client(i, server.port, args.model, time.monotonic() + 2, pool[:1], xs, fixed,
                                               warm, args.seed, {'valid': 1.0, 'classify': 1.0})
                                       for i in range(min(args.clients, 8))))
                pid = server.proc.pid
                mem['start'] = mem['peak'] = _rss_mib(pid)
                mem['hwm_start'] = _rss_mib(pid, 'VmHWM')
                stop = threading.Event()

                samples: List[Tuple[float, float]] = []

                def sample():
                    while not stop.wait(1.0):
                        samples.append((time.monotonic() - t0, _rss_mib(pid)))
                        mem['peak'] = max(mem['peak'], samples[-1][1])
                t0 = time.monotonic()
                threading.Thread(target=sample, daemon=True).start()
                await asyncio.gather(*(_client(i, server.port, args.model, t0 + args.duration, pool, xs, fixed, stats,
                                               args.seed) for i in range(args.clients)))
                stop.set()
                mem['end'], mem['hwm_end'] = _rss_mib(pid), _rss_mib(pid, 'VmHWM')
                mem['quarters'] = [next((r for t, r in reversed(samples) if t <= q * args.duration / 4), mem['start'])
                                   for q in (1, 2, 3, 4)]
                return time.monotonic() - t0

            seconds = asyncio.run(run())
        finally:
            server.stop()
    cmd = 'python benchmarks/serve_soak.py' + ''.join(f' {a}' for a in (argv if argv is not None else sys.argv[1:]))
    text = _report(args, source, stats, mem, seconds, cmd)
    Path(args.out).write_text(text)
    print(text)
    ok = stats.wrong_answers == 0 and all(400 <= s < 500 for (k, s) in stats.codes if k not in GOOD)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
