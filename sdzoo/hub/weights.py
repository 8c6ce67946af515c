"""Find, download and verify pretrained weight files.

A published weight ``<model>.<tag>`` is a folder in timm's Hub layout (``config.json``,
``model.safetensors``, ``README.md``, …). For a registry name (``sd_resnet110`` or
``sd_resnet110.sd_cifar10``) it is looked for, in order, in

1. every folder of ``$SDZOO_WEIGHTS`` (``os.pathsep``-separated),
2. the copy shipped inside the installed package (``sdzoo/_weights``, from a wheel),
3. the repository's ``weights/`` folder (a checkout or an editable install),

and otherwise downloaded from the Hugging Face Hub (the cfg's ``hf_hub_id``, ``'sdzoo/'``
completed to ``sdzoo/<model>.<tag>``; ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``
apply as usual). ``SDZOO_WEIGHTS_ONLY=1`` drops 2 and 3, so only ``$SDZOO_WEIGHTS`` and the Hub are
used (tests, or to be sure a run uses exactly the weights you point it at).

The trust anchor is the package manifest ``sdzoo/hub/manifest.json`` (``$SDZOO_MANIFEST``
replaces it): ``{"<model>.<tag>": {"sha256": …, "bytes": …}}``. Which files are checked:

- registry names: sdzoo's own weights must be recorded and match (timm's, e.g. ``tv_in1k``, are
  checked only if recorded);
- ``hf-hub:sdzoo/<model>.<tag>``: checked if recorded (not with a pinned ``@revision``);
- ``local-dir:<folder>`` and a ``file`` overlay: checked if the folder's name is recorded (a copy of a
  published weight); the user's own folders load as they are.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = [
    'WeightsError', 'WeightsNotFoundError', 'WeightsIntegrityError',
    'WEIGHTS_FILE', 'ENV_WEIGHTS', 'ENV_WEIGHTS_ONLY', 'ENV_MANIFEST', 'SDZOO_HUB_OWNER',
    'weights_dirs', 'manifest_path', 'manifest', 'sha256_file', 'verify_file', 'weight_name',
    'hub_repo_id', 'find_weights_folder', 'resolve_pretrained_file', 'read_weights_config',
]

_logger = logging.getLogger(__name__)

WEIGHTS_FILE = 'model.safetensors'
ENV_WEIGHTS = 'SDZOO_WEIGHTS'
ENV_WEIGHTS_ONLY = 'SDZOO_WEIGHTS_ONLY'
ENV_MANIFEST = 'SDZOO_MANIFEST'
SDZOO_HUB_OWNER = 'sdzoo'
DEFAULT_MANIFEST = Path(__file__).with_name('manifest.json')
_PKG_DIR = Path(__file__).resolve().parents[1]
# the files timm itself prefers in a local-dir: folder, in its order (timm.models._hub._PREFERRED_FILES)
_LOCAL_DIR_FILES = ('model.safetensors', 'pytorch_model.bin', 'pytorch_model.pth', 'model.pth')
_HUB_FILES = ('model.safetensors', 'pytorch_model.bin')


class WeightsError(RuntimeError):
    """Pretrained weights are missing, unreachable or corrupt."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No copy of the weights was found locally and none could be downloaded."""


class WeightsIntegrityError(WeightsError):
    """A weight file does not match the sha256 recorded in the manifest (or is not recorded)."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, '').strip().lower() not in ('', '0', 'false', 'no', 'off')


def weights_dirs() -> List[Path]:
    """Folders searched for ``<model>.<tag>/`` weight folders, in order."""
    dirs = [Path(p).expanduser() for p in os.environ.get(ENV_WEIGHTS, '').split(os.pathsep) if p]
    if not _env_true(ENV_WEIGHTS_ONLY):
        dirs.append(_PKG_DIR / '_weights')          # installed from a wheel
        dirs.append(_PKG_DIR.parent / 'weights')    # a repository checkout / editable install
    return dirs


def manifest_path() -> Path:
    """The manifest in use: ``$SDZOO_MANIFEST`` if set, else the package's ``manifest.json``."""
    env = os.environ.get(ENV_MANIFEST)
    return Path(env).expanduser() if env else DEFAULT_MANIFEST


def manifest(path: Optional[os.PathLike | str] = None) -> Dict[str, Dict[str, Any]]:
    """``{'<model>.<tag>': {'sha256': …, 'bytes': …}}`` for every weight sdzoo publishes.

    Read on every call (it is tiny), so ``$SDZOO_MANIFEST`` and fresh publications take effect
    at once.
    """
    path = Path(path) if path is not None else manifest_path()
    if not path.exists():
        return {}
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise WeightsError(f'weights manifest {path} is unreadable: {e}') from e
    if not isinstance(data, dict):
        raise WeightsError(f'weights manifest {path} must hold a JSON object, not {type(data).__name__}')
    return data


