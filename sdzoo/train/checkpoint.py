"""Atomic checkpoint files that never unpickle arbitrary objects on load."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import torch

from ..compat import moved_names
from ..files import atomic_write

__all__ = ['atomic_save', 'load_checkpoint', 'save_safetensors', 'load_state_dict_file']

__getattr__ = moved_names(__name__, {'atomic_write_json': 'sdzoo.files', 'remove_orphaned_temp_files': 'sdzoo.files'})


def atomic_save(obj: Dict[str, Any], path: os.PathLike | str) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, rename: a crash leaves the old file."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


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
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=metadata or {'format': 'pt'}))


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
