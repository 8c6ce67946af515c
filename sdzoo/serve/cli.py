"""``sdzoo serve REPOSITORY``: run the Open Inference Protocol server under uvicorn."""
from __future__ import annotations

import argparse
import logging
import sys

__all__ = ['add_parser', 'configure_logging', 'serve']


def add_parser(sub) -> None:
    p = sub.add_parser(
        'serve', help='serve a model repository over the Open Inference Protocol (KServe v2 / Triton) REST API',
        description='Serve every model of a Triton-layout repository (<name>/config.pbtxt, <name>/<v>/model.onnx) '
                    'over HTTP with dynamic batching, Prometheus metrics at /metrics and JSON logs.')
    p.add_argument('repository', help='model repository directory (e.g. export/), or one exported model folder / '
                                      'finished run directory (`sdzoo export RUN_DIR` first)')
    p.add_argument('--host', default='127.0.0.1', help='bind address (default: 127.0.0.1)')
    p.add_argument('--port', type=int, default=8000, help='port (default: 8000; 0 picks a free one)')
    p.add_argument('--port-file', default=None, metavar='FILE',
                   help='write the bound port to FILE once the socket is bound (with --port 0, how a script learns it; '
                        'default: none)')
    p.add_argument('--models', nargs='+', default=None, metavar='NAME', help='serve only these repository entries (default: all)')
    g = p.add_argument_group('batching (defaults: each model\'s config.pbtxt)')
    g.add_argument('--max-batch-size', type=int, default=None, help='most items per onnxruntime call (default: config.pbtxt)')
    g.add_argument('--max-queue-delay-us', type=int, default=None,
                   help='microseconds the oldest request waits for a batch to fill (default: config.pbtxt)')
    g.add_argument('--no-batching', action='store_true', help='run every request on its own')
    g.add_argument('--max-queue-size', type=int, default=256,
                   help='requests waiting per model before answering 503 (default: 256)')
    g = p.add_argument_group('limits and runtime')
    g.add_argument('--max-body-mb', type=float, default=16.0, help='request body limit in MiB, 413 above (default: 16)')
    g.add_argument('--intra-op-threads', type=int, default=None, help='onnxruntime intra-op threads per model (default: onnxruntime\'s choice)')
    g.add_argument('--providers', nargs='+', default=None,
                   help='onnxruntime execution providers (default: best available)')
    g.add_argument('--require-gpu', action='store_true', help='fail instead of falling back to CPU')
    g.add_argument('--no-strict-readiness', action='store_true',
                   help='/v2/health/ready is 200 while any model is ready (default: all must be)')
    g.add_argument('--graceful-timeout', type=float, default=30.0,
                   help='seconds to finish in-flight requests on shutdown (default: 30)')
    g.add_argument('--log-level', default='info', choices=['debug', 'info', 'warning', 'error'],
                   help='log level of the JSON logs')
    p.set_defaults(func=serve)


def configure_logging(level: str = 'info', stream=None) -> None:
    """JSON lines on stderr for sdzoo.serve (access log included) and uvicorn."""
    from .app import JsonFormatter
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ('sdzoo', 'uvicorn', 'uvicorn.error'):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def serve(args: argparse.Namespace) -> int:
    import importlib.util
    if importlib.util.find_spec('onnxruntime') is None:  # before anything starts: the models could not load
        raise ModuleNotFoundError("No module named 'onnxruntime'", name='onnxruntime')
    from .app import ServeSettings
    configure_logging(args.log_level)
    for flag, value in (('--max-batch-size', args.max_batch_size), ('--max-queue-size', args.max_queue_size),
                        ('--intra-op-threads', args.intra_op_threads)):
        if value is not None and value < 1:
            raise ValueError(f'{flag} must be >= 1, got {value}')
    if args.max_queue_delay_us is not None and args.max_queue_delay_us < 0:
        raise ValueError(f'--max-queue-delay-us must be >= 0, got {args.max_queue_delay_us}')
    if args.max_body_mb <= 0:
        raise ValueError(f'--max-body-mb must be > 0, got {args.max_body_mb}')
    settings = ServeSettings(
        max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
        batching=not args.no_batching, max_queue_size=args.max_queue_size,
        max_body_bytes=int(args.max_body_mb * (1 << 20)), strict_readiness=not args.no_strict_readiness,
        drain_timeout_s=args.graceful_timeout)
    ort_kwargs = {'intra_op_num_threads': args.intra_op_threads, 'require_gpu': args.require_gpu}
    if args.providers:
        ort_kwargs['providers'] = args.providers
    from .entries import check_exported, single_model_repository
    with single_model_repository(args.repository) as repository:
        check_exported(repository, args.models, shown=args.repository)
        return _run(repository, args, settings, ort_kwargs)


def _run(repository: str, args: argparse.Namespace, settings, ort_kwargs) -> int:
    import uvicorn
    from .app import create_app
    app = create_app(repository, settings, models=args.models, **ort_kwargs)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=args.graceful_timeout, lifespan='on')
    server = uvicorn.Server(config)
    sock = config.bind_socket()  # bound here, so --port 0's port is known before the models load
    if args.port_file:
        from ..files import atomic_write_text
        atomic_write_text(args.port_file, f'{sock.getsockname()[1]}\n')
    server.run(sockets=[sock])
    return 0 if server.started else 1