def sha256_file(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def verify_file(name: str, path: os.PathLike | str, *, required: bool = False) -> Path:
    """Check ``path`` against the manifest entry ``name``.

    With no entry the file passes unless ``required`` (sdzoo's own weights must be recorded).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f'weight file {path} for {name} does not exist')
    entry = manifest().get(name)
    if entry is None:
        if required:
            raise WeightsIntegrityError(
                f'weight file {path} for {name} is not recorded in the weights manifest {manifest_path()}, '
                'so it cannot be verified. Publish it with sdzoo.hub.save_weights_folder (which records it), '
                f'point ${ENV_MANIFEST} at the manifest that lists it, or load your own file with '
                f"timm.create_model('local-dir:<folder>', pretrained=True)")
        return path
    digest = sha256_file(path)
    if digest != entry.get('sha256'):
        raise WeightsIntegrityError(
            f'weight file {path} for {name} is corrupt or not the published one: sha256 {digest} != recorded '
            f'{entry.get("sha256")} ({path.stat().st_size} bytes, expected {entry.get("bytes")}); '
            'delete it (or its Hugging Face cache entry) and try again')
    return path


def weight_name(cfg: Dict[str, Any], variant: str) -> str:
    """``<architecture>.<tag>`` (timm's model-tag naming) of a pretrained cfg."""
    arch = cfg.get('architecture') or variant
    tag = cfg.get('tag')
    return f'{arch}.{tag}' if tag else arch


def hub_repo_id(cfg: Dict[str, Any], variant: str) -> Optional[str]:
    """The cfg's Hub repo id, completing an owner-only id (``'sdzoo/'``) with ``<model>.<tag>``.

    timm only auto-completes its own ``'timm/'`` ids at registration; sdzoo cfgs use the same
    convention with their own owner.
    """
    hub_id = cfg.get('hf_hub_id')
    if hub_id and hub_id.endswith('/'):
        hub_id = hub_id + weight_name(cfg, variant)
    return hub_id or None


def _split_revision(hub_id: str) -> Tuple[str, Optional[str]]:
    """``'owner/name@rev'`` -> ``('owner/name', 'rev')`` (timm's ``hf_split`` convention)."""
    repo_id, sep, revision = hub_id.partition('@')
    return repo_id, (revision if sep else None)


def _hub_manifest_name(repo_id: str) -> Optional[str]:
    """Manifest name of an ``sdzoo/<model>.<tag>`` repo (other owners' repos are not ours to check)."""
    owner, _, name = repo_id.partition('/')
    return name if owner == SDZOO_HUB_OWNER and name else None


def find_weights_folder(name: str) -> Optional[Path]:
    """First ``<dir>/<name>/`` holding a ``model.safetensors``, or ``None``."""
    for d in weights_dirs():
        candidate = d / name
        if (candidate / WEIGHTS_FILE).is_file():
            return candidate
    return None


def read_weights_config(weights_file: os.PathLike | str) -> Optional[Dict[str, Any]]:
    """The timm ``config.json`` next to a weight file (local folder or Hub snapshot), if any."""
    cfg_file = Path(weights_file).parent / 'config.json'
    if not cfg_file.is_file():
        return None
    try:
        with open(cfg_file, encoding='utf-8') as f:
            return json.load(f)
    except ValueError as e:
        raise WeightsError(f'{cfg_file} is not valid JSON: {e}') from e


def _pick_local_file(folder: Path) -> Path:
    for fname in _LOCAL_DIR_FILES:
        if (folder / fname).is_file():
            return folder / fname
    raise WeightsNotFoundError(
        f'no weight file in {folder}: looked for {", ".join(_LOCAL_DIR_FILES)}')


def _describe_hub_error(e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    return f'{type(e).__name__}: {first}' if first else type(e).__name__


def _hub_download(
        repo_id: str,
        revision: Optional[str],
        filenames: Sequence[str],
        cache_dir: Optional[os.PathLike | str] = None,
        force_download: bool = False,
) -> Path:
    """Download the first of ``filenames`` the repo has (huggingface_hub's cache, ``HF_ENDPOINT``)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from .reachability import hub_unreachable
    reason = hub_unreachable()
    if reason is not None and not any(isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache_dir,
                                                                       revision=revision), str) for f in filenames):
        # fail now instead of after huggingface_hub's ~30 s of retries
        raise ConnectionError(f'the Hub cannot be reached: {reason}')
    last: Optional[Exception] = None
    for filename in filenames:
        try:
            return Path(hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, force_download=force_download,
                library_name='sdzoo'))
        except EntryNotFoundError as e:
            if isinstance(e, LocalEntryNotFoundError):  # offline / unreachable: no point trying other names
                raise
            last = e  # the repo has no such file: try the next candidate name
    assert last is not None
    raise last


def _download_config(repo_id: str, revision: Optional[str], cache_dir) -> None:
    """Fetch ``config.json`` next to the weights (its model_args rebuild the exact architecture)."""
    try:
        _hub_download(repo_id, revision, ['config.json'], cache_dir)
    except Exception as e:  # the weights are what matter; a repo without config.json still loads
        _logger.info(f'no config.json for {repo_id}: {_describe_hub_error(e)}')


def _endpoint() -> str:
    from huggingface_hub import constants
    return constants.ENDPOINT


def resolve_pretrained_file(
        cfg: Dict[str, Any],
        variant: str,
        *,
        cache_dir: Optional[os.PathLike | str] = None,
) -> Path:
    """Local path of the verified weight file a pretrained cfg points at.

    Handles the cfgs timm builds for registry names (``sd_resnet110.sd_cifar10``), for
    ``hf-hub:owner/name[@rev]`` (``source='hf-hub'``) and for ``local-dir:/path``
    (``source='local-dir'``, ``file`` = the folder), and a user's ``file`` / ``url`` overlay.
    """
    name = weight_name(cfg, variant)
    source = cfg.get('source') or ''

    if source == 'local-dir' or (cfg.get('file') and source != 'hf-hub'):
        # the user's own folder/file: checked when it is a copy of a weight the manifest knows
        path = Path(cfg['file']).expanduser()
        if path.is_dir():
            path = _pick_local_file(path)
        elif not path.is_file():
            raise WeightsNotFoundError(f'pretrained weights for {name}: {path} does not exist')
        return verify_file(path.parent.name, path)

    if source == 'hf-hub':
        # hf-hub:<repo>: exactly that repo; sdzoo's own repos are checked when the manifest knows them
        repo_id, revision = _split_revision(hub_repo_id(cfg, variant) or '')
        if not repo_id:
            raise WeightsNotFoundError(f'pretrained cfg for {name} has source hf-hub but no hf_hub_id')
        # (a pinned @revision may be an older or newer upload than the one this package records)
        check_name, required = (None if revision else _hub_manifest_name(repo_id)), False
        searched: List[Path] = []
    else:
        hub_id = hub_repo_id(cfg, variant)
        # sdzoo's own weights must be recorded in the manifest; others (timm's) are checked if recorded
        own = not hub_id or _hub_manifest_name(_split_revision(hub_id)[0]) is not None
        folder = find_weights_folder(name)
        if folder is not None:
            return verify_file(name, folder / WEIGHTS_FILE, required=own)
        searched = [d / name for d in weights_dirs()]
        if not hub_id:
            if cfg.get('url'):
                from timm.models._hub import download_cached_file
                return Path(download_cached_file(cfg['url'], check_hash=True, cache_dir=cache_dir))
            raise WeightsNotFoundError(
                f'no pretrained weights for {name}: {_looked_in(searched)}, and its pretrained cfg has no '
                'Hugging Face Hub id or url to download them from')
        repo_id, revision = _split_revision(hub_id)
        check_name, required = name, own

    if cfg.get('hf_hub_filename'):
        filenames = [cfg['hf_hub_filename']]
    else:  # sdzoo publishes safetensors only; other repos (timm's) may have just the .bin
        filenames = [WEIGHTS_FILE] if check_name is not None and required else list(_HUB_FILES)
    try:
        path = _hub_download(repo_id, revision, filenames, cache_dir)
    except Exception as e:  # offline, unknown repo or file, server error: say which and where
        raise WeightsNotFoundError(
            f'no pretrained weights for {name}: ' + ('' if source == 'hf-hub' else f'{_looked_in(searched)}; ')
            + f'downloading {" or ".join(filenames)} from {_endpoint()}/{repo_id}'
            + (f' (revision {revision})' if revision else '') + f' failed ({_describe_hub_error(e)})'
            + (' with HF_HUB_OFFLINE set' if _offline() else '') + '.'
            + ('' if source == 'hf-hub' else
               f' To load it offline, put its {name}/ folder in a ${ENV_WEIGHTS} directory.')) from e
    if check_name is None:
        return path
    try:
        verify_file(check_name, path, required=required)
    except WeightsIntegrityError:
        if check_name not in manifest():
            raise
        # a damaged cache copy heals by downloading again; a wrong file on the server does not
        _logger.warning(f'{path} does not match the manifest; downloading {repo_id} again')
        path = _hub_download(repo_id, revision, filenames, cache_dir, force_download=True)
        verify_file(check_name, path, required=required)
    if source != 'hf-hub':
        _download_config(repo_id, revision, cache_dir)
    return path


def _looked_in(searched: Sequence[Path]) -> str:
    if searched:
        return 'not found in ' + ', '.join(str(p) for p in searched)
    return f'no local folders searched (${ENV_WEIGHTS_ONLY} is set and ${ENV_WEIGHTS} is empty)'


def _offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)
