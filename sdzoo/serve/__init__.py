"""Serve a Triton-layout model repository over the Open Inference Protocol (KServe v2) REST API.

``sdzoo serve export/`` runs :func:`create_app` under uvicorn: every ``<name>/<version>/model.onnx`` is
loaded with :class:`sdzoo.runtime.OrtModel` and gets a dynamic batcher (one worker thread per model).
"""
from __future__ import annotations

from .batching import DynamicBatcher, QueueFullError, ShuttingDownError
from .repository import ModelEntry, RepositoryConfig, load_repository, parse_config_pbtxt

__all__ = [
    'create_app', 'DynamicBatcher', 'QueueFullError', 'ShuttingDownError', 'ModelEntry', 'RepositoryConfig',
    'load_repository', 'parse_config_pbtxt',
]


def __getattr__(name: str):
    # the app pulls in FastAPI / prometheus_client: import it only when asked for
    if name == 'create_app':
        from .app import create_app
        return create_app
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
