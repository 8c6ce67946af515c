"""Serve a Triton-layout model repository over the Open Inference Protocol (KServe v2) REST API.

``sdzoo serve export/`` runs :func:`create_app` under uvicorn: every ``<name>/<version>/model.onnx`` is
loaded with :class:`sdzoo.runtime.OrtModel` and gets a dynamic batcher (one worker thread per model).
"""
from __future__ import annotations

_LAZY = {
    'DynamicBatcher': 'batching', 'QueueFullError': 'batching', 'ShuttingDownError': 'batching',
    'ModelEntry': 'repository', 'RepositoryConfig': 'repository', 'load_repository': 'repository',
    'parse_config_pbtxt': 'repository', 'create_app': 'app',
}
__all__ = [
    'create_app', 'DynamicBatcher', 'QueueFullError', 'ShuttingDownError', 'ModelEntry', 'RepositoryConfig',
    'load_repository', 'parse_config_pbtxt',
]


def __getattr__(name: str):
    # numpy, FastAPI, prometheus_client: imported when first asked for (`sdzoo serve --help` needs none)
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
