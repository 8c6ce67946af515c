"""Where a model folder is: a Hub-layout folder itself, or a finished run's ``model/``. Apart from the writer
(``run_model``) so that export can find folders without the writer importing export back."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

__all__ = ['MODEL_DIR', 'find_model_folder', 'local_dir_name', 'folder_entry_name']

MODEL_DIR = 'model'


def find_model_folder(path: str | Path) -> Optional[Path]:
    """The Hub-layout model folder ``path`` names: the folder itself, or a run directory's ``model/``."""
    p = Path(path)
    for cand in (p, p / MODEL_DIR):
        cfg = cand / 'config.json'
        if cfg.is_file() and (cand / 'model.safetensors').is_file():
            try:
                if 'architecture' in json.loads(cfg.read_text(encoding='utf-8')):
                    return cand
            except ValueError:
                continue
    return None


def local_dir_name(path: str | Path) -> Optional[str]:
    """``local-dir:<folder>`` for a model folder or run directory (else ``None``): timm's own way to load it."""
    folder = find_model_folder(path)
    return f'local-dir:{folder.resolve()}' if folder is not None else None


def folder_entry_name(folder: Path) -> str:
    """Repository entry of a model folder: ``<architecture>_<tag>`` from its config.json."""
    cfg = json.loads((folder / 'config.json').read_text(encoding='utf-8'))
    tag = (cfg.get('pretrained_cfg') or {}).get('tag')
    return f"{cfg['architecture']}_{tag}" if tag else cfg['architecture']
