"""Fail fast, and say what works instead, when an ``hf-hub:`` name cannot reach the Hub.

Without a network huggingface_hub retries a config download for about 30 s before it gives up, and with
``HF_HUB_OFFLINE=1`` it fails with a generic message. sdzoo's Hub repos are a publishing target (not published
yet), and every sdzoo weight is shipped with the package, so the useful answer is immediate: the Hub cannot be
reached, load the shipped copy by its registry name (or a ``local-dir:`` folder). Files already in the Hugging
Face cache still load offline as usual.
"""
from __future__ import annotations

from functools import wraps
from typing import Optional

from .reachability import hub_unreachable

__all__ = ['hub_unreachable', 'install']

def _cached(repo_id: str, revision: Optional[str], cache_dir) -> bool:
    from huggingface_hub import try_to_load_from_cache
    hit = try_to_load_from_cache(repo_id, 'config.json', cache_dir=cache_dir, revision=revision)
    return isinstance(hit, str)


def _offline_message(model_id: str, reason: str) -> str:
    from .weights import find_weights_folder
    repo_id = model_id.split('@', 1)[0]
    owner, _, name = repo_id.partition('/')
    alt = ''
    if owner == 'sdzoo' and find_weights_folder(name) is not None:
        alt = (f" The sdzoo Hub repos are a publishing target; the copy shipped with sdzoo loads offline: "
               f"timm.create_model('{name}', pretrained=True).")
    return (f'hf-hub:{model_id}: the Hugging Face Hub cannot be reached ({reason}) and the repo is not in the '
            f'local Hugging Face cache.{alt or " Load a local copy with local-dir:<folder> instead."}')


def install() -> None:
    """Wrap timm's ``hf-hub:`` config loader with the fast reachability check (idempotent)."""
    from timm.models import _factory
    original = _factory.load_model_config_from_hf
    if getattr(original, '_sdzoo_guarded', False):
        return

    @wraps(original)
    def guarded(model_id: str, *args, **kwargs):
        repo_id, _, revision = model_id.partition('@')
        reason = hub_unreachable()
        if reason is not None and not _cached(repo_id, revision or None, kwargs.get('cache_dir')):
            from .weights import WeightsNotFoundError
            raise WeightsNotFoundError(_offline_message(model_id, reason))
        return original(model_id, *args, **kwargs)

    guarded._sdzoo_guarded = True  # type: ignore[attr-defined]
    _factory.load_model_config_from_hf = guarded
