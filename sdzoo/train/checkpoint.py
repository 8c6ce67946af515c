"""Atomic checkpoint files that never unpickle arbitrary objects on load."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

__all__ = ['atomic_save', 'atomic_write_json', 'load_checkpoint', 'save_safetensors', 'load_state_dict_file',
           'remove_orphaned_temp_files']


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_orphaned_temp_files(path: os.PathLike | str) -> List[Path]:
    """Delete the temp files a killed writer of ``path`` left behind (SIGKILL skips the cleanup).
    Call it only while no other process writes ``path``."""
    path = Path(path)
    orphans = list(path.parent.glob(f'.{path.name}.*.tmp')) if path.parent.is_dir() else []
    for p in orphans:
        p.unlink(missing_ok=True)
    return orphans


def atomic_save(obj: Dict[str, Any], path: os.PathLike | str) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, rename: a crash leaves the old file."""
    return _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_json(path: os.PathLike | str, obj: Any) -> Path:
    """JSON (indented, trailing newline) written to a temp file in the same folder, then renamed."""
    import json

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=2)
            f.write('\n')
    return _atomic(Path(path), write)


def load_checkpoint(path: os.PathLike | str) -> Dict[str, Any]:
    """Load a trainer checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f'checkpoint {path} is not a readable sdzoo checkpoint: {e}') from e


def save_safetensors(state_dict: Dict[str, torch.Tensor], path: os.PathLike | str,
                     metadata: Dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file
    sd = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    return _atomic(Path(path), lambda tmp: save_file(sd, tmp, metadata=metadata or {'format': 'pt'}))


def load_state_dict_file(path: os.PathLike | str) -> Dict[str, torch.Tensor]:
    """A model state dict from ``.safetensors`` or a trainer checkpoint (its ``model`` entry)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'weights file {path} does not exist')
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:
            raise ValueError(f'{path} is not a valid safetensors file: {e}') from e
    ckpt = load_checkpoint(path)
    sd = ckpt.get('model', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f'{path} holds no model state dict')
    return sd
