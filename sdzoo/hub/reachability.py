"""Can the Hub (``HF_ENDPOINT``) be reached right now? One short probe, instead of huggingface_hub's ~30 s of
retries: weight lookup and the ``hf-hub:`` guard both ask before they download."""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Optional
from urllib.parse import urlparse

__all__ = ['hub_unreachable', 'PROBE_TIMEOUT_S']

PROBE_TIMEOUT_S = 3.0
_PROXY_VARS = ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy')


@lru_cache(maxsize=8)
def _probe(host: str, port: int) -> Optional[str]:
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f'{host}:{port} is unreachable ({e.strerror or type(e).__name__})'
    return None


def hub_unreachable() -> Optional[str]:
    """Why the Hub (``HF_ENDPOINT``) cannot be reached right now, or ``None`` if it may be (one short probe).

    Behind a proxy the direct probe proves nothing, so it is skipped there.
    """
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return 'HF_HUB_OFFLINE is set'
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    url = urlparse(constants.ENDPOINT)
    if not url.hostname:
        return None
    return _probe(url.hostname, url.port or (443 if url.scheme == 'https' else 80))
