"""Soak test of ``sdzoo serve``: minutes of concurrent valid and bad requests on 127.0.0.1.

Starts ``sdzoo serve`` as a subprocess (loopback, OS-chosen port) and runs ``--clients`` keep-alive
clients for ``--duration`` seconds. Each request is drawn (seeded) from a mix: valid batch-1
inferences, whose logits are checked against onnxruntime run in this process on the same ONNX file;
malformed JSON headers; wrong-shape inputs; unknown models; and oversized bodies (a Content-Length
over the server's limit, announced on a fresh connection and never sent). Reports requests served,
responses by kind and status, p50/p99 latency of the valid ones, and the server's resident memory
at start (after warm-up), at its peak and at the end, sampled every second from /proc.

Goal: every valid request answered correctly, every bad one a 4xx, memory flat.

    python benchmarks/serve_soak.py                         # 180 s, 64 clients
    python benchmarks/serve_soak.py --duration 20           # smoke run

Results are printed and written to ``benchmarks/results/serve_soak.md``.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402
from serve import REPO_ROOT, ServerProcess, _exchange, _pct, decode_logits, infer_request, prepare_repository  # noqa: E402

KINDS = {'valid': 0.7, 'malformed': 0.08, 'wrong_shape': 0.08, 'unknown_model': 0.06, 'oversized': 0.08}
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


def _bad_request(kind: str, model: str, x: np.ndarray) -> bytes:
    if kind == 'wrong_shape':
        return infer_request(model, x[:, :, :16, :16])
    if kind == 'unknown_model':
        return infer_request('no_such_model', x)
    header = b'{"inputs": [{"name": "input", "shape": [1, 3, 32'  # cut short: not JSON
    return (f'POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
            f'Content-Length: {len(header)}\r\n\r\n').encode() + header


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
        self.latencies: List[float] = []
        self.wrong_answers = 0
        self.transport_errors: Counter = Counter()
        self.idle_reconnects = 0


async def _client(i: int, port: int, model: str, deadline: float, pool: List[Tuple[bytes, np.ndarray]],
                  xs: np.ndarray, stats: _Stats, seed: int) -> None:
    rng = random.Random(seed * 1000 + i)
    kinds, weights = list(KINDS), list(KINDS.values())
    conn: Optional[Tuple] = None
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        j = rng.randrange(len(pool))
        try:
            if kind == 'oversized':
                stats.codes[(kind, await _oversized(port, model, 64 << 20))] += 1
                continue
            reused = conn is not None
            if conn is None:
                conn = await asyncio.open_connection('127.0.0.1', port)
            request = pool[j][0] if kind == 'valid' else _bad_request(kind, model, xs[j:j + 1])
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
            if kind == 'valid':
                stats.latencies.append(time.perf_counter() - t)
                if status != 200 or not np.allclose(decode_logits(headers, body), pool[j][1], rtol=1e-4, atol=1e-4):
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


def _rss_mib(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def _reference(repo: Path, model: str, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort
    onnx_path = repo / model / '1' / 'model.onnx'
    xs = np.random.default_rng(seed).standard_normal((POOL, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    name = sess.get_inputs()[0].name
    return xs, np.concatenate([sess.run(None, {name: xs[i:i + 1]})[0] for i in range(POOL)])


def _report(args, source: str, stats: _Stats, mem: Dict[str, float], seconds: float, cmd: str) -> str:
    valid = sum(n for (k, s), n in stats.codes.items() if k == 'valid')
    bad = {k: Counter({s: n for (kk, s), n in stats.codes.items() if kk == k}) for k in KINDS if k != 'valid'}
    bad_not_4xx = sum(n for k, c in bad.items() for s, n in c.items() if not 400 <= s < 500)
    rows = [f"| valid | {valid} | {dict(sorted(Counter({s: n for (k, s), n in stats.codes.items() if k == 'valid'}).items()))} |"]
    rows += [f'| {k} | {sum(c.values())} | {dict(sorted(c.items()))} |' for k, c in bad.items()]
    lat = stats.latencies
    return '\n'.join([
        f'# Serving soak test: {args.model}',
        '',
        f'- command: `{cmd}`',
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; CPU: {cpu_name()}, {os.cpu_count()} "
        f'cores, shared with other jobs (load average at end {os.getloadavg()[0]:.2f}); clients and server on one machine',
        f'- model: {source}; {args.clients} keep-alive clients on 127.0.0.1 for {seconds:.0f} s; request mix {KINDS}',
        '',
        '| requests | count | responses by status |',
        '|---|---|---|',
        *rows,
        '',
        f'- requests served: {sum(stats.codes.values())} ({sum(stats.codes.values()) / seconds:.1f}/s); '
        f'valid answered correctly: {valid - stats.wrong_answers}/{valid}; bad requests not answered 4xx: {bad_not_4xx}; '
        f'transport errors: {dict(stats.transport_errors) or 0}; keep-alive connections the server closed '
        f'while idle (request resent on a new one): {stats.idle_reconnects}',
        f'- valid-request latency: p50 {_pct(lat, 50):.1f} ms, p99 {_pct(lat, 99):.1f} ms' if lat else '- no valid requests',
        f"- server resident memory: {mem['start']:.0f} MiB at start (after warm-up), peak {mem['peak']:.0f} MiB, "
        f"{mem['end']:.0f} MiB at the end ({mem['end'] - mem['start']:+.0f} MiB)",
        ''])


def main(argv=None) -> int:
    args = parse_args(argv)
    repo, source = prepare_repository(args)
    xs, ref = _reference(repo, args.model, args.seed)
    pool = [(infer_request(args.model, xs[i:i + 1]), ref[i:i + 1]) for i in range(POOL)]
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(repo, args.model, ['--max-batch-size', str(args.max_batch_size)], Path(tmp) / 'log')
        try:
            stats, mem = _Stats(), {}

            async def run() -> float:
                warm = _Stats()  # warm-up: one valid request per client, then memory at "start"
                await asyncio.gather(*(_client(i, server.port, args.model, time.monotonic() + 2, pool[:1], xs,
                                               warm, args.seed) for i in range(min(args.clients, 8))))
                mem['start'] = mem['peak'] = _rss_mib(server.proc.pid)
                stop = threading.Event()

                def sample():
                    while not stop.wait(1.0):
                        mem['peak'] = max(mem['peak'], _rss_mib(server.proc.pid))
                threading.Thread(target=sample, daemon=True).start()
                t0 = time.monotonic()
                await asyncio.gather(*(_client(i, server.port, args.model, t0 + args.duration, pool, xs, stats,
                                               args.seed) for i in range(args.clients)))
                stop.set()
                mem['end'] = _rss_mib(server.proc.pid)
                return time.monotonic() - t0

            seconds = asyncio.run(run())
        finally:
            server.stop()
    cmd = 'python benchmarks/serve_soak.py' + ''.join(f' {a}' for a in (argv if argv is not None else sys.argv[1:]))
    text = _report(args, source, stats, mem, seconds, cmd)
    Path(args.out).write_text(text)
    print(text)
    ok = stats.wrong_answers == 0 and all(400 <= s < 500 for (k, s) in stats.codes if k != 'valid')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
