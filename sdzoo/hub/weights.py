"""Find, download and verify pretrained weight files.

Lookup order for ``<model>.<tag>``: ``$SDZOO_WEIGHTS`` folders, the copy shipped inside the
installed package (``sdzoo/_weights``, from a wheel), the repository's ``weights/`` folder, and
finally the Hugging Face Hub (``hf_hub_id`` of the pretrained cfg, honouring ``HF_ENDPOINT``).
Every file whose name is in the manifest is checked against its recorded sha256 before use.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ['WeightsError', 'weights_dirs', 'manifest', 'sha256_file', 'verify_file', 'resolve_pretrained_file']

WEIGHTS_FILE = 'model.safetensors'
MANIFEST_PATH = Path(__file__).with_name('manifest.json')
_PKG_DIR = Path(__file__).resolve().parents[1]


class WeightsError(RuntimeError):
    """Pretrained weights are missing, unreachable or corrupt."""


def weights_dirs() -> List[Path]:
    """Folders searched for shipped ``<model>.<tag>/`` weight folders, in order."""
    dirs = [Path(p) for p in os.environ.get('SDZOO_WEIGHTS', '').split(os.pathsep) if p]
    dirs.append(_PKG_DIR / '_weights')          # installed from a wheel
    dirs.append(_PKG_DIR.parent / 'weights')    # a repository checkout / editable install
    return dirs


@lru_cache(maxsize=1)
def _load_manifest() -> Dict[str, Dict[str, Any]]:
    if not MANIFEST_PATH.exists():
        return {}
    with open(MANIFEST_PATH) as f:
        return json.load(f)


def manifest() -> Dict[str, Dict[str, Any]]:
    """``{'<model>.<tag>': {'sha256': …, 'bytes': …}}`` for every weight sdzoo publishes."""
    return dict(_load_manifest())


def sha256_file(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def verify_file(name: str, path: os.PathLike | str) -> Path:
    """Check ``path`` against the manifest entry ``name`` (no entry: nothing to check)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'weight file {path} for {name} does not exist')
    entry = _load_manifest().get(name)
    if entry is None:
        return path
    digest = sha256_file(path)
    if digest != entry['sha256']:
        raise WeightsError(
            f'weight file {path} for {name} is corrupt or not the published one: sha256 {digest} '
            f'!= recorded {entry["sha256"]} ({path.stat().st_size} bytes, expected {entry.get("bytes")}); '
            'delete it (or the Hub cache entry) and try again')
    return path


def _weight_name(cfg: Dict[str, Any], variant: str) -> str:
    arch = cfg.get('architecture') or variant
    tag = cfg.get('tag')
    return f'{arch}.{tag}' if tag else arch


def resolve_pretrained_file(cfg: Dict[str, Any], variant: str) -> Path:
    """Local path of the verified weight file a pretrained cfg points at."""
    name = _weight_name(cfg, variant)
    if cfg.get('file'):
        # pretrained_cfg_overlay=dict(file=...) or a local-dir: model: the user's own file
        path = Path(cfg['file'])
        if path.is_dir():
            path = path / WEIGHTS_FILE
        return verify_file(name, path)
    if cfg.get('source') != 'hf-hub':
        for d in weights_dirs():
            candidate = d / name / WEIGHTS_FILE
            if candidate.is_file():
                return verify_file(name, candidate)
    hub_id = cfg.get('hf_hub_id')
    if not hub_id:
        raise WeightsError(f'no pretrained weights for {name}: none shipped in '
                           f'{", ".join(map(str, weights_dirs()))} and no Hugging Face Hub id')
    filename = cfg.get('hf_hub_filename') or WEIGHTS_FILE
    from huggingface_hub import hf_hub_download
    try:
        path = hf_hub_download(hub_id, filename, library_name='sdzoo')
    except Exception as e:  # offline, unknown repo, server error: say which and where
        endpoint = os.environ.get('HF_ENDPOINT', 'https://huggingface.co')
        raise WeightsError(
            f'no pretrained weights for {name}: not shipped locally and downloading {hub_id}/{filename} '
            f'from {endpoint} failed ({type(e).__name__}: {e})') from e
    return verify_file(name if cfg.get('source') != 'hf-hub' else _hub_name(hub_id), path)


def _hub_name(hub_id: str) -> str:
    """``sdzoo/sd_resnet110.sd_cifar10`` -> ``sd_resnet110.sd_cifar10`` for our own repos."""
    owner, _, repo = hub_id.partition('/')
    return repo if owner == 'sdzoo' else hub_id
