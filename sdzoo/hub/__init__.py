"""Pretrained weights: Hub-layout weight folders, offline/Hub loading with sha256 checks, publishing.

- ``weights``: find (``$SDZOO_WEIGHTS``, the package, the repository, the Hub) and verify files.
- ``publish``: ``save_weights_folder`` writes ``weights/<model>.<tag>/`` and records its sha256.
- ``model_folder``: where a finished run or a user's folder keeps its loadable model.
- ``offline``: ``hf-hub:`` names fail fast, naming the shipped copy, when the Hub is unreachable.
- ``cli``: ``sdzoo push`` (upload with huggingface_hub, ``--dry-run`` checks a folder).

The Hub-compatible server is :mod:`sdzoo.mirror`; the reports (MODEL_CARDS.md, ``sdzoo publish``) are
:mod:`sdzoo.reports`.
"""
from .weights import (
    WeightsError, WeightsIntegrityError, WeightsNotFoundError, find_weights_folder, hub_repo_id, manifest,
    manifest_path, resolve_pretrained_file, sha256_file, verify_file, weight_name, weights_dirs,
)


def __getattr__(name: str):
    # publishing pulls in safetensors/huggingface_hub card code: import it when asked for
    if name in ('save_weights_folder', 'validate_weights_folder', 'record_weights', 'sd_model_args'):
        from . import publish
        return getattr(publish, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
